"""The local perturbation bound on the full update Δ(x) = Σ_i g_i(x) P_i x (not globally Lipschitz).

Derivative. With p = g(y), Y(y) = [P_1 y … P_E y] (m x E) and J_g(y) = J(p) L:

    DΔ(y) δ = Σ_i g_i(y) P_i δ + Σ_i (J_g(y) δ)_i P_i y = ΔW(y) δ + Y(y) J(p) L δ.

SPEC form. ‖ΔW(y)‖₂ <= max_i ‖P_i‖₂ (a convex combination; the maximum of a convex function over the
simplex is at a vertex), ‖Y(y) c‖ = ‖[P_1 … P_E](c ⊗ y)‖ <= ‖𝒫‖₂ ‖c‖ ‖y‖ with 𝒫 = [P_1 … P_E] (m x En),
‖J(p) L δ‖ <= ½‖L‖₂ ‖δ‖. On the ball B(x, R) (convex, so the mean value inequality applies along
segments), ‖y‖ <= ‖x‖ + R and for all y, y' in the ball

    ‖Δ(y) − Δ(y')‖ <= K_spec ‖y − y'‖,   K_spec = max_i ‖P_i‖₂ + ½‖L‖₂ ‖𝒫‖₂ (‖x‖ + R).

Tighter form (proved the same way). J(p) L δ sums to 0 (1ᵀ J(p) = 0), so Y(y) J(p) L δ = Y(y) Π J(p) Π L δ
with Π = I − 11ᵀ/E: only the centred expert maps P_i − P̄ (P̄ = mean of the P_i) enter, through
Y_c(y) = Y(y) Π = [(P_1 − P̄) y … (P_E − P̄) y]. Y_c is linear in y, Y_c(u) a = 𝒫_c (a ⊗ u) with
𝒫_c = [P_1 − P̄ … P_E − P̄] = 𝒫 (Π ⊗ I_n), so ‖Y_c(y)‖₂ <= ‖Y_c(x)‖₂ + ‖𝒫_c‖₂ ‖y − x‖. Hence

    K_tight = max_i ‖P_i‖₂ + ½‖Π L‖₂ (‖Y_c(x)‖₂ + R ‖𝒫_c‖₂)  <=  K_spec,

because ‖Π L‖ <= ‖L‖, ‖Y_c(x)‖ <= ‖𝒫_c‖ ‖x‖ and ‖𝒫_c‖ <= ‖𝒫‖ (‖Π ⊗ I‖ = 1). With identical experts
(or E = 1) the router term vanishes and K_tight = ‖P_1‖₂, the exact constant of the linear map Δ.

Adaptive form (uses the routing at the centre, p = g(x), computed in float64 from L). For y in B(x, R):
ΔW(y) = ΔW(x) + Σ_i c_i (P_i − P̄) with c = g(y) − g(x), Σ c_i = 0, ‖c‖ <= ½‖Π L‖ R, so
‖ΔW(y)‖₂ <= ‖ΔW(x)‖₂ + ½‖Π L‖₂ R ‖𝒫_c‖₂ (and <= max_i ‖P_i‖₂). And J(p) ⪯ diag(p) (their difference is
ppᵀ ⪰ 0), so ‖J(p)‖₂ <= max_k p_k; along the ball log p_k(y) − log p_k(x) <= max_j (z_k − z_j)(y) −
(z_k − z_j)(x) <= D_k R with D_k = max_j ‖l_k − l_j‖. Hence

    K_adapt = min(max_i ‖P_i‖₂, ‖ΔW(x)‖₂ + ½‖Π L‖₂ R ‖𝒫_c‖₂)
              + ‖Π L‖₂ min(½, max_k p_k e^{D_k R}) (‖Y_c(x)‖₂ + R ‖𝒫_c‖₂)  <=  K_tight.

With near-uniform routing (p_k ≈ 1/E) and small R the router term shrinks by about 2/E.

Computation without forming the m x n matrices. Every architecture stores P_i = U_i V_i with
U_i: m x k, V_i: k x n (k = r_e, or r for CoMoL): MoELoRA U_i = s B_i, V_i = A_i; HydraLoRA U_i = s B_i,
V_i = A; TalkLoRA U_i = s B_i K_i, V_i = A_(i); CoMoL U_i = s B M_i, V_i = A. With G_U = U_catᵀ U_cat
(U_cat = [U_1 … U_E], Ek x Ek) and C = D (Q ⊗ I_n) Dᵀ for D = blockdiag(V_i), i.e. C_ij = Q_ij V_i V_jᵀ
(Q = I for 𝒫, Q = Π for 𝒫_c):  ‖U_cat D (Q ⊗ I)‖₂² = λ_max(C^{1/2} G_U C^{1/2}) (exact, Ek x Ek), and
Y(x)ᵀ Y(x) has entries (V_i x)ᵀ (U_iᵀ U_j) (V_j x), E x E per input. Cost: O(Ek(m + n) Ek) once and
O(N Ek n) for N centres. For other adapters the dense `expert_matrices()` are factored as P_i · I.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from moelora_core.adapter import Adapter
from moelora_core.comol import CoMoL
from moelora_core.errors import (
    ConfigError,
    MoELoRAError,
    ShapeError,
    checks_enabled,
    input_checks,
)
from moelora_core.hydralora import HydraLoRA
from moelora_core.maps import Identity, LinearMap
from moelora_core.moelora import MoELoRA
from moelora_core.talklora import TalkLoRA
from moelora_core.validate import require_finite, require_instance, require_real, require_tensor

from .certified import pair_distances, router_terms
from .domain import require_adapter
from .rigorous import (
    Enclosure,
    centre_rows,
    exact,
    exact_t,
    gram_pair_upper,
    hadamard,
    half_up,
    matmul,
    matmul_floats,
    normalise,
    poly_up,
    row_norms_upper,
    scale,
    scale_up,
    scale_up_t,
    softmax_error,
    sym_lmax_upper,
    up,
)
from .spectral import F64, SOFTMAX_LIP, certify, up_sqrt

DENSE_FALLBACK_MAX = 4096  # E·min(m, n) allowed for the dense fallback factorisation
FACTOR_CHECK_RTOL = 1e-6  # factors vs the adapter's own Δ on probe inputs (float32 adapters)


@dataclass(frozen=True)
class ExpertFactors:
    """P_i = U_i V_i; U (E, m, k), V (E, k, n), float64."""

    U: Tensor
    V: Tensor
    source: str
    shared_v: bool = False  # all V_i equal (HydraLoRA, CoMoL): ΔW(x) = (Σ_i g_i U_i) V
    U_rad: Tensor | None = None  # |U_exact − U| <= U_rad (U computed from the weights); None: exact
    core: tuple[Tensor, Tensor, float] | None = (
        None  # CoMoL: (B (m, r), M (N, r, r), s), U_i = s B M_i
    )

    @cached_property
    def _scaling(self) -> tuple[Enclosure, Tensor, int, int]:
        rad = torch.zeros_like(self.U) if self.U_rad is None else self.U_rad
        Us, eu = normalise(self.U)
        Vs, ev = normalise(self.V[:1] if self.shared_v else self.V)  # a shared V: one copy
        Vs = Vs.expand_as(self.V)
        return Enclosure(Us, scale_up_t(rad, -eu) if eu else rad), Vs, eu, ev

    @property
    def scaled(self) -> tuple[Enclosure, Tensor, int]:
        """(U', V', e) with U_i V_i = 2^e U'_i V'_i: U (with its rounding) and V scaled by exact
        powers of 2 (the radius rounded upwards), so that Gram products stay in range."""
        Ue, Vs, eu, ev = self._scaling
        return Ue, Vs, eu + ev

    def core_parts(self, centred: bool) -> tuple[Enclosure, Enclosure, float] | None:
        """CoMoL (U_i = s B M_i): (BᵀB, M, s) for the scaled U'_i = s (2^-e_u B) M_i, enclosed, with
        M_i − M̄ when centred (then U'_i − Ū' = s (2^-e_u B)(M_i − M̄) exactly); None without the
        factors or when 2^-e_u B is not exact."""
        if self.core is None:
            return None
        B, M, s = self.core
        eu = self._scaling[2]
        B2 = torch.ldexp(B, torch.tensor(-eu, dtype=torch.int32))
        if not torch.equal(torch.ldexp(B2, torch.tensor(eu, dtype=torch.int32)), B):
            return None
        N, r = M.shape[0], M.shape[-1]
        Me = exact(M)
        if centred:
            Mc = centre_rows(Enclosure(*(t.reshape(N, r * r) for t in Me.pair)))
            Me = Enclosure(*(t.view(N, r, r) for t in Mc.pair))
        return matmul_floats(B2.T.contiguous(), B2), Me, s  # BᵀB: (r, r), the only m-long product

    def _core_gram(self, centred: bool) -> Enclosure | None:
        """G_U' = s² M_iᵀ (BᵀB) M_j (`core_parts`), (Ek, Ek), or None."""
        parts = self.core_parts(centred)
        if parts is None:
            return None
        GB, Me, s = parts
        N, r = Me.mid.shape[0], Me.mid.shape[-1]
        T = matmul(Me.T, GB)  # (N, r, r): M_iᵀ BᵀB
        G4 = matmul(
            Enclosure(*(t.unsqueeze(1) for t in T.pair)),
            Enclosure(*(t.unsqueeze(0) for t in Me.pair)),
        )  # (N_i, N_j, r_p, r_q)
        G4 = scale(scale(G4, s), s)
        return Enclosure(*(t.permute(0, 2, 1, 3).reshape(N * r, N * r) for t in G4.pair))

    @property
    def num_experts(self) -> int:
        return int(self.U.shape[0])

    def dense(self) -> Tensor:
        """(E, m, n): only for small shapes (tests)."""
        return self.U @ self.V

    @cached_property
    def grams(self) -> tuple[Enclosure, Enclosure]:
        """Enclosures of G_U = U'_catᵀ U'_cat and G_V = V'_st V'_stᵀ (Ek x Ek each) for the scaled
        factors (`scaled`: the norms built from them are 2^-e times the true ones), computed once."""
        E, m, k = self.U.shape
        Ue, V, _ = self.scaled
        ones = torch.ones(E, E, dtype=F64)
        if self.shared_v:
            V0 = exact(V[0])
            g = matmul(V0, V0.T)
            GV = Enclosure(torch.kron(ones, g.mid), torch.kron(ones, g.rad))
        else:
            Vst = exact(V.reshape(E * k, -1))  # (Ek, n)
            GV = matmul(Vst, Vst.T)
        GU = self._core_gram(False)
        if GU is None:
            Ucat = Enclosure(*(t.permute(1, 0, 2).reshape(m, E * k) for t in Ue.pair))
            GU = matmul(Ucat.T, Ucat)
        return GU, GV

    @cached_property
    def centred_gram(self) -> Enclosure:
        """Enclosure of G_c = U'_cᵀ U'_c (Ek x Ek) for the centred scaled factors U'_i − Ū' (shared
        V: P_i − P̄ = (U_i − Ū) V, centred before any product), computed once for all forms."""
        core = self._core_gram(True)
        if core is not None:
            return core
        E, m, k = self.U.shape
        Ue, _, _ = self.scaled
        Uc = centre_rows(Enclosure(Ue.mid.reshape(E, m * k), Ue.rad.reshape(E, m * k)))
        Ucat = Enclosure(*(t.view(E, m, k).permute(1, 0, 2).reshape(m, E * k) for t in Uc.pair))
        return matmul(Ucat.T, Ucat)


def expert_factors(adapter: Adapter) -> ExpertFactors:
    """Low-rank factors of the expert maps P_i from the architecture's parameters."""
    adapter = require_adapter(adapter)
    with torch.no_grad():
        return _factors(adapter)


def _factors(a: Adapter) -> ExpertFactors:
    """One branch per architecture (called under no_grad)."""
    if isinstance(a, MoELoRA):
        c = a.config
        U = (
            a.B.weight.detach()
            .to("cpu", F64)
            .unflatten(1, (c.num_experts, c.expert_rank))
            .permute(1, 0, 2)
        )
        V = a.A.weight.detach().to("cpu", F64).unflatten(0, (c.num_experts, c.expert_rank))
        Us = scale(exact(U), c.scale)
        return ExpertFactors(Us.mid, V, "moelora", U_rad=Us.rad)
    if isinstance(a, HydraLoRA):
        h = a.config
        U = (
            a.B.weight.detach()
            .to("cpu", F64)
            .unflatten(1, (h.num_experts, h.expert_rank))
            .permute(1, 0, 2)
        )
        V = a.A.weight.detach().to("cpu", F64).expand(h.num_experts, -1, -1)
        Us = scale(exact(U), h.scale)
        return ExpertFactors(Us.mid, V, "hydralora", shared_v=True, U_rad=Us.rad)
    if isinstance(a, TalkLoRA):
        t = a.config
        Bh = (
            a.B.weight.detach()
            .to("cpu", F64)
            .unflatten(1, (t.num_experts, t.head_dim))
            .permute(1, 0, 2)
        )
        Us = scale(matmul(exact(Bh), exact(a.K.weight)), t.scale)  # (E, m, d): s B_i K_i
        V = a.A.weight.detach().to("cpu", F64).unflatten(0, (t.num_experts, t.head_dim))
        return ExpertFactors(Us.mid, V, "talklora", U_rad=Us.rad)
    if isinstance(a, CoMoL):
        o = a.config
        B = exact(a.B.weight).mid.unsqueeze(0)  # (1, m, r)
        Us = scale(matmul(exact_t(B), exact(a.cores)), o.scale)  # (N, m, r): s B M_i
        V = a.A.weight.detach().to("cpu", F64).expand(o.num_cores, -1, -1)
        core = (B[0], exact(a.cores).mid, o.scale)
        return ExpertFactors(Us.mid, V, "comol", shared_v=True, U_rad=Us.rad, core=core)
    P = a.expert_matrices().detach().to("cpu", F64)  # (E, m, n)
    E, m, n = P.shape
    if E * min(m, n) > DENSE_FALLBACK_MAX:
        raise ConfigError(
            f"adapter={type(a).__name__}: no low-rank factorisation known and "
            f"E·min(m, n) = {E * min(m, n)} > {DENSE_FALLBACK_MAX} for the dense fallback"
        )
    if n <= m:
        eye = torch.eye(n, dtype=F64, device=P.device).expand(E, n, n)
        return ExpertFactors(P, eye, "dense")
    eye = torch.eye(m, dtype=F64, device=P.device).expand(E, m, m)
    return ExpertFactors(eye, P, "dense")


def check_factors(adapter: Adapter, f: ExpertFactors, probes: int = 4, seed: int = 0) -> float:
    """Relative error of Σ_i g_i(x) U_i V_i x against the adapter's Δ(x) on random probes.

    Raises MoELoRAError above FACTOR_CHECK_RTOL (float32) / 1e-10 (float64), plus the effect of the
    adapter's own rounding of the logits (γ·|F_K|⋯|F_1||x| per logit moves g by at most as much, and
    Δ by E times that times max_i |P_i x|: large for near-tie routers with a big common component):
    the factors the bound is computed from must be the maps the adapter applies. A float16/bfloat16/
    float32 adapter is compared through a float64 copy (same weights, exactly converted), so half
    precision is not refused for its own rounding.
    """
    require_adapter(adapter)
    require_instance("f", f, ExpertFactors)
    if adapter.reference.dtype != F64:
        adapter = copy.deepcopy(adapter).to(F64)
    ref = adapter.reference
    gen = torch.Generator(device="cpu").manual_seed(seed)
    scales = torch.logspace(-1, 1, probes, dtype=F64).unsqueeze(-1)
    X = scales * torch.randn(probes, adapter.in_features, generator=gen, dtype=F64)  # CPU
    with torch.no_grad(), input_checks(False):
        Xw = X.to(dtype=ref.dtype, device=ref.device)
        delta = adapter.delta(Xw).detach().to("cpu", F64)
        g = adapter.routing(Xw)
    gw = torch.ones(probes, 1, dtype=F64) if g is None else g.detach().to("cpu", F64)
    z = torch.einsum("ekn,bn->bek", f.V, X)  # (probes, E, k): V_i x
    Px = torch.einsum("emk,bek->bem", f.U, z)  # (probes, E, m): P_i x
    ours = torch.einsum("be,bem->bm", gw, Px)
    scale = 1.0 + float(delta.abs().max())
    err = float((ours - delta).abs().max()) / scale
    tol = 1e-10 if ref.dtype == F64 else FACTOR_CHECK_RTOL * 10
    lm = adapter.router_logit_map()
    if g is not None and lm is not None:
        zabs = X.abs().T  # (n, probes): |F_K| ⋯ |F_1| |x|, the scale of the logits' rounding
        dims = 0
        for fac in lm.factors():
            if isinstance(fac, Identity):
                continue
            W = fac.dense().detach().to("cpu", F64)
            zabs, dims = W.abs() @ zabs, dims + W.shape[1]
        eps = torch.finfo(ref.dtype).eps
        noise = 4 * gw.shape[1] * dims * eps * float(zabs.max()) * float(Px.abs().max())
        tol += noise / scale
    if err > tol:
        raise MoELoRAError(
            f"expert factors of {type(adapter).__name__}: relative error {err:.2e} against the "
            f"adapter's Δ (tolerance {tol:.0e}); expected P_i = U_i V_i"
        )
    return err


@dataclass(frozen=True)
class StackNorms:
    """max_i ‖P_i‖₂, ‖𝒫‖₂ = ‖[P_1 … P_E]‖₂, ‖𝒫_c‖₂ = ‖[P_1 − P̄ … P_E − P̄]‖₂ (certified)."""

    expert_max: float
    experts: list[float]
    stack: float
    stack_centred: float


def _block(e: Enclosure, E: int, k: int) -> Enclosure:
    """(Ek, Ek) -> (E, E, k, k) blocks, and the diagonal ones as (E, k, k)."""
    return Enclosure(*(t.view(E, k, E, k).permute(0, 2, 1, 3) for t in (e.mid, e.rad)))


def stack_norms(f: ExpertFactors) -> StackNorms:
    """Certified ‖P_i‖₂, ‖𝒫‖₂, ‖𝒫_c‖₂ as sqrt(λ_max(G_U C)) (rigorous.gram_pair_upper), with
    C_ij = Q_ij V_i V_jᵀ: Q = I per block, 1 for 𝒫, E·Π = E·I − 11ᵀ (integers, exact) for 𝒫_c."""
    require_instance("f", f, ExpertFactors)
    E, _, k = f.U.shape
    GU, GV = f.grams
    core = _core_stack_norms(f, Enclosure(GV.mid[:k, :k], GV.rad[:k, :k]))
    if core is not None:
        return core
    idx = torch.arange(E)
    bu, bv = _block(GU, E, k), _block(GV, E, k)
    diag_u = Enclosure(bu.mid[idx, idx], bu.rad[idx, idx])
    diag_v = Enclosure(bv.mid[idx, idx], bv.rad[idx, idx])
    e = f.scaled[2]
    per = scale_up_t(up_sqrt(gram_pair_upper(diag_u, diag_v)), e)  # (E,) ‖U_i V_i‖₂
    eye = torch.eye(E, dtype=F64)
    ones = torch.ones(k, k, dtype=F64)
    stack = scale_up_t(up_sqrt(gram_pair_upper(GU, hadamard(GV, torch.kron(eye, ones)))), e)
    if f.shared_v:  # P_i − P̄ = (U_i − Ū) V: centre the U_i first (no cancellation)
        lam_c = float(gram_pair_upper(f.centred_gram, hadamard(GV, torch.kron(eye, ones))))
    else:
        EPi = torch.kron(E * eye - torch.ones(E, E, dtype=F64), ones)
        lam_c = up(float(gram_pair_upper(GU, hadamard(GV, EPi))) / E)
    stack_c = min(scale_up(up(math.sqrt(lam_c)), e), float(stack))  # ‖𝒫(Π⊗I)‖₂ <= ‖𝒫‖₂
    experts = [certify(float(v)) for v in per]
    return StackNorms(max(experts), experts, certify(float(stack)), certify(stack_c))


def _core_stack_norms(f: ExpertFactors, CV: Enclosure) -> StackNorms | None:
    """CoMoL (P_i = s B M_i V): P_i P_iᵀ = s² B (M_i CV M_iᵀ) Bᵀ, CV = V Vᵀ, so ‖P_i‖₂² =
    λ_max(BᵀB · s² M_i CV M_iᵀ), ‖𝒫‖₂² = λ_max(BᵀB · s² Σ_i M_i CV M_iᵀ) and ‖𝒫_c‖₂² the same with
    M_i − M̄: r x r eigenproblems (rigorous.gram_pair_upper) instead of Ek x Ek. None when
    `core_parts` is."""
    parts, parts_c = f.core_parts(False), f.core_parts(True)
    if not f.shared_v or parts is None or parts_c is None:
        return None
    e = f.scaled[2]
    N = parts[1].mid.shape[0]
    ones = exact_t(torch.ones(1, N, dtype=F64))

    def grams(M: Enclosure, s: float) -> tuple[Enclosure, Enclosure]:
        C = scale(scale(matmul(matmul(M, CV), M.T), s), s)  # (N, r, r): s² M_i CV M_iᵀ
        flat = Enclosure(*(t.reshape(N, -1) for t in C.pair))
        total = matmul(ones, flat)  # (1, r²): the enclosed sum over i
        return C, Enclosure(*(t.view(C.mid.shape[1:]) for t in total.pair))

    (GB, M, s), (_, Mc, _) = parts, parts_c
    C, Csum = grams(M, s)
    per = scale_up_t(up_sqrt(gram_pair_upper(GB, C)), e)  # (N,) ‖P_i‖₂
    stack = scale_up_t(up_sqrt(gram_pair_upper(GB, Csum)), e)
    _, Ccsum = grams(Mc, s)
    stack_c = torch.minimum(scale_up_t(up_sqrt(gram_pair_upper(GB, Ccsum)), e), stack)
    experts = [certify(float(v)) for v in per]
    return StackNorms(max(experts), experts, certify(float(stack)), certify(float(stack_c)))


def centred_response_norms(f: ExpertFactors, X: Tensor, chunk: int = 4096) -> Tensor:
    """Certified ‖Y_c(x)‖₂ = ‖[(P_1 − P̄) x … (P_E − P̄) x]‖₂ per row of X (N, n), float64, (N,):
    ‖Y_c‖₂² = λ_max(Π Yᵀ Y Π) with (Yᵀ Y)_ij = z_iᵀ (G_U)_ij z_j, z_i = V_i x (k), all enclosed.
    The k x k blocks are contracted directly (the zeros of blockdiag(z_i) are never multiplied, so
    each product has k terms, not Ek). A shared V centres the U_i first (then Yᵀ Y is already
    centred: no cancellation)."""
    E, _, k = f.U.shape
    _, Vs, e = f.scaled
    Vt = (Vs[:1] if f.shared_v else Vs).reshape(-1, Vs.shape[-1]).T  # (n, E'k), exact floats
    G = f.centred_gram if f.shared_v else f.grams[0]  # (Ek, Ek), rows (i, p), columns (j, q)
    Gj = Enclosure(*(t.view(E * k, E, k).permute(1, 0, 2) for t in G.pair))  # (E_j, Ek, k)
    core = f.core_parts(True) if f.shared_v else None
    out = []
    for X_ in X.to("cpu", F64).split(chunk):
        b = X_.shape[0]
        if core is not None:
            out.append(scale_up_t(up_sqrt(sym_lmax_upper(_core_responses(core, X_, Vt))), e))
            continue
        zt = matmul_floats(X_, Vt)  # (b, E'k): (V_i x)ᵀ, E' = 1 for a shared V
        z = Enclosure(*(t.T.reshape(-1, k, b).expand(E, k, b) for t in zt.pair))  # (E, k, b)
        W = matmul(Gj, z)  # (E_j, Ek, b): (G_U)_{·j} z_j
        Wb = Enclosure(
            *(t.view(E, E, k, b).permute(3, 1, 2, 0) for t in W.pair)
        )  # (b, E_i, k, E_j)
        zb = Enclosure(*(t.permute(2, 0, 1).unsqueeze(-2) for t in z.pair))  # (b, E_i, 1, k)
        YtY = matmul(zb, Wb)  # (b, E_i, 1, E_j)
        YtY = Enclosure(*(t.squeeze(-2) for t in YtY.pair))  # (b, E, E)
        if not f.shared_v:
            YtY = centre_rows(centre_rows(YtY).T)  # Π Yᵀ Y Π
        out.append(scale_up_t(up_sqrt(sym_lmax_upper(YtY)), e))
    return torch.cat(out) if out else torch.zeros(0, dtype=F64)


def _core_responses(core: tuple[Enclosure, Enclosure, float], X: Tensor, Vt: Tensor) -> Enclosure:
    """CoMoL: Yᵀ Y (b, N, N) of the centred responses s B (M_i − M̄) z, z = V x, as
    s² w_iᵀ (BᵀB) w_j with w_i = (M_i − M̄) z: r x r products per input, none m or Ek long."""
    GB, Mc, s = core
    z = matmul_floats(X, Vt).T  # (r, b): V x
    w = matmul(Mc, z)  # (N, r, b)
    u = matmul(GB, w)  # (N, r, b): BᵀB w_j
    wb = Enclosure(*(t.permute(2, 0, 1) for t in w.pair))  # (b, N_i, r)
    ub = Enclosure(*(t.permute(2, 1, 0) for t in u.pair))  # (b, r, N_j)
    return scale(scale(matmul(wb, ub), s), s)


MIXED_MAX = 128  # Ek above which ‖ΔW(x)‖₂ per centre (Ek x Ek eigenproblems) is not computed
REFINE_CHUNK = 64


def mixed_norm_fn(f: ExpertFactors) -> Callable[[Tensor], Tensor] | None:
    """G (b, E) -> certified ‖ΔW‖₂ = ‖Σ_i g_i P_i‖₂ per row for the float weights g, float64 (None
    when Ek x Ek is too large): λ_max(G_g C) by rigorous.gram_pair_upper."""
    E, _, k = f.U.shape
    GU, GV = f.grams
    if f.shared_v:  # (Σ g_i U_i) V: k x k per row
        _, Vs, e = f.scaled
        V0 = exact(Vs[0])
        CV = matmul(V0, V0.T)
        # (Σ g_i U_i)ᵀ (Σ g_j U_j) = Σ_ij g_i g_j (G_U)_ij: the Gram blocks, (E², k²)
        blocks = Enclosure(
            *(t.view(E, k, E, k).permute(0, 2, 1, 3).reshape(E * E, k * k) for t in GU.pair)
        )

        def shared(g: Tensor) -> Tensor:
            ge = exact(g)
            gg = matmul(
                Enclosure(*(t.unsqueeze(-1) for t in ge.pair)),
                Enclosure(*(t.unsqueeze(-2) for t in ge.pair)),
            )
            w = Enclosure(*(t.reshape(-1, E * E) for t in gg.pair))  # (b, E²): g_i g_j
            Gg = matmul(w, blocks)  # (b, k²)
            Gg = Enclosure(*(t.view(-1, k, k) for t in Gg.pair))
            return scale_up_t(up_sqrt(gram_pair_upper(Gg, CV)), e)

        return shared
    if E * k > MIXED_MAX:
        return None

    def general(g: Tensor) -> Tensor:
        w = exact(g).mid.repeat_interleave(k, dim=-1)  # (b, Ek): g ⊗ 1_k (exact copies)
        C = hadamard(hadamard(GV, w.unsqueeze(-1)), w.unsqueeze(-2))  # D_g GV D_g
        return scale_up_t(up_sqrt(gram_pair_upper(GU, C)), f.scaled[2])

    return general


@dataclass(frozen=True)
class LocalBounds:
    """Local Lipschitz bounds of Δ on the balls B(c_k, R) (R = 0: the Jacobian at c_k)."""

    radius: float
    spec: float  # max_k K_spec(c_k)
    tight: float  # max_k K_tight(c_k)
    adaptive: float  # max_k K_adapt(c_k): the reported bound (<= tight <= spec)
    lower: float | None  # empirical: max Jacobian norm / pair ratio of Δ found in the balls
    gap_ratio: float | None  # lower / adaptive
    expert_max: float  # max_i ‖P_i‖₂
    stack: float  # ‖[P_1 … P_E]‖₂
    stack_centred: float  # ‖[P_i − P̄]‖₂
    centre_norm_max: float  # max_k ‖c_k‖
    centred_response_max: float  # max_k ‖Y_c(c_k)‖₂
    router_effective: float  # ½‖L‖₂
    router_centred: float  # ½‖Π L‖₂
    factors: str  # where the P_i factors came from
    samples: int = 0

    @property
    def upper(self) -> float:
        return self.adaptive

    def to_dict(self) -> dict[str, object]:
        return {"upper": self.upper, **self.__dict__}


def local_bounds(
    f: ExpertFactors, centres: Tensor, radius: float, L: Tensor | Sequence[LinearMap]
) -> tuple[LocalBounds, Tensor]:
    """The three local bounds (max over centres) and K_adapt per centre (N,). L: the router's logit
    map, as its factors (innermost first; certified without forming L) or as an (E, n) matrix taken
    as exact. Everything is an upper bound on the exact real value (rigorous.py), on the CPU."""
    require_instance("f", f, ExpertFactors)
    radius = require_real("radius", radius, minimum=0.0)
    require_tensor("centres", centres, ndim=2)
    if checks_enabled():  # off inside layer_report (its inputs are checked); a non-finite centre
        require_finite("centres", centres)  # would raise CertificateError below anyway
    n = f.V.shape[-1]
    if isinstance(L, Tensor):
        require_finite("L", require_tensor("L", L, ndim=2))
        L_shape, L_ok = tuple(L.shape), tuple(L.shape) == (f.num_experts, n)
    else:
        L_shape = (L[-1].out_features, L[0].in_features) if len(L) else ()
        L_ok = L_shape == (f.num_experts, n)
    if centres.shape[1] != n or not L_ok or centres.shape[0] == 0:
        raise ShapeError(
            f"centres.shape={tuple(centres.shape)}, L.shape={L_shape}: expected (N >= 1, {n}) "
            f"and ({f.num_experts}, {n})"
        )
    sn = stack_norms(f)
    eff, cen_norm, C_enc, e = router_terms(L)
    cen = half_up(cen_norm)
    X = centres.detach().to("cpu", F64)
    cn = row_norms_upper(X)  # (N,) certified ‖c_k‖
    yc = centred_response_norms(f, X)  # (N,)
    R = float(radius)
    spec = poly_up(sn.expert_max + eff * sn.stack * (cn + R))
    tight = torch.minimum(poly_up(sn.expert_max + cen * (yc + R * sn.stack_centred)), spec)
    # adaptive: the routing at the centres, enclosed (softmax ignores the mean logit: Π L suffices)
    Z = matmul_floats(X, C_enc.T)  # (N, E): 2^-e Π L x
    Z = Enclosure(scale_up_t(Z.mid.abs(), e) * Z.mid.sign(), scale_up_t(Z.rad, e))
    P, p_up, dp = softmax_error(Z)  # float softmax, upper bounds on p and on ‖p − p̂‖₁
    DR = poly_up(pair_distances(C_enc, e) * R)  # (E,) D_k R
    growth = torch.exp(DR.clamp(max=700.0)) * (1 + 8 * 2.0**-53)  # exp to 2 ulp
    jac = poly_up(p_up * growth).masked_fill(DR > 700.0, SOFTMAX_LIP)
    jac = jac.max(dim=-1).values.clamp(max=SOFTMAX_LIP)  # (N,)
    rest = poly_up(cen_norm * jac * (yc + R * sn.stack_centred))  # router term per centre
    # valid per centre (each form bounds the same constant, so the smallest is kept); refined below
    adaptive = torch.minimum(poly_up(sn.expert_max + rest), tight)
    mixed = mixed_norm_fn(f)
    if mixed is not None:
        # refine ‖ΔW(c_k)‖₂ in chunks, largest bound first, until no unrefined centre can beat the
        # best refined one (refined <= unrefined, so the maximum is then exact); the float routing
        # p̂ is off the exact one by ‖p − p̂‖₁, so ‖ΔW‖ <= ‖Σ p̂_i P_i‖ + ‖p − p̂‖₁ max_i ‖P_i‖
        best = -math.inf
        for chunk in torch.argsort(adaptive, descending=True).split(REFINE_CHUNK):
            if float(adaptive[chunk[0]]) <= best:
                break
            m = poly_up(mixed(P[chunk]) + dp[chunk] * sn.expert_max + cen * R * sn.stack_centred)
            refined = poly_up(torch.clamp(m, max=sn.expert_max) + rest[chunk])
            adaptive[chunk] = torch.minimum(refined, tight[chunk])
            best = max(best, float(adaptive[chunk].max()))
    rep = LocalBounds(
        radius=radius,
        spec=certify(float(spec.max())),
        tight=certify(float(tight.max())),
        adaptive=certify(float(adaptive.max())),
        lower=None,
        gap_ratio=None,
        expert_max=sn.expert_max,
        stack=sn.stack,
        stack_centred=sn.stack_centred,
        centre_norm_max=float(cn.max()),
        centred_response_max=float(yc.max()),
        router_effective=eff,
        router_centred=cen,
        factors=f.source,
    )
    return rep, adaptive
