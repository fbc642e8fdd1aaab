"""MoLA: the load-balancing term against a hand computation (value and gradient), the sparse path against
the dense one, the reductions beside their refuted twins, and bad configs naming the parameter."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from claim_helpers import SPEC, gather_always
from hypothesis import find, given, settings
from hypothesis import strategies as st
from torch import Tensor

from moelora_core import sparse
from moelora_core.errors import ArgumentTypeError, ConfigError, input_checks
from moelora_core.mola import MoLA, MoLAConfig

F64 = torch.float64
TOL = 1e-12


def mola(seed: int = 0, **kw: Any) -> MoLA:
    base: dict[str, Any] = dict(in_features=3, out_features=2, num_experts=3, expert_rank=2)
    cfg = MoLAConfig(**{**base, **kw})
    a = MoLA(cfg, dtype=F64)
    a.randomize_(seed)
    return a


# ----- the load-balancing term -------------------------------------------------------------------------

W_HAND = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0], [-1.0, 0.5, 1.0]]  # E = 3, n = 3
X_HAND = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]  # T = 4 tokens


def hand_balance(
    W: list[list[float]], X: list[list[float]], k: int
) -> tuple[float, list[list[float]]]:
    """L = E Σ_i f_i P_i and ∂L/∂W written out token by token and expert by expert (plain floats):
    f_i = slots of i / (k T), P_i = mean_t p_i(x_t), ∂L/∂s_t = (E/T)(diag p_t − p_t p_tᵀ) f."""
    E, T = len(W), len(X)
    probs = []
    for x in X:
        s = [sum(W[i][j] * x[j] for j in range(len(x))) for i in range(E)]
        z = sum(math.exp(v) for v in s)
        probs.append([math.exp(v) / z for v in s])
    counts = [0] * E
    for p in probs:
        for i in sorted(range(E), key=lambda i: (-p[i], i))[:k]:
            counts[i] += 1
    f = [c / (k * T) for c in counts]
    P = [sum(p[i] for p in probs) / T for i in range(E)]
    loss = E * sum(f[i] * P[i] for i in range(E))
    grad = [[0.0] * len(X[0]) for _ in range(E)]
    for p, x in zip(probs, X, strict=True):
        pf = sum(p[j] * f[j] for j in range(E))
        for i in range(E):
            ds = E / T * p[i] * (f[i] - pf)
            for j in range(len(x)):
                grad[i][j] += ds * x[j]
    return loss, grad


@pytest.mark.theorems
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("mode", ["dense", "sparse", "sparse-gathered"])
def test_balance_term_equals_the_hand_computation(k: int, mode: str) -> None:
    a = mola(in_features=3, top_k=k)
    assert a.auxiliary_loss() is None  # no forward yet
    with torch.no_grad():
        a.router.logits.dense().copy_(torch.tensor(W_HAND, dtype=F64))
    path: sparse.Mode = "dense" if mode == "dense" else "sparse"
    with sparse.sparse_mode(path), gather_always(mode == "sparse-gathered"):
        a(torch.tensor(X_HAND, dtype=F64).reshape(2, 2, 3))  # batch axes are tokens too
    got = a.auxiliary_loss()
    assert got is not None
    loss, grad = hand_balance(W_HAND, X_HAND, k)
    assert abs(float(got.detach()) - loss) <= TOL
    params = [a.router.logits.dense(), a.A.weight, a.B.weight]
    dW, dA, dB = torch.autograd.grad(got, params, allow_unused=True, materialize_grads=True)
    assert float((dW - torch.tensor(grad, dtype=F64)).abs().max()) <= TOL
    assert not dA.any() and not dB.any()  # f is a count: the gradient flows through P only
    if k == 3:  # every expert takes every token: f uniform, L = E·Σ (1/E) P_i = 1, gradient 0
        assert abs(loss - 1.0) <= TOL and not dW.abs().gt(TOL).any()


@pytest.mark.theorems
def test_balance_twin_per_token_fractions_are_k_times_larger() -> None:
    """Twin: the fractions of the reference code (counts / T, Σ f = k) give k·L, refuted for k >= 2."""
    loss, _ = hand_balance(W_HAND, X_HAND, 2)
    a = mola(top_k=2)
    with torch.no_grad():
        a.router.logits.dense().copy_(torch.tensor(W_HAND, dtype=F64))
    a(torch.tensor(X_HAND, dtype=F64))
    got = a.auxiliary_loss()
    assert got is not None and abs(float(got.detach()) - loss) <= TOL
    assert abs(2 * loss - float(got.detach())) > 0.5


def test_balance_term_of_the_last_forward_only() -> None:
    a = mola(top_k=1)
    a(torch.randn(5, 3, dtype=F64))
    first = a.auxiliary_loss()
    a(torch.randn(2, 3, dtype=F64))
    assert a.auxiliary_loss() is not first
    empty = a(torch.zeros(0, 3, dtype=F64))
    none_routed = a.auxiliary_loss()
    assert empty.shape == (0, 2) and none_routed is not None and float(none_routed) == 0.0
    assert copy.deepcopy(a).auxiliary_loss() is None  # a copy leaves the graph behind
    before = a.auxiliary_loss()
    with input_checks(False):  # inside a transform the term would escape it: nothing is recorded
        torch.func.jacrev(a)(torch.randn(3, dtype=F64))
    assert a.auxiliary_loss() is before


# ----- the sparse path ----------------------------------------------------------------------------------


def unnormalised_route(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The mutated twin: keep the k largest softmax weights without renormalising them."""
    idx = torch.sort(logits, dim=-1, descending=True, stable=True).indices[..., :k]
    return idx, torch.softmax(logits, dim=-1).gather(-1, idx)


@contextmanager
def route(fn: Callable[[Tensor, int], tuple[Tensor, Tensor]] | None) -> Iterator[None]:
    before = sparse.topk_route
    sparse.topk_route = fn or before  # type: ignore[assignment]
    try:
        yield
    finally:
        sparse.topk_route = before


def sparse_error(seed: int, E: int, k: int, gather: bool, renormalise: bool = True) -> float:
    """max |sparse − dense| over Δ, the gradients and L_aux (relative); the twin skips the
    renormalisation of the k kept weights on the sparse path."""
    a = mola(seed, in_features=5, out_features=4, num_experts=E, top_k=k, scale=0.5)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(7, 5, generator=gen, dtype=F64, requires_grad=True)
    dy = torch.randn(7, 4, generator=gen, dtype=F64)
    outs = []
    for mode, fn in (("dense", None), ("sparse", None if renormalise else unnormalised_route)):
        with sparse.sparse_mode(mode), gather_always(gather), route(fn):  # type: ignore[arg-type]
            y = a(x)
        loss = a.auxiliary_loss()
        assert loss is not None
        outs.append([y, *torch.autograd.grad(y, [x, *a.parameters()], dy), loss])
    pairs = zip(*outs, strict=True)
    return max(float((s - d).detach().abs().max() / (1 + d.detach().abs().max())) for d, s in pairs)


SPARSE_CASES = st.tuples(
    st.integers(0, 255), st.integers(2, 6), st.integers(1, 5), st.booleans()
).filter(lambda c: c[2] < c[1])


@pytest.mark.theorems
@settings(max_examples=40, deadline=None)
@given(SPARSE_CASES)
def test_sparse_path_equals_dense(c: tuple[int, int, int, bool]) -> None:
    assert sparse_error(*c) <= 1e-10


@pytest.mark.theorems
def test_sparse_twin_without_renormalisation_is_refuted() -> None:
    bad = find(
        SPARSE_CASES,
        lambda c: sparse_error(c[0], c[1], c[2], c[3], renormalise=False) > 1e-10,
        settings=settings(max_examples=40, database=None),
    )
    assert bad[2] < bad[1]


def test_sparse_macs_formula_follows_the_path() -> None:
    """E·n (router) + the down-projection (k·r_e·n gathered, else E·r_e·n) + k·r_e·m."""
    a = mola(num_experts=8, top_k=2, expert_rank=1, in_features=5, out_features=4)
    with gather_always(True):
        formula = a.sparse_macs_formula()
        assert formula is not None and formula.subs(a.subs()) == 40 + 2 * 5 + 2 * 4
    formula = a.sparse_macs_formula()
    assert formula is not None and formula.subs(a.subs()) == 40 + 8 * 5 + 2 * 4
    assert mola(top_k=3).sparse_macs_formula() is None  # k = E: always dense


# ----- reductions ---------------------------------------------------------------------------------------


def delta_gap(a: MoLA, prepare: bool, index: int) -> float:
    red = MoLA.reductions()[index]
    if prepare:
        red.prepare(a)
    b = red.embed(a)
    x = torch.randn(4, a.in_features, generator=torch.Generator().manual_seed(2), dtype=F64)
    gap = float((a(x) - b(x)).detach().abs().max())
    ga, gb = a.routing(x), b.routing(x)
    return gap if gb is None else max(gap, float((ga - gb).detach().abs().max()))


@pytest.mark.theorems
def test_mola_is_topk_moelora_and_equal_experts_is_lora() -> None:
    assert delta_gap(mola(1, top_k=2), False, 0) <= TOL  # same Δ and same g
    assert delta_gap(mola(1, top_k=1), True, 1) <= TOL
    assert delta_gap(mola(1, top_k=1), False, 1) > 1e-3  # twin: experts left different


# ----- configs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("top_k", None, ArgumentTypeError),
        ("top_k", 0, ConfigError),
        ("top_k", 4, ConfigError),
        ("top_k", True, ArgumentTypeError),
        ("num_experts", 0, ConfigError),
        ("expert_rank", 1.5, ArgumentTypeError),
        ("scale", math.inf, ConfigError),
    ],
)
def test_bad_config_names_the_parameter(field: str, value: object, error: type[Exception]) -> None:
    kw: dict[str, Any] = dict(in_features=3, out_features=2, num_experts=3, expert_rank=1)
    with pytest.raises(error, match=f"^{field}="):
        MoLAConfig(**{**kw, field: value})


def test_config_from_spec_defaults_to_top_2() -> None:
    spec = SimpleNamespace(**SPEC, scale=2.0)
    cfg = MoLA.config_from_spec(spec, 6, 5)
    assert (cfg.num_experts, cfg.expert_rank, cfg.top_k, cfg.scale) == (4, 2, 2, 2.0)
    spec.options = {"top_k": 3}  # the generic spec's own field is not an option
    with pytest.raises(ConfigError, match=r"^options="):
        MoLA.config_from_spec(spec, 6, 5)
    assert (
        MoLA.config_from_spec(SimpleNamespace(**{**SPEC, "experts": 1}, scale=1.0), 6, 5).top_k == 1
    )


def test_counts_and_init() -> None:
    a = MoLA(MoLAConfig(in_features=6, out_features=5, num_experts=4, expert_rank=2))
    assert a.num_trainable_params() == int(a.param_formula().subs(a.subs())) == 4 * 2 * 11 + 24
    x = torch.randn(3, 6)
    assert not a(x).any()  # B = 0 at initialisation
