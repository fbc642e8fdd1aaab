"""Adversarial soundness: every certified value is >= the exact value, computed independently.

The truth is computed with mpmath at 50 digits from the float weights converted exactly (products,
centring, softmax and the eigenvalues of small Gram matrices), never from the float64 code under
test. The cases are built to break float64 shortcuts: router rows sharing a common component
10^3..10^12 times their spread (near-tie logits), experts sharing a large common component, huge and
tiny weight scales (up to overflow, which must raise CertificateError instead of giving a number),
rank-deficient factors, float32 weights, for every routed architecture. The mutated twin is the old
route (L formed in float64, then centred, times 1 + 1e-10): it goes below the truth and is refuted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import mpmath
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from moelora_core.adapter import Adapter
from moelora_core.comol import CoMoL
from moelora_core.hydralora import HydraLoRA
from moelora_core.maps import Identity, KronIdentity
from moelora_core.moelora import MoELoRA
from moelora_core.talklora import TalkLoRA
from proofs_numeric.bounds import (
    expert_factors,
    head_bounds,
    layer_report,
    local_bounds,
    router_bounds,
    stack_norms,
    talk_bounds,
)
from proofs_numeric.bounds.certified import effective_matrix, logit_factors
from proofs_numeric.bounds.instances import ARCHS, build, randomized
from proofs_numeric.bounds.norms import centred_response_norms, mixed_norm_fn
from proofs_numeric.bounds.report import check_consistent
from proofs_numeric.bounds.rigorous import CertificateError
from proofs_numeric.bounds.spectral import centring

pytestmark = pytest.mark.theorems

DPS = 50
D = torch.float64
MP = mpmath.mp
HUGE = 1e300  # a certificate may fail (CertificateError) only when the truth is near overflow


# ----- the independent computation (mpmath, 50 digits) -------------------------------------------


def mpm(M: Tensor) -> Any:
    """The float matrix as an exact mpmath matrix (every float64 is an mpf exactly)."""
    return MP.matrix(M.detach().to("cpu", D).tolist())


def mp_centre(M: Any) -> Any:
    E = M.rows
    out = M.copy()
    for j in range(M.cols):
        mean = MP.fsum(M[i, j] for i in range(E)) / E
        for i in range(E):
            out[i, j] = M[i, j] - mean
    return out


def mp_norm(M: Any) -> Any:
    """σ_max = sqrt(λ_max) of the smaller Gram matrix."""
    if M.rows == 0 or M.cols == 0:
        return MP.mpf(0)
    G = M * M.T if M.rows <= M.cols else M.T * M
    return MP.sqrt(max(max(MP.eigsy(G, eigvals_only=True)), MP.mpf(0)))


def mp_chain(mats: Sequence[Tensor], centred: bool) -> Any:
    """(Π) F_K ⋯ F_1 in mpmath (mats innermost first)."""
    M = mpm(mats[-1])
    if centred:
        M = mp_centre(M)
    for F in reversed(mats[:-1]):
        M = M * mpm(F)
    return M


def dense_factors(factors: Sequence[Any]) -> list[Tensor]:
    mats = [f.dense() for f in factors if not isinstance(f, Identity)]
    return mats or [torch.eye(factors[0].in_features, dtype=D)]


def mp_experts(a: Adapter) -> list[Any]:
    """P_i from the adapter's own weights (independent of local.expert_factors)."""
    w = {k: v.detach().to("cpu", D) for k, v in a.named_parameters()}
    s, B, A = MP.mpf(a.config.scale), w["B.weight"], w["A.weight"]
    if isinstance(a, MoELoRA | HydraLoRA):
        r = a.config.expert_rank
        blocks = range(a.config.num_experts)
        Ai = [A[i * r : (i + 1) * r] if isinstance(a, MoELoRA) else A for i in blocks]
        return [s * mpm(B[:, i * r : (i + 1) * r]) * mpm(Ai[i]) for i in blocks]
    if isinstance(a, TalkLoRA):
        d, K = a.config.head_dim, w["K.weight"]
        return [
            s * mpm(B[:, i * d : (i + 1) * d]) * mpm(K[i]) * mpm(A[i * d : (i + 1) * d])
            for i in range(a.num_experts)
        ]
    assert isinstance(a, CoMoL)
    return [s * mpm(B) * mpm(M) * mpm(A) for M in w["cores"]]


def mp_jacobian_norm(a: Adapter, x: Tensor) -> Any:
    """‖DΔ(x)‖₂ with DΔ(x) = Σ p_i P_i + [P_1 x … P_E x] J(p) Π L, p = softmax(Π L x) (J = JΠ and
    softmax ignores the mean logit; Π L with the rows centred first, so 50 digits do not cancel)."""
    L = mp_chain(dense_factors(logit_factors(a)), centred=True)
    X = mpm(x.unsqueeze(1))
    z = L * X
    zmax = max(z[i] for i in range(z.rows))
    e = [MP.exp(z[i] - zmax) for i in range(z.rows)]
    p = [v / MP.fsum(e) for v in e]
    P = mp_experts(a)
    E = len(P)
    J = MP.matrix(E, E)
    for i in range(E):
        for j in range(E):
            J[i, j] = (p[i] if i == j else 0) - p[i] * p[j]
    Y = MP.matrix(P[0].rows, E)
    for i in range(E):
        col = P[i] * X
        for k in range(P[0].rows):
            Y[k, i] = col[k]
    DW = P[0] * p[0]
    for i in range(1, E):
        DW = DW + P[i] * p[i]
    return mp_norm(DW + Y * J * L)


# ----- adversarial adapters ----------------------------------------------------------------------


@dataclass(frozen=True)
class Adv:
    arch: str
    E: int
    seed: int
    common: int  # log10 of the common component / spread (0: none)
    scale: int  # log10 of the weight scale
    rank_deficient: bool
    float32: bool

    def build(self) -> Adapter:
        a = randomized(build(self.arch, 5, 4, self.E, 2), self.seed, 1.0)  # type: ignore[arg-type]
        gen = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            W = logit_factors(a)[-1].dense()  # the outermost router factor (E, r)
            if self.common:
                c = 10.0**self.common
                W.add_(c * torch.randn(1, W.shape[1], generator=gen, dtype=D))  # rows c·v + spread
                W[-1].copy_(W[0] + 1e-9 * torch.randn(W.shape[1], generator=gen, dtype=D))  # a tie
                for name, p in a.named_parameters():  # experts sharing a common component too
                    if name == "B.weight":
                        blk = p.shape[1] // self.E if not isinstance(a, CoMoL) else p.shape[1]
                        common = torch.randn(p.shape[0], blk, generator=gen, dtype=D)
                        p.add_(c * common.repeat(1, p.shape[1] // blk))
            if self.rank_deficient:
                F = logit_factors(a)[0] if not isinstance(logit_factors(a)[0], Identity) else None
                M = F.dense() if F is not None else W
                M.copy_(M[:1].expand_as(M) * torch.arange(1, M.shape[0] + 1, dtype=D)[:, None])
            for p in a.parameters():
                p.mul_(10.0**self.scale)
        return a.to(torch.float32) if self.float32 else a


@st.composite
def advs(draw: st.DrawFn) -> Adv:
    f32 = draw(st.booleans())
    lim = 25 if f32 else 120
    return Adv(
        arch=draw(st.sampled_from(ARCHS)),
        E=draw(st.integers(2, 4)),
        seed=draw(st.integers(0, 2**16)),
        common=draw(st.sampled_from([0, 3, 6, 9, 12])),
        scale=draw(st.sampled_from([0, 0, -lim, lim, -lim // 3, lim // 3])),
        rank_deficient=draw(st.booleans()),
        float32=f32,
    )


def at_least(cert: float, true: Any, what: str) -> float:
    """cert >= true (up to the 50-digit computation's own error); returns cert / true."""
    slack = MP.mpf(10) ** (-DPS + 10) * (abs(true) + MP.mpf(2) ** -1074)
    assert MP.mpf(cert) >= true - slack, f"{what}: certified {cert!r} < exact {MP.nstr(true, 20)}"
    return float(MP.mpf(cert) / true) if true > 0 else 1.0


def certified_vs_exact(a: Adapter) -> list[tuple[str, float, Any]]:
    """(name, certified, exact) for every certified value of the adapter."""
    out: list[tuple[str, float, Any]] = []
    factors = logit_factors(a)
    maps = [("router", factors, router_bounds(a))]
    hb = head_bounds(a)
    if hb is not None:
        maps.append(("head", factors[1:], hb))
    for name, fs, b in maps:
        mats = dense_factors(fs)
        out.append((f"{name} centred", b.centred, mp_norm(mp_chain(mats, True)) / 2))
        out.append((f"{name} effective", b.effective, mp_norm(mp_chain(mats, False)) / 2))
        prod = MP.mpf(1) / 2
        for f in fs:
            if not isinstance(f, Identity):
                prod *= mp_norm(mpm(f.talk.dense() if isinstance(f, KronIdentity) else f.dense()))
        out.append((f"{name} product", b.product, prod))
    if isinstance(a, TalkLoRA):
        tb = talk_bounds(a)
        Wr, T = mpm(a.router.logits.dense()), a.T.weight.detach().to(D)  # type: ignore[union-attr]
        d = a.config.head_dim
        for j in range(a.num_experts):
            K = torch.kron(T[:, j : j + 1], torch.eye(d, dtype=D))  # (T e_j) ⊗ I_d
            out.append(
                (f"talk head {j} centred", tb.head_centred[j], mp_norm(mp_centre(Wr) * mpm(K)) / 2)
            )
            out.append(
                (
                    f"talk head {j} product",
                    tb.head_product[j],
                    mp_norm(Wr) * mp_norm(mpm(T[:, j : j + 1])) / 2,
                )
            )
    return out


def local_vs_exact(a: Adapter, seed: int) -> list[tuple[str, float, Any]]:
    """Stacked norms, per-centre pieces and the local bound against the exact Jacobian norm."""
    f = expert_factors(a)
    sn = stack_norms(f)
    P = mp_experts(a)
    E = len(P)
    Pbar = P[0]
    for p in P[1:]:
        Pbar = Pbar + p
    Pbar = Pbar / E
    out = [(f"‖P_{i}‖", sn.experts[i], mp_norm(p)) for i, p in enumerate(P)]
    out.append(("‖𝒫‖", sn.stack, mp_norm(_hcat(P))))
    out.append(("‖𝒫_c‖", sn.stack_centred, mp_norm(_hcat([p - Pbar for p in P]))))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(a.in_features, generator=gen, dtype=D)
    Xm = mpm(x.unsqueeze(1))
    Yc = _hcat([(p - Pbar) * Xm for p in P])
    out.append(("‖Y_c(x)‖", float(centred_response_norms(f, x.unsqueeze(0))[0]), mp_norm(Yc)))
    g = torch.softmax(torch.randn(1, E, generator=gen, dtype=D), -1)
    mixed = mixed_norm_fn(f)
    if mixed is not None:
        gm = [MP.mpf(float(v)) for v in g[0]]
        W = P[0] * gm[0]
        for i in range(1, E):
            W = W + P[i] * gm[i]
        out.append(("‖ΔW‖", float(mixed(g)[0]), mp_norm(W)))
    true_jac = mp_jacobian_norm(a, x)
    for R in (0.0, 0.5):
        lb, _ = local_bounds(f, x.unsqueeze(0), R, logit_factors(a))
        out.append((f"local adaptive R={R}", lb.adaptive, true_jac))
        out.append((f"local centred R={R}", lb.tight, true_jac))
        out.append((f"local SPEC R={R}", lb.spec, true_jac))
    return out


def _hcat(Ms: Sequence[Any]) -> Any:
    out = MP.matrix(Ms[0].rows, sum(M.cols for M in Ms))
    c = 0
    for M in Ms:
        for i in range(M.rows):
            for j in range(M.cols):
                out[i, c + j] = M[i, j]
        c += M.cols
    return out


def check_case(case: Adv) -> list[float]:
    a = case.build()
    ratios = []
    with MP.workdps(DPS):
        try:
            items = certified_vs_exact(a) + local_vs_exact(a, case.seed)
        except CertificateError:
            # only near overflow: the exact quantities the bounds are made of are then astronomical
            prod = MP.mpf(1)
            for M in dense_factors(logit_factors(a)):
                prod *= mp_norm(mpm(M))
            big = max(mp_norm(p) for p in mp_experts(a)) * (1 + prod) * 10 + prod
            assert big * 10**20 > HUGE, f"{case}: no certificate although the truth is {big}"
            return ratios
        for what, cert, true in items:
            ratios.append(at_least(cert, true, f"{case}: {what}"))
    return ratios


# ----- the properties ----------------------------------------------------------------------------


@settings(max_examples=25)
@given(advs())
def test_certified_values_are_upper_bounds_on_the_exact_values(case: Adv) -> None:
    check_case(case)


@pytest.mark.parametrize("arch", ARCHS)
def test_large_common_components_every_architecture(arch: str) -> None:
    check_case(Adv(arch, 4, 7, 12, 0, rank_deficient=False, float32=False))


def old_centred(a: Adapter) -> float:
    """The mutated twin: L formed in float64, then centred, times the old margin 1 + 1e-10."""
    L = effective_matrix(logit_factors(a))
    return 0.5 * float(torch.linalg.matrix_norm(centring(L.shape[0]) @ L, ord=2)) * (1 + 1e-10)


def test_twin_old_route_is_refuted() -> None:
    """Latent routers whose rows share a component 10^12 times their spread: forming L = W_r A in
    float64 and centring afterwards cancels catastrophically; the old value goes below the exact
    ½‖Π L‖₂ on some of these cases (refuted), the certified one never does."""
    below = 0
    for seed in range(12):
        a = Adv("moelora-latent", 4, seed, 12, 0, False, False).build()
        with MP.workdps(DPS):
            true = mp_norm(mp_chain(dense_factors(logit_factors(a)), True)) / 2
            at_least(router_bounds(a).centred, true, f"seed {seed}")
            below += MP.mpf(old_centred(a)) < true * (1 - MP.mpf(10) ** -9)
    assert below >= 1, "the old compute-L-then-centre route was never below the truth"


@pytest.mark.parametrize("arch", ARCHS)
def test_not_loose_on_well_conditioned_cases(arch: str) -> None:
    """Random weights of scale 1: every certified norm within 1e-9 of the exact value (the local
    bounds themselves bound a supremum, not a norm, and are left out)."""
    a = randomized(build(arch, 5, 4, 3, 2), 3, 1.0)  # type: ignore[arg-type]
    with MP.workdps(DPS):
        items = certified_vs_exact(a) + local_vs_exact(a, 3)
        for what, cert, true in items:
            if not what.startswith("local"):
                assert at_least(cert, true, what) <= 1 + 1e-9, f"{what}: {cert} vs {true}"


def test_report_refuses_a_certificate_on_overflow() -> None:
    """Router weights near the float64 limit: ½‖L‖₂ is not representable, so the report says so
    (upper None, the reason in notes) instead of returning a number."""
    a = Adv("moelora-latent", 3, 1, 0, 0, False, False).build()
    with torch.no_grad():
        for f in logit_factors(a):
            f.dense().mul_(1e170)
    rep = layer_report(a, samples=4)
    assert rep.upper is None and rep.upper_effective is None and rep.upper_product is None
    assert any("no certificate" in n for n in rep.notes)
    with pytest.raises(CertificateError, match="overflow"):
        router_bounds(a)


def test_report_on_near_ties_is_consistent() -> None:
    """A TalkLoRA whose router rows share a component 1e12 times their spread: every searched lower
    bound is below its certified upper bound, and the certified centred bound is above the exact one."""
    a = Adv("talklora", 3, 5, 12, 0, False, False).build()
    X = torch.randn(8, a.in_features, generator=torch.Generator().manual_seed(0), dtype=D)
    rep = layer_report(a, X, radius=0.5, samples=8)
    assert rep.lower is not None and rep.upper is not None and rep.lower <= rep.upper
    assert rep.local is not None and rep.local.lower is not None
    assert rep.local.lower <= rep.local.adaptive
    with MP.workdps(DPS):
        at_least(rep.upper, mp_norm(mp_chain(dense_factors(logit_factors(a)), True)) / 2, "report")


def test_consistency_check_refutes_a_lower_bound_above_the_upper() -> None:
    a = Adv("moelora-input", 3, 2, 0, 0, False, False).build()
    rep = layer_report(a, samples=4, local=False)
    assert rep.upper is not None
    rep.lower = rep.upper * (1 + 1e-12)
    with pytest.raises(CertificateError, match="refuted"):
        check_consistent(rep)
