"""Certified router bounds: effective matrix, the three forms, TalkLoRA's talking module, and the
reasons a bound cannot be tight."""

from __future__ import annotations

import math

import pytest
import torch

from moelora_core.adapter import Adapter
from moelora_core.moelora import MoELoRA, MoELoRAConfig
from moelora_core.talklora import TalkLoRA, TalkLoRAConfig
from proofs_numeric.bounds import head_bounds, layer_report, router_bounds, talk_bounds
from proofs_numeric.bounds.certified import effective_matrix, logit_factors, tightness_reasons
from proofs_numeric.bounds.domain import Domain
from proofs_numeric.bounds.instances import ARCHS, build, randomized
from proofs_numeric.bounds.spectral import centring

D = torch.float64


def routed(seed: int = 0) -> list[Adapter]:
    """One of each routed kind (order of ARCHS), E = 3, n = 6, m = 5."""
    return [randomized(build(a, 6, 5, 3, 2), seed + i, 1.0) for i, a in enumerate(ARCHS)]


def ids(adapters: list[Adapter]) -> list[str]:
    return list(ARCHS)


ADAPTERS = routed()
GEN = torch.Generator().manual_seed(0)


@pytest.mark.parametrize("a", ADAPTERS, ids=ids(ADAPTERS))
def test_effective_matrix_is_the_logit_map(a: Adapter) -> None:
    lm = a.router_logit_map()
    assert lm is not None
    assert torch.allclose(effective_matrix(logit_factors(a)), lm.dense().to(D), atol=1e-13)


@pytest.mark.parametrize("a", ADAPTERS, ids=ids(ADAPTERS))
def test_forms_are_ordered_and_match_their_formulas(a: Adapter) -> None:
    b = router_bounds(a)
    L = effective_matrix(logit_factors(a))
    assert b.centred <= b.effective <= b.product
    assert b.effective == pytest.approx(0.5 * float(torch.linalg.matrix_norm(L, ord=2)), rel=1e-9)
    PL = centring(L.shape[0]) @ L
    assert b.centred == pytest.approx(0.5 * float(torch.linalg.matrix_norm(PL, ord=2)), rel=1e-9)
    assert b.centred_rank == int(torch.linalg.matrix_rank(PL))


def test_talklora_product_form_and_head_map() -> None:
    t = routed()[3]
    assert isinstance(t, TalkLoRA)
    W, T, A = t.router.logits.dense(), t.T.weight, t.A.weight  # type: ignore[union-attr]
    n2 = lambda M: float(torch.linalg.matrix_norm(M.detach(), ord=2))  # noqa: E731
    assert router_bounds(t).product == pytest.approx(0.5 * n2(W) * n2(T) * n2(A), rel=1e-9)
    assert router_bounds(t).effective == pytest.approx(0.5 * n2(W @ t.talk.dense() @ A), rel=1e-9)
    h = head_bounds(t)
    assert h is not None
    assert h.product == pytest.approx(0.5 * n2(W) * n2(T), rel=1e-9)
    assert h.effective == pytest.approx(0.5 * n2(W @ t.talk.dense()), rel=1e-9)


def test_comol_core_router_effective_form() -> None:
    c = routed()[4]
    W, A = c.router.logits.dense(), c.A.weight  # type: ignore[union-attr, attr-defined]
    expect = 0.5 * float(torch.linalg.matrix_norm((W @ A).detach(), ord=2))
    assert router_bounds(c).effective == pytest.approx(expect, rel=1e-9)


@pytest.mark.parametrize("k", [0, 2, 5])
def test_head_bounds_only_for_latent_routers(k: int) -> None:
    a = routed()[k]
    assert head_bounds(a) is None


def test_talk_bounds_per_head() -> None:
    t = routed()[3]
    assert isinstance(t, TalkLoRA)
    tb = talk_bounds(t)
    T = t.T.weight.detach()
    assert tb.talk_norm == pytest.approx(float(torch.linalg.matrix_norm(T, ord=2)), rel=1e-12)
    assert tb.attenuation == pytest.approx([float(v) for v in T.norm(dim=0)], rel=1e-12)
    H = (t.router.logits.dense() @ t.talk.dense()).detach()  # type: ignore[union-attr]
    d = t.config.head_dim
    for j in range(3):
        block = centring(3) @ H[:, j * d : (j + 1) * d]
        assert tb.head_centred[j] == pytest.approx(
            0.5 * float(torch.linalg.matrix_norm(block, ord=2)), rel=1e-9
        )
        assert tb.head_centred[j] <= tb.head_product[j]
    assert tb.amplifies == (tb.talk_norm > 1)


def test_pair_alignment_is_one_for_orthonormal_rows_and_e2() -> None:
    for E in (2, 4):
        a = MoELoRA(
            MoELoRAConfig(in_features=6, out_features=2, num_experts=E, expert_rank=1), dtype=D
        ).randomize_(1)
        with torch.no_grad():
            W = torch.randn(6, E, generator=GEN, dtype=D)
            W = torch.linalg.qr(W).Q.T if E > 2 else W.T
            a.router.logits.dense().copy_(W)  # type: ignore[union-attr]
        assert router_bounds(a).pair_alignment == pytest.approx(1.0, abs=1e-9)


def _input_router(W: torch.Tensor) -> MoELoRA:
    E, n = W.shape
    a = MoELoRA(
        MoELoRAConfig(in_features=n, out_features=2, num_experts=E, expert_rank=1), dtype=D
    ).randomize_(0)
    with torch.no_grad():
        a.router.logits.dense().copy_(W)  # type: ignore[union-attr]
    return a


def test_report_says_a_constant_router_cannot_be_tight() -> None:
    rep = layer_report(_input_router(torch.randn(1, 4, generator=GEN, dtype=D)), samples=4)
    assert rep.upper == 0.0 and rep.lower == 0.0 and rep.gap_ratio is None
    assert rep.upper_effective is not None and rep.upper_effective > 0
    assert any("constant router" in r for r in rep.not_tight)


def test_report_says_geometry_limits_tightness() -> None:
    """Π W of rank 1 along (1, 1, −2)/√6, not a pair direction: sup ‖J_g‖ < ½‖Π W‖ strictly."""
    u = torch.tensor([1.0, 1.0, -2.0], dtype=D) / math.sqrt(6)
    W = u.unsqueeze(1) @ torch.randn(1, 5, generator=GEN, dtype=D)
    rep = layer_report(_input_router(W), samples=16)
    b = router_bounds(_input_router(W))
    assert b.pair_alignment == pytest.approx(3 / math.sqrt(12), rel=1e-9)  # ‖l_1 − l_3‖/(√2‖ΠW‖)
    assert any(r.startswith("geometry") for r in rep.not_tight)
    assert any("rank(Π L) = 1 < E − 1 = 2" in r for r in rep.not_tight)
    assert rep.gap_ratio is not None and rep.gap_ratio < 0.9


def test_report_says_bounded_domains_cannot_attain_half() -> None:
    W = torch.linalg.qr(torch.randn(6, 3, generator=GEN, dtype=D)).Q.T
    a = _input_router(W)
    free = tightness_reasons(router_bounds(a), Domain("unconstrained", 0.0, 0))
    ball = tightness_reasons(router_bounds(a), Domain("ball", 1.0, 1))
    assert not any("bounded domain" in r for r in free)
    assert any("bounded domain" in r for r in ball)


def test_product_form_reason() -> None:
    t = TalkLoRA(
        TalkLoRAConfig(in_features=5, out_features=2, rank=4, num_experts=2), dtype=D
    ).randomize_(3)
    rep = layer_report(t, samples=4)
    assert any(r.startswith("product form") for r in rep.not_tight)
