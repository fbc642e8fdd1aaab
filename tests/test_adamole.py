"""AdaMoLE: the threshold gate against a hand computation, its rounding limit, the counterexample to the
½‖W‖₂ router bound (certain, no randomness) beside the soft gate that keeps it, the reductions with their
refuted twins, and bad configs naming the parameter."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from claim_helpers import SPEC

from moelora_core.adamole import AdaMoLE, AdaMoLEConfig, lipschitz_witness, threshold_gate
from moelora_core.errors import ArgumentTypeError, ConfigError
from proofs_numeric.complexity import counted_macs_per_token

F64 = torch.float64
TOL = 1e-12


def adamole(seed: int = 0, **kw: Any) -> AdaMoLE:
    base: dict[str, Any] = dict(in_features=3, out_features=2, num_experts=3, expert_rank=2)
    a = AdaMoLE(AdaMoLEConfig(**{**base, **kw}), dtype=F64)
    a.randomize_(seed)
    return a


def sigmoid(t: float) -> float:
    return 1 / (1 + math.exp(-t))


# ----- the threshold gate --------------------------------------------------------------------------------


@pytest.mark.theorems
def test_gate_equals_the_hand_computation() -> None:
    """p = softmax(W x), τ = τ_max σ(w_τ·x + b_τ), g_i = relu(p_i − τ) / Σ_j relu(p_j − τ), per token."""
    a = adamole()
    W = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]]
    w_tau, b_tau = [0.5, -0.5, 0.0], 1.0
    with torch.no_grad():
        a.router.logits.dense().copy_(torch.tensor(W))
        a.w_tau.weight.copy_(torch.tensor([w_tau]))
        a.b_tau.fill_(b_tau)
    X = [[1.0, 0.0, 0.0], [0.1, 0.2, 0.0], [0.5, 0.5, 0.0]]
    g = a.routing(torch.tensor(X, dtype=F64)).detach()
    active = []
    for t, x in enumerate(X):
        s = [sum(W[i][j] * x[j] for j in range(3)) for i in range(3)]
        p = [math.exp(v) / sum(math.exp(u) for u in s) for v in s]
        tau = (1 / 3) * sigmoid(sum(w * v for w, v in zip(w_tau, x, strict=True)) + b_tau)
        kept = [max(0.0, q - tau) for q in p]
        want = [q / sum(kept) for q in kept]
        assert max(abs(float(g[t, i]) - want[i]) for i in range(3)) <= TOL
        assert all((float(g[t, i]) == 0.0) == (p[i] <= tau) for i in range(3))  # below τ: exactly 0
        active.append(sum(q > tau for q in p))
    assert active == [1, 3, 2]  # the number of experts varies per token


@pytest.mark.theorems
def test_threshold_range_and_zero_threshold_is_softmax() -> None:
    a = adamole(1, max_threshold=0.2)
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    tau = a.threshold(x)
    assert tau.shape == (50, 1) and bool((tau > 0).all()) and bool((tau < 0.2).all())
    assert a.config.tau_max == 0.2 and adamole(num_experts=4).config.tau_max == 0.25
    soft = adamole(1, max_threshold=0.0)
    with torch.no_grad():
        assert float((soft.routing(x) - soft.probabilities(x)).abs().max()) <= TOL  # τ = 0: g = p


@pytest.mark.theorems
def test_rounding_limit_keeps_a_distribution() -> None:
    """σ rounds to 1 (τ = 1/E exactly): with p uniform no relu is positive; the gate takes its limit
    τ -> max p, equal weights on the maximal p_i (the reference code would return zeros)."""
    p = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [0.4, 0.4, 0.2], [0.5, 0.3, 0.2]], dtype=F64)
    g = threshold_gate(p, torch.tensor([[1 / 3], [0.4], [0.4]], dtype=F64))
    want = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], dtype=F64)
    assert float((g - want).abs().max()) <= TOL
    a = adamole()
    with torch.no_grad():
        a.router.logits.dense().zero_()
        a.b_tau.fill_(100.0)  # σ(100) = 1.0 in float64
    g = a.routing(torch.randn(4, 3, dtype=F64)).detach()
    assert float((g - 1 / 3).abs().max()) <= TOL


# ----- the router bound is refuted -----------------------------------------------------------------------


def gate_ratio(a: AdaMoLE, x: torch.Tensor, y: torch.Tensor) -> float:
    """‖g(x) − g(y)‖₂ / (½‖W‖₂ ‖x − y‖₂): above 1 violates the softmax router's bound."""
    with torch.no_grad():
        gap = float(torch.linalg.vector_norm(a.routing(x) - a.routing(y)))
        half_w = 0.5 * float(torch.linalg.matrix_norm(a.router.logits.dense(), ord=2))
    return gap / (half_w * float(torch.linalg.vector_norm(x - y)))


@pytest.mark.theorems
def test_gate_is_not_half_norm_lipschitz() -> None:
    """The certain counterexample of `lipschitz_witness`: ‖g(0) − g(0.1)‖ = 0.3533 > 0.05."""
    a, x, y = lipschitz_witness()
    gx, gy = a.routing(x).detach(), a.routing(y).detach()
    s = sigmoid(0.1)  # p_1(0.1); τ = 0.9 · ½ = 0.45
    want = torch.tensor([(s - 0.45) / 0.1, (0.55 - s) / 0.1], dtype=F64)
    assert float((gx - 0.5).abs().max()) <= TOL and float((gy - want).abs().max()) <= 1e-9
    assert gate_ratio(a, x, y) > 7.0


@pytest.mark.theorems
def test_the_gain_grows_as_the_threshold_nears_one_over_e() -> None:
    """Same points, σ(b_τ) = 1 − 10^-j: the ratio grows like 1/(1/E − τ), so no multiple of ½‖W‖ bounds it."""
    a, x, _ = lipschitz_witness()
    ratios = []
    for j in (1, 2, 3):
        with torch.no_grad():
            a.b_tau.fill_(math.log((1 - 10**-j) / 10**-j))
        ratios.append(gate_ratio(a, x, x + 10 ** -(j + 2)))
    assert ratios[0] > 5 and ratios[1] > 8 * ratios[0] and ratios[2] > 8 * ratios[1]


@pytest.mark.theorems
def test_twin_soft_gate_keeps_the_bound_at_the_same_points() -> None:
    """Twin: with τ_max = 0 the gate is the softmax, and the same pair satisfies ½‖W‖ (ratio < 1)."""
    a, x, y = lipschitz_witness()
    soft = AdaMoLE(AdaMoLEConfig(**{**vars(a.config), "max_threshold": 0.0}), dtype=F64)
    soft.load_state_dict(a.state_dict())
    assert gate_ratio(soft, x, y) < 1.0


# ----- reductions -----------------------------------------------------------------------------------------


def reduction_gap(a: AdaMoLE, index: int, prepare: bool) -> float:
    red = AdaMoLE.reductions()[index]
    if prepare:
        red.prepare(a)
    b = red.embed(a)
    x = torch.randn(5, a.in_features, generator=torch.Generator().manual_seed(3), dtype=F64)
    gap = float((a(x) - b(x)).detach().abs().max())
    gb = b.routing(x)
    return gap if gb is None else max(gap, float((a.routing(x) - gb).detach().abs().max()))


@pytest.mark.theorems
def test_zero_threshold_is_soft_moelora_and_twin() -> None:
    zero = adamole(2, max_threshold=0.0)
    assert AdaMoLE.reductions()[0].applies(zero.config) and reduction_gap(zero, 0, False) <= 1e-10
    default = adamole(2)
    assert not AdaMoLE.reductions()[0].applies(default.config)
    assert reduction_gap(default, 0, False) > 1e-3  # twin: claimed at τ_max = 1/E, refuted


@pytest.mark.theorems
def test_equal_experts_is_lora_and_twin() -> None:
    assert reduction_gap(adamole(4), 1, True) <= 1e-10
    assert reduction_gap(adamole(4), 1, False) > 1e-3


# ----- counting, building and configs ---------------------------------------------------------------------


def test_counts_macs_and_init() -> None:
    a = AdaMoLE(AdaMoLEConfig(in_features=6, out_features=5, num_experts=4, expert_rank=2))
    n, m, E, r_e = 6, 5, 4, 2
    assert a.num_trainable_params() == int(a.param_formula().subs(a.subs()))
    assert a.num_trainable_params() == E * r_e * (n + m) + E * n + n + 1
    assert counted_macs_per_token(a) == int(a.macs_formula().subs(a.subs()))
    assert a.sparse_macs_formula() is None
    assert not a(torch.randn(3, 6)).any()  # B = 0 at initialisation


def test_config_from_spec_reads_max_threshold_from_the_options() -> None:
    spec = SimpleNamespace(**SPEC, scale=1.0)
    assert AdaMoLE.config_from_spec(spec, 6, 5).tau_max == 0.25
    spec.options = {"max_threshold": 0.1}
    assert AdaMoLE.config_from_spec(spec, 6, 5).max_threshold == 0.1
    with pytest.raises(ConfigError, match=r"^options="):  # no top_k: the threshold chooses
        AdaMoLE.config_from_spec(
            SimpleNamespace(**{**SPEC, "options": {"top_k": 2}}, scale=1.0), 6, 5
        )


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("max_threshold", 0.6, ConfigError),  # > 1/E = 1/2: the gate could be empty
        ("max_threshold", -0.1, ConfigError),
        ("max_threshold", math.nan, ConfigError),
        ("max_threshold", "0.1", ArgumentTypeError),
        ("max_threshold", True, ArgumentTypeError),
        ("num_experts", 0, ConfigError),
        ("expert_rank", None, ArgumentTypeError),
        ("scale", math.nan, ConfigError),
    ],
)
def test_bad_config_names_the_parameter(field: str, value: object, error: type[Exception]) -> None:
    kw: dict[str, Any] = dict(in_features=3, out_features=2, num_experts=2, expert_rank=1)
    with pytest.raises(error, match=f"^{field}="):
        AdaMoLEConfig(**{**kw, field: value})
