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
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from moelora_core.adapter import Adapter
from moelora_core.comol import CoMoL
from moelora_core.errors import ConfigError, MoELoRAError, ShapeError, input_checks
from moelora_core.hydralora import HydraLoRA
from moelora_core.moelora import MoELoRA
from moelora_core.talklora import TalkLoRA
from moelora_core.validate import require_finite, require_instance, require_real, require_tensor

from .domain import require_adapter
from .spectral import (
    F64,
    SOFTMAX_LIP,
    centring,
    certify,
    gram_pair_norm,
    lambda_max_upper,
    psd_sqrt,
)

DENSE_FALLBACK_MAX = 4096  # E·min(m, n) allowed for the dense fallback factorisation
FACTOR_CHECK_RTOL = 1e-6  # factors vs the adapter's own Δ on probe inputs (float32 adapters)


@dataclass(frozen=True)
class ExpertFactors:
    """P_i = U_i V_i; U (E, m, k), V (E, k, n), float64."""

    U: Tensor
    V: Tensor
    source: str
    shared_v: bool = False  # all V_i equal (HydraLoRA, CoMoL): ΔW(x) = (Σ_i g_i U_i) V

    @property
    def num_experts(self) -> int:
        return int(self.U.shape[0])

    def dense(self) -> Tensor:
        """(E, m, n): only for small shapes (tests)."""
        return self.U @ self.V

    @cached_property
    def grams(self) -> tuple[Tensor, Tensor]:
        """G_U = U_catᵀ U_cat and G_V = V_st V_stᵀ (Ek x Ek each), computed once."""
        E, m, k = self.U.shape
        Ucat = self.U.permute(1, 0, 2).reshape(m, E * k)  # (m, Ek)
        if self.shared_v:
            GV = torch.kron(
                torch.ones(E, E, dtype=F64, device=self.V.device), self.V[0] @ self.V[0].T
            )
        else:
            Vst = self.V.reshape(E * k, -1)  # (Ek, n)
            GV = Vst @ Vst.T
        return Ucat.T @ Ucat, GV


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
            .to(F64)
            .unflatten(1, (c.num_experts, c.expert_rank))
            .permute(1, 0, 2)
        )
        V = a.A.weight.detach().to("cpu", F64).unflatten(0, (c.num_experts, c.expert_rank))
        return ExpertFactors(c.scale * U, V, "moelora")
    if isinstance(a, HydraLoRA):
        h = a.config
        U = (
            a.B.weight.detach()
            .to(F64)
            .unflatten(1, (h.num_experts, h.expert_rank))
            .permute(1, 0, 2)
        )
        V = a.A.weight.detach().to("cpu", F64).expand(h.num_experts, -1, -1)
        return ExpertFactors(h.scale * U, V, "hydralora", shared_v=True)
    if isinstance(a, TalkLoRA):
        t = a.config
        Bh = (
            a.B.weight.detach()
            .to("cpu", F64)
            .unflatten(1, (t.num_experts, t.head_dim))
            .permute(1, 0, 2)
        )
        U = Bh @ a.K.weight.detach().to("cpu", F64)  # (E, m, d): B_i K_i
        V = a.A.weight.detach().to("cpu", F64).unflatten(0, (t.num_experts, t.head_dim))
        return ExpertFactors(t.scale * U, V, "talklora")
    if isinstance(a, CoMoL):
        o = a.config
        U = torch.einsum(
            "mi,nij->nmj", a.B.weight.detach().to("cpu", F64), a.cores.detach().to("cpu", F64)
        )  # (N, m, r)
        V = a.A.weight.detach().to("cpu", F64).expand(o.num_cores, -1, -1)
        return ExpertFactors(o.scale * U, V, "comol", shared_v=True)
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

    Raises MoELoRAError above FACTOR_CHECK_RTOL (float32) / 1e-10 (float64): the factors the bound
    is computed from must be the maps the adapter applies. A float16/bfloat16/float32 adapter is
    compared through a float64 copy (same weights, exactly converted), so half precision is not
    refused for its own rounding.
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
    err = float((ours - delta).abs().max()) / (1.0 + float(delta.abs().max()))
    tol = 1e-10 if ref.dtype == F64 else FACTOR_CHECK_RTOL * 10
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


def _gram_blocks(f: ExpertFactors) -> tuple[Tensor, Tensor]:
    return f.grams


def stack_norms(f: ExpertFactors) -> StackNorms:
    require_instance("f", f, ExpertFactors)
    E, _, k = f.U.shape
    GU, GV = _gram_blocks(f)
    GU4, GV4 = GU.view(E, k, E, k), GV.view(E, k, E, k)
    idx = torch.arange(E)
    per = gram_pair_norm(GU4[idx, :, idx, :], GV4[idx, :, idx, :])  # (E,) ‖U_i V_i‖₂
    eye = torch.eye(E, dtype=F64, device=GU.device)
    Pi = centring(E, device=GU.device)
    block = torch.kron(eye, torch.ones(k, k, dtype=F64, device=GU.device))
    stack = gram_pair_norm(GU, block * GV)
    stack_c = gram_pair_norm(GU, torch.kron(Pi, torch.ones(k, k, dtype=F64, device=GU.device)) * GV)
    experts = [certify(float(v)) for v in per]
    return StackNorms(max(experts), experts, certify(float(stack)), certify(float(stack_c)))


def centred_response_norms(f: ExpertFactors, X: Tensor, chunk: int = 4096) -> Tensor:
    """‖Y_c(x)‖₂ = ‖[(P_1 − P̄) x … (P_E − P̄) x]‖₂ per row of X (N, n), float64, (N,)."""
    E, _, k = f.U.shape
    GU, _ = _gram_blocks(f)
    GU4 = GU.view(E, k, E, k)
    Pi = centring(E, device=GU.device)
    out = []
    for X_ in X.to("cpu", F64).split(chunk):
        if f.shared_v:  # one V for all experts: V x once
            z = (X_ @ f.V[0].T).unsqueeze(1).expand(-1, E, -1)  # (b, E, k)
        else:
            z = torch.einsum("ekn,bn->bek", f.V, X_)  # (b, E, k): V_i x
        YtY = torch.einsum("bek,ekfl,bfl->bef", z, GU4, z)  # (b, E, E)
        out.append(lambda_max_upper(Pi @ YtY @ Pi).sqrt())
    return torch.cat(out) if out else torch.zeros(0, dtype=F64)


MIXED_MAX = 128  # Ek above which ‖ΔW(x)‖₂ per centre (Ek x Ek eigenproblems) is not computed
REFINE_CHUNK = 64


def mixed_norm_fn(f: ExpertFactors) -> Callable[[Tensor], Tensor] | None:
    """G (b, E) -> ‖ΔW‖₂ = ‖Σ_i g_i P_i‖₂ per row, float64 (None when Ek x Ek is too large)."""
    E, _, k = f.U.shape
    GU, GV = _gram_blocks(f)
    GU4 = GU.view(E, k, E, k)
    if f.shared_v:  # (Σ g_i U_i) V: k x k per row
        SV = psd_sqrt(f.V[0] @ f.V[0].T)

        def shared(g: Tensor) -> Tensor:
            Gram = torch.einsum("bi,bj,ikjl->bkl", g, g, GU4)  # (b, k, k) = U_gᵀ U_g
            return lambda_max_upper(SV @ Gram @ SV).sqrt()

        return shared
    if E * k > MIXED_MAX:
        return None
    SU = psd_sqrt(GU)

    def general(g: Tensor) -> Tensor:
        w = g.repeat_interleave(k, dim=-1)  # (b, Ek): g ⊗ 1_k
        C = GV * (w.unsqueeze(-1) * w.unsqueeze(-2))  # D_g GV D_g
        return lambda_max_upper(SU @ C @ SU).sqrt()

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
    f: ExpertFactors, centres: Tensor, radius: float, L: Tensor
) -> tuple[LocalBounds, Tensor]:
    """The three local bounds (max over centres) and K_adapt per centre (N,); L: (E, n) float64.
    All of it runs on the CPU in float64 (the centres are copied there)."""
    require_instance("f", f, ExpertFactors)
    radius = require_real("radius", radius, minimum=0.0)
    require_finite("centres", require_tensor("centres", centres, ndim=2))
    require_finite("L", require_tensor("L", L, ndim=2))
    n = f.V.shape[-1]
    if centres.shape[1] != n or L.shape != (f.num_experts, n) or centres.shape[0] == 0:
        raise ShapeError(
            f"centres.shape={tuple(centres.shape)}, L.shape={tuple(L.shape)}: expected (N >= 1, {n}) "
            f"and ({f.num_experts}, {n})"
        )
    sn = stack_norms(f)
    E = L.shape[0]
    PL = centring(E, device=L.device) @ L
    eff = SOFTMAX_LIP * certify(float(torch.linalg.matrix_norm(L, ord=2)))
    cen_norm = certify(float(torch.linalg.matrix_norm(PL, ord=2)))
    cen = SOFTMAX_LIP * cen_norm
    X = centres.detach().to("cpu", F64)
    cn = torch.linalg.vector_norm(X, dim=-1)  # (N,)
    yc = centred_response_norms(f, X)  # (N,)
    spec = sn.expert_max + eff * sn.stack * (cn + radius)
    tight = sn.expert_max + cen * (yc + radius * sn.stack_centred)
    # adaptive: routing at the centres in float64, p_k e^{D_k R} capped at ½
    P = torch.softmax(X @ L.T, dim=-1)  # (N, E)
    G = PL @ PL.T
    D = (G.diagonal().unsqueeze(0) + G.diagonal().unsqueeze(1) - 2 * G).clamp_min(0).sqrt()
    growth = torch.exp(torch.clamp(D.max(dim=1).values * radius, max=700.0))  # (E,)
    jac = torch.clamp((P * growth).max(dim=-1).values, max=SOFTMAX_LIP)  # (N,)
    rest = cen_norm * jac * (yc + radius * sn.stack_centred)  # router term per centre
    adaptive = sn.expert_max + rest  # valid per centre; refined below where it can matter
    mixed = mixed_norm_fn(f)
    if mixed is not None:
        # refine ‖ΔW(c_k)‖₂ in chunks, largest bound first, until no unrefined centre can beat the
        # best refined one (refined <= unrefined, so the maximum is then exact)
        best = -math.inf
        for chunk in torch.argsort(adaptive, descending=True).split(REFINE_CHUNK):
            if float(adaptive[chunk[0]]) <= best:
                break
            m = mixed(P[chunk]) * (1 + 1e-12) + cen * radius * sn.stack_centred
            adaptive[chunk] = torch.clamp(m, max=sn.expert_max) + rest[chunk]
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
