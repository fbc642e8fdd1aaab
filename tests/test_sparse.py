"""Sparse top-k equals the dense top-k forward, outputs and gradients, in float64 (`-m theorems`).

The property draws an architecture, its sizes, k < E, a batch and a seed; the sparse path (forced) and
the dense path must agree on Δ(x) and on the gradients to x and to every parameter. Its mutated twin, the
sparse path without renormalising the k kept weights, must be refuted by the same search.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from claim_helpers import gather_always
from hypothesis import find, given, settings
from hypothesis import strategies as st
from torch import Tensor

from moelora_core import (
    Adapter,
    CoMoL,
    CoMoLConfig,
    ConfigError,
    HydraLoRA,
    HydraLoRAConfig,
    MoELoRA,
    MoELoRAConfig,
    TalkLoRA,
    TalkLoRAConfig,
    sparse,
)
from moelora_core.maps import topk_mask

TOL = 1e-10  # float64; both paths sum the same k products in a different order
ARCHS = ("moelora-input", "moelora-latent", "hydralora", "talklora", "comol-cr", "comol-nocr")


@dataclass(frozen=True)
class Case:
    arch: str
    n: int
    m: int
    E: int
    k: int
    d: int  # per-expert rank (MoELoRA, HydraLoRA), head dim (TalkLoRA), rank r (CoMoL)
    tokens: int
    gather: bool  # MoELoRA input: force the grouped-gather down-projection
    seed: int


def build(c: Case) -> Adapter:
    kw = {"in_features": c.n, "out_features": c.m, "top_k": c.k, "scale": 0.5}
    mod: Adapter
    if c.arch.startswith("moelora"):
        router = "input" if c.arch == "moelora-input" else "latent"
        mod = MoELoRA(MoELoRAConfig(num_experts=c.E, expert_rank=c.d, router=router, **kw))  # type: ignore[arg-type]
    elif c.arch == "hydralora":
        mod = HydraLoRA(HydraLoRAConfig(num_experts=c.E, expert_rank=c.d, **kw))  # type: ignore[arg-type]
    elif c.arch == "talklora":
        mod = TalkLoRA(TalkLoRAConfig(rank=c.E * c.d, num_experts=c.E, **kw))  # type: ignore[arg-type]
    else:
        mod = CoMoL(CoMoLConfig(rank=c.d, num_cores=c.E, core_router=c.arch == "comol-cr", **kw))  # type: ignore[arg-type]
    return mod.to(torch.float64).randomize_(c.seed)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    E = draw(st.integers(2, 8))
    return Case(
        arch=draw(st.sampled_from(ARCHS)),
        n=draw(st.integers(1, 6)),
        m=draw(st.integers(1, 6)),
        E=E,
        k=draw(st.integers(1, E - 1)),
        d=draw(st.integers(1, 3)),
        tokens=draw(st.integers(1, 6)),
        gather=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


def run(mod: Adapter, x: Tensor, dy: Tensor) -> list[Tensor]:
    params = [p for p in mod.parameters() if p.requires_grad]
    out = mod(x)
    return [out.detach(), *torch.autograd.grad(out, [x, *params], dy)]


def max_error(c: Case) -> float:
    """max |sparse - dense| over Δ(x) and every gradient, relative to the dense magnitude."""
    mod = build(c)
    gen = torch.Generator().manual_seed(c.seed + 1)
    x = torch.randn(c.tokens, c.n, generator=gen, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(c.tokens, c.m, generator=gen, dtype=torch.float64)
    with sparse.sparse_mode("dense"):
        dense = run(mod, x, dy)
    with sparse.sparse_mode("sparse"), gather_always(c.gather):
        got = run(mod, x, dy)
    return max(
        float((a - b).abs().max() / (1 + b.abs().max())) for a, b in zip(got, dense, strict=True)
    )


def unnormalised_route(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The mutated twin: keep the k largest softmax weights without renormalising them."""
    _, idx = torch.topk(logits, k, dim=-1)
    return idx, torch.softmax(logits, dim=-1).gather(-1, idx)


@contextmanager
def route(fn: Callable[[Tensor, int], tuple[Tensor, Tensor]]) -> Iterator[None]:
    before = sparse.topk_route
    sparse.topk_route = fn
    try:
        yield
    finally:
        sparse.topk_route = before


@pytest.mark.theorems
@settings(max_examples=200, deadline=None)
@given(cases())
def test_sparse_topk_equals_dense(c: Case) -> None:
    assert max_error(c) <= TOL, c


@pytest.mark.theorems
def test_twin_without_renormalisation_is_refuted() -> None:
    with route(unnormalised_route):
        bad = find(cases(), lambda c: max_error(c) > TOL, settings=settings(max_examples=200))
    assert bad.k < bad.E


def test_dense_below_crossover_and_inside_transforms() -> None:
    mod = MoELoRA(
        MoELoRAConfig(in_features=8, out_features=8, num_experts=64, expert_rank=1, top_k=2)
    )
    assert mod.router is not None
    big = torch.zeros(sparse.SPARSE_MIN_TOKENS, 8)
    assert sparse.use_sparse(mod.router, big)
    assert not sparse.use_sparse(mod.router, big[:-1])  # too few tokens
    seen: list[bool] = []
    torch.func.vmap(lambda t: (seen.append(sparse.use_sparse(mod.router, big)), t)[1])(big)  # type: ignore[union-attr,arg-type]
    assert seen == [False]
    with sparse.sparse_mode("dense"):
        assert not sparse.use_sparse(mod.router, big)
    soft = MoELoRA(MoELoRAConfig(in_features=8, out_features=8, num_experts=64, expert_rank=1))
    assert soft.router is not None
    with sparse.sparse_mode("sparse"):
        assert not sparse.use_sparse(soft.router, big)  # no top-k: nothing to skip
    with pytest.raises(ConfigError, match="sparse_mode='fast'"), sparse.sparse_mode("fast"):  # type: ignore[arg-type]
        pass


def test_exactly_k_experts_on_ties_same_as_dense_gate() -> None:
    """Tied logits: the sparse route keeps the dense gate's k experts (`topk_mask`), weights sum to 1."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, (200, 6), generator=gen).to(torch.float64)  # many ties
    for k in range(1, 6):
        idx, w = sparse.topk_route(logits, k)
        mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, idx, True)
        assert torch.equal(mask, topk_mask(logits, k))
        torch.testing.assert_close(w.sum(-1), torch.ones(200, dtype=torch.float64))
    mod = MoELoRA(
        MoELoRAConfig(in_features=3, out_features=2, num_experts=4, expert_rank=1, top_k=2)
    )
    mod = mod.to(torch.float64).randomize_(1)
    assert mod.router is not None
    with torch.no_grad():
        mod.router.logits.weight.zero_()  # every logit ties: experts 0 and 1 by the rule
    x = torch.randn(5, 3, dtype=torch.float64)
    with sparse.sparse_mode("dense"):
        ref = mod(x)
    with sparse.sparse_mode("sparse"):
        torch.testing.assert_close(mod(x), ref, rtol=1e-12, atol=1e-12)


def test_large_batch_float32_auto_path() -> None:
    """At E = 64, k = 2 and 512 tokens the automatic choice is sparse and matches dense in float32."""
    mod = MoELoRA(
        MoELoRAConfig(in_features=32, out_features=24, num_experts=64, expert_rank=2, top_k=2)
    ).randomize_(0)
    x = torch.randn(2, 256, 32)
    assert mod.router is not None and sparse.use_sparse(mod.router, x)
    with sparse.sparse_mode("dense"):
        ref = mod(x)
    torch.testing.assert_close(mod(x), ref, rtol=1e-4, atol=1e-5)


def test_route_non_finite_logits_keep_the_sort_rule() -> None:
    """A NaN logit leaves no k-th value to compare with: the route falls back to the stable sort."""
    logits = torch.tensor(
        [[0.5, float("nan"), 0.1, 0.9], [1.0, 2.0, 3.0, 4.0]], dtype=torch.float64
    )
    idx, _ = sparse.topk_route(logits, 2)
    ref = torch.sort(logits, dim=-1, descending=True, stable=True).indices[..., :2]
    assert torch.equal(idx, ref)


def test_column_kernels_and_their_gradients() -> None:
    """dot_columns / mix_columns equal their einsum definitions; gradcheck covers both backwards."""
    gen = torch.Generator().manual_seed(3)
    T, R, n, c = 5, 7, 4, 3
    x = torch.randn(T, n, generator=gen, dtype=torch.float64, requires_grad=True)
    table = torch.randn(R, n, generator=gen, dtype=torch.float64, requires_grad=True)
    coef = torch.randn(T, c, generator=gen, dtype=torch.float64, requires_grad=True)
    cols = torch.stack([torch.randperm(R, generator=gen)[:c] for _ in range(T)])  # (T, c)
    rows = table[cols]  # (T, c, n)
    torch.testing.assert_close(
        sparse.dot_columns(x, table, cols), torch.einsum("tcn,tn->tc", rows, x)
    )
    torch.testing.assert_close(
        sparse.mix_columns(cols, coef, table), torch.einsum("tc,tcn->tn", coef, rows)
    )
    assert torch.autograd.gradcheck(lambda a, b: sparse.dot_columns(a, b, cols), (x, table))
    assert torch.autograd.gradcheck(lambda a, b: sparse.mix_columns(cols, a, b), (coef, table))


def test_route_and_dot_gradients() -> None:
    """The fused router + chosen-rows kernel: its one-buffer backward passes gradcheck."""
    gen = torch.Generator().manual_seed(4)
    T, E, d, n = 6, 5, 2, 4
    x = torch.randn(T, n, generator=gen, dtype=torch.float64, requires_grad=True)
    W = torch.randn(E, n, generator=gen, dtype=torch.float64, requires_grad=True)
    A = torch.randn(E * d, n, generator=gen, dtype=torch.float64, requires_grad=True)
    idx, _, cols, h = sparse.route_and_dot(x, W, A, 2, d)
    assert torch.equal(idx, sparse.topk_route(F.linear(x, W), 2)[0])
    torch.testing.assert_close(h, torch.einsum("tcn,tn->tc", A[cols], x))

    def f(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        _, w, _, h = sparse.route_and_dot(a, b, c, 2, d)
        return w, h

    assert torch.autograd.gradcheck(f, (x, W, A))

    def with_logits(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits, _, w, _, h = sparse.route_and_dot_logits(a, b, c, 2, d)
        return logits.softmax(-1), w, h  # the whole distribution too (e.g. a balancing term)

    torch.testing.assert_close(sparse.route_and_dot_logits(x, W, A, 2, d)[0], F.linear(x, W))
    assert torch.autograd.gradcheck(with_logits, (x, W, A))


def test_table_grad_paths_agree() -> None:
    """The CPU sparse-product table gradient equals the index_add form used on other devices."""
    gen = torch.Generator().manual_seed(5)
    T, R, n, c = 9, 6, 5, 3
    x = torch.randn(T, n, generator=gen, dtype=torch.float64)
    coef = torch.randn(T, c, generator=gen, dtype=torch.float64)
    cols = torch.stack([torch.randperm(R, generator=gen)[:c] for _ in range(T)])
    ref = torch.einsum("tc,tn,tcr->rn", coef, x, F.one_hot(cols, R).to(torch.float64))
    torch.testing.assert_close(sparse.table_grad(coef, x, cols, R), ref)
    torch.testing.assert_close(sparse.table_grad_indexed(coef, x, cols, R), ref)
