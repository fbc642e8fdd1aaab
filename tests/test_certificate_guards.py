"""Properties of the certificates themselves (`pytest -m theorems`).

A certified value must exceed the true quantity, with its rounding margin, also on matrices built to
defeat plain power iteration (top singular vector orthogonal to the start block, clustered singular
values) and on Gram products that cancel; the forms must equal their definitions (centred, per head,
pair alignment) and keep their documented order; the adaptive local bound must hold at points away
from the centre, not only at it.
"""

from __future__ import annotations

import math

import pytest
import torch

from moelora_core.adapter import Adapter
from moelora_core.comol import CoMoL, CoMoLConfig
from moelora_core.moelora import MoELoRA, MoELoRAConfig
from moelora_core.talklora import TalkLoRA, TalkLoRAConfig
from proofs_numeric.bounds import (
    expert_factors,
    head_bounds,
    local_bounds,
    router_bounds,
    spectral_norm,
    talk_bounds,
)
from proofs_numeric.bounds.certified import effective_matrix, logit_factors
from proofs_numeric.bounds.norms import centred_response_norms
from proofs_numeric.bounds.spectral import certify, gram_pair_norm, psd_sqrt, subspace_norm
from proofs_numeric.function_class import analytic_jacobian

pytestmark = pytest.mark.theorems
F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sigma(M: torch.Tensor) -> float:
    return float(torch.linalg.svdvals(M.detach().to(F64))[0])


def _orthonormal(n: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, n, generator=_gen(seed), dtype=F64)).Q


def _centring(E: int) -> torch.Tensor:
    return torch.eye(E, dtype=F64) - torch.full((E, E), 1.0 / E, dtype=F64)


# ----- spectral certificates -----------------------------------------------------------------------------


def test_certification_margin_is_present() -> None:
    """The allowance keeps a certified value above float64 re-evaluations of a searched lower bound,
    which err by a few ulp times the dimension: at least 1e-13 relative (~450 ulp)."""
    for v in (1e-300, 1e-8, 1.0, 3.5, 1e8, 1e300):
        assert certify(v) >= v * (1 + 1e-13)
    M = torch.randn(7, 5, generator=_gen(0), dtype=F64)
    assert spectral_norm(M).upper > _sigma(M)


def test_subspace_certificate_beats_an_orthogonal_start_block() -> None:
    """The top right singular vector is orthogonal to the start block: power iteration never sees
    σ_1 = 2 (it converges to σ_2 = 1); only the residual term keeps the certificate above it."""
    p = q = 40
    k = 16
    start = torch.randn(q, k, generator=torch.Generator().manual_seed(0), dtype=F64)
    Qs = torch.linalg.qr(start).Q
    v1 = torch.randn(q, generator=_gen(1), dtype=F64)
    v1 = v1 - Qs @ (Qs.T @ v1)
    v1 = v1 / v1.norm()
    rest = torch.randn(q, q - 1, generator=_gen(2), dtype=F64)
    V = torch.linalg.qr(torch.cat([v1.unsqueeze(1), rest], dim=1)).Q
    s = torch.cat([torch.tensor([2.0], dtype=F64), torch.linspace(1.0, 0.5, q - 1, dtype=F64)])
    M = _orthonormal(p, 3) @ torch.diag(s) @ V.T
    sn = subspace_norm(M, k=k, iterations=4, seed=0)
    assert sn.upper >= _sigma(M) and sn.lower <= _sigma(M) * (1 + 1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_subspace_certificate_on_clustered_singular_values(seed: int) -> None:
    """60 singular values within 6% of the top: 2 power steps with 4 vectors stay below σ_1."""
    n = 60
    s = 1.0 - 1e-3 * torch.arange(n, dtype=F64)
    M = _orthonormal(n, seed) @ torch.diag(s) @ _orthonormal(n, seed + 10).T
    sn = subspace_norm(M, k=4, iterations=2, seed=seed)
    assert sn.upper >= _sigma(M) >= sn.lower * (1 - 1e-12)


def test_exact_norm_where_cheap() -> None:
    """min(shape) <= EXACT_MAX_DIM: the certificate is the SVD value up to rounding, not a loose one."""
    M = torch.randn(40, 40, generator=_gen(4), dtype=F64)
    sn = spectral_norm(M)
    assert _sigma(M) < sn.upper <= _sigma(M) * (1 + 1e-6)


def test_gram_certificate_survives_cancellation() -> None:
    """‖U D‖ = δ‖w‖‖d‖ ≈ 1e-10 while UᵀU and DDᵀ are O(1): the Gram route must not round it away."""
    for seed in range(20):
        g = _gen(100 + seed)
        u, w, d = (torch.randn(n, generator=g, dtype=F64) for n in (5, 5, 4))
        U = torch.stack([u, u + 1e-10 * w], dim=1)  # (5, 2)
        D = torch.stack([d, -d])  # (2, 4)
        true = float((U[:, 0] - U[:, 1]).norm() * d.norm())  # exact differences (Sterbenz)
        bound = float(gram_pair_norm(U.T @ U, D @ D.T))
        assert bound >= true, f"seed {seed}: {bound:.3e} < {true:.3e}"


def test_psd_sqrt_clamps_negative_eigenvalues() -> None:
    S = psd_sqrt(torch.diag(torch.tensor([4.0, -1.0], dtype=F64)))
    assert torch.allclose(S, torch.diag(torch.tensor([2.0, 0.0], dtype=F64)))


# ----- router certificates --------------------------------------------------------------------------------


def _talk(seed: int = 0, a_scale: float = 1.0) -> TalkLoRA:
    t = TalkLoRA(TalkLoRAConfig(in_features=6, out_features=4, rank=6, num_experts=3), dtype=F64)
    t.randomize_(seed)
    with torch.no_grad():
        t.A.weight.mul_(a_scale)
    return t


@pytest.mark.parametrize("a_scale", [0.1, 10.0])
def test_router_forms_are_certified_and_ordered(a_scale: float) -> None:
    t = _talk(1, a_scale)
    b = router_bounds(t)
    L = effective_matrix(logit_factors(t))
    centred_true = 0.5 * _sigma(_centring(3) @ L)
    assert 0.5 * _sigma(L) <= b.effective <= b.product * (1 + 1e-12)
    assert centred_true < b.centred <= centred_true * (1 + 1e-8)
    assert b.centred <= b.effective * (1 + 1e-12)
    W, T, A = t.router.logits.dense(), t.T.weight, t.A.weight  # type: ignore[union-attr]
    assert b.product >= 0.5 * _sigma(W) * _sigma(T) * _sigma(A)


def test_pair_alignment_is_its_definition() -> None:
    t = _talk(2)
    b = router_bounds(t)
    PL = _centring(3) @ effective_matrix(logit_factors(t))
    d = max(float((PL[i] - PL[j]).norm()) for i in range(3) for j in range(i + 1, 3))
    a = min(1.0, d / (math.sqrt(2.0) * _sigma(PL)))
    assert a < 1 - 1e-3  # a generic router: the centred bound is not attained
    assert b.pair_alignment == pytest.approx(a, rel=1e-9)


def test_head_bound_reads_the_router_only() -> None:
    """h ↦ softmax(W_r h) for a latent MoELoRA: the bound is ½‖Π W_r‖₂, A does not enter."""
    cfg = MoELoRAConfig(
        in_features=6, out_features=4, num_experts=3, expert_rank=2, router="latent"
    )
    mo = MoELoRA(cfg, dtype=F64).randomize_(3)
    with torch.no_grad():
        mo.A.weight.mul_(5.0)
    hb = head_bounds(mo)
    assert hb is not None
    true = 0.5 * _sigma(_centring(3) @ mo.router.logits.dense())  # type: ignore[union-attr]
    assert true <= hb.centred <= true * (1 + 1e-8)


def test_talk_head_centred_is_its_definition() -> None:
    t = _talk(4)
    tb = talk_bounds(t)
    W, T = t.router.logits.dense().detach(), t.T.weight.detach()  # type: ignore[union-attr]
    d = t.config.head_dim
    for j in range(3):
        Mj = W @ torch.kron(T[:, j : j + 1], torch.eye(d, dtype=F64))  # (E, d)
        true = 0.5 * _sigma(_centring(3) @ Mj)
        assert true <= tb.head_centred[j] <= true * (1 + 1e-8)


# ----- local bounds away from the centre ------------------------------------------------------------------


def _routed(kind: str, seed: int) -> Adapter:
    a: Adapter
    if kind == "moelora":
        cfg = MoELoRAConfig(in_features=4, out_features=3, num_experts=3, expert_rank=2)
        a = MoELoRA(cfg, dtype=F64)
    elif kind == "talklora":
        a = TalkLoRA(
            TalkLoRAConfig(in_features=4, out_features=3, rank=3, num_experts=3), dtype=F64
        )
    else:
        a = CoMoL(CoMoLConfig(in_features=4, out_features=3, rank=3, num_cores=3), dtype=F64)
    a.randomize_(seed)
    assert a.router is not None
    with torch.no_grad():
        a.router.logits.dense().mul_(4.0)  # a sharp router: the routing changes inside the ball
    return a


@pytest.mark.parametrize("kind", ["moelora", "talklora", "comol"])
def test_local_bounds_hold_away_from_the_centre(kind: str) -> None:
    """‖DΔ(y)‖₂ <= K(c) for y in B(c, R), at the centre and on spheres around it (R = 0.5, 2)."""
    a = _routed(kind, 5)
    f = expert_factors(a)
    L = effective_matrix(logit_factors(a))
    centres = torch.cat(
        [torch.zeros(1, 4, dtype=F64), torch.randn(2, 4, generator=_gen(6), dtype=F64)]
    )
    dirs = torch.randn(150, 4, generator=_gen(7), dtype=F64)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    for R in (0.5, 2.0):
        rep, per_centre = local_bounds(f, centres, R, L)
        assert rep.adaptive <= rep.tight * (1 + 1e-9) and rep.tight <= rep.spec * (1 + 1e-9)
        for k, c in enumerate(centres):
            ys = torch.cat([c + R * rho * dirs for rho in (1.0, 0.6, 0.25)])
            jac = float(torch.linalg.matrix_norm(analytic_jacobian(a, ys).detach(), ord=2).max())
            assert jac <= float(per_centre[k]) * (1 + 1e-9), (kind, R, k, jac)
            assert jac <= rep.adaptive


def test_centred_response_is_its_definition() -> None:
    """‖Y_c(x)‖₂ = ‖[(P_1 − P̄) x … (P_E − P̄) x]‖₂ for experts sharing a large common part."""
    cfg = MoELoRAConfig(in_features=4, out_features=3, num_experts=3, expert_rank=2)
    mo = MoELoRA(cfg, dtype=F64).randomize_(8)
    A = mo.A.weight.detach().unflatten(0, (3, 2))
    B = mo.B.weight.detach().unflatten(1, (3, 2))
    with torch.no_grad():
        mo.A.weight.copy_(A[:1].expand_as(A).flatten(0, 1))
        mo.B.weight.copy_((B[:, :1] + 0.1 * B).flatten(1))
    f = expert_factors(mo)
    X = torch.randn(5, 4, generator=_gen(9), dtype=F64)
    P = mo.expert_matrices().detach()
    Pc = P - P.mean(0, keepdim=True)
    got = centred_response_norms(f, X)
    for i, x in enumerate(X):
        true = _sigma(torch.einsum("emn,n->me", Pc, x))
        assert true <= float(got[i]) <= true * 1.001 + 1e-9


def _input_moelora(W: list[list[float]], A: list[list[float]], B: list[float]) -> MoELoRA:
    """An input-router MoELoRA with r_e = 1 and m = 1: W_g = W (E x n), A_i = A[i], B_i = B[i]."""
    E, n = len(W), len(W[0])
    mo = MoELoRA(
        MoELoRAConfig(in_features=n, out_features=1, num_experts=E, expert_rank=1), dtype=F64
    )
    with torch.no_grad():
        mo.router.logits.dense().copy_(torch.tensor(W, dtype=F64))  # type: ignore[union-attr]
        mo.A.weight.copy_(torch.tensor(A, dtype=F64))
        mo.B.weight.copy_(torch.tensor([B], dtype=F64))
    return mo


@pytest.mark.parametrize(
    "W, A, B, R, y",
    [
        # E = 3, uniform routing at 0; at y = (R, 0) experts 1 and 2 tie and dominate, so ‖J(p)‖ = ½
        # there, not max_k p_k(0) = ⅓: ‖DΔ(y)‖ = λR (λ = 10) needs the growth factor e^{D_k R}
        (
            [[10.0, 10.0], [10.0, -10.0], [-10.0, 0.0]],
            [[1, 0], [1, 0], [1, 0]],
            [1, -1, 0],
            2.0,
            [2.0, 0.0],
        ),
        # E = 2, n = m = 1: Δ(y) = tanh(λy) y with ΔW(0) = 0; ‖DΔ(R)‖ ≈ 2λR for λR = ½ needs the
        # ΔW term's growth ½‖Π L‖ R ‖𝒫_c‖ (ΔW at the centre alone is 0)
        ([[1.0], [-1.0]], [[1.0], [1.0]], [1, -1], 0.5, [0.5]),
    ],
    ids=["tie-away-from-centre", "delta-w-grows"],
)
def test_adaptive_bound_holds_where_routing_changes(
    W: list[list[float]], A: list[list[float]], B: list[float], R: float, y: list[float]
) -> None:
    mo = _input_moelora(W, A, B)
    n = len(W[0])
    _, per_centre = local_bounds(
        expert_factors(mo), torch.zeros(1, n, dtype=F64), R, effective_matrix(logit_factors(mo))
    )
    dirs = torch.randn(64, n, generator=_gen(11), dtype=F64)
    ys = torch.cat([torch.tensor([y], dtype=F64), R * dirs / dirs.norm(dim=-1, keepdim=True)])
    jac = float(torch.linalg.matrix_norm(analytic_jacobian(mo, ys).detach(), ord=2).max())
    assert jac <= float(per_centre[0]) * (1 + 1e-9), (jac, float(per_centre[0]))


# ----- the lower-bound search stays in its domain ---------------------------------------------------------


def test_search_region_projects_onto_the_ball() -> None:
    """A measured "lower bound" on the local constant in B(c, R) must come from points of that ball:
    the search projects every step back onto it (points already inside stay where they are)."""
    from proofs_numeric.search import Region

    R = 0.5
    centres = torch.randn(2, 3, generator=_gen(12), dtype=F64)
    idx = torch.tensor([0, 1, 1, 0])
    steps = torch.randn(4, 3, generator=_gen(13), dtype=F64)
    far = centres[idx] + 10.0 * steps
    near = centres[idx] + 0.1 * R * steps / steps.norm(dim=-1, keepdim=True)
    region = Region(centres, idx, R)
    dist = (region.project(far) - centres[idx]).norm(dim=-1)
    assert bool((dist <= R * (1 + 1e-12)).all()) and bool((dist >= R * (1 - 1e-12)).all())
    assert torch.allclose(region.project(near), near, rtol=0, atol=1e-15)
