"""The expert maps as low-rank factors, P_i = U_i V_i, exact float64 inputs for the rigorous local
bounds (local.py, norms.py), and the check that they are the maps the adapter applies.

Every architecture stores P_i = U_i V_i with U_i: m x k, V_i: k x n (k = r_e, or r for CoMoL):
MoELoRA U_i = s B_i, V_i = A_i; HydraLoRA U_i = s B_i, V_i = A; TalkLoRA U_i = s B_i K_i, V_i = A_(i);
CoMoL U_i = s B M_i, V_i = A: each architecture declares them (`Adapter.expert_factors`, exact float64;
the products are enclosed here). For other adapters the dense `expert_matrices()` are factored as P_i · I.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from moelora_core.adapter import Adapter
from moelora_core.adapter import ExpertFactors as DeclaredFactors
from moelora_core.errors import ConfigError, MoELoRAError, input_checks
from moelora_core.maps import Identity
from moelora_core.validate import require_instance

from .domain import require_adapter
from .rigorous import (
    Enclosure,
    centre_rows,
    exact,
    exact_t,
    matmul,
    matmul_floats,
    normalise,
    scale,
    scale_up_t,
)
from .spectral import F64

DENSE_FALLBACK_MAX = 4096  # E·min(m, n) allowed for the dense fallback factorisation
FACTOR_CHECK_RTOL = 1e-6  # factors vs the adapter's own Δ on probe inputs (float32 adapters)


@dataclass(frozen=True)
class ExpertFactors:
    """P_i = U_i V_i; U (E, m, k), V (E, k, n), float64. `U` holds the float midpoints, `U_rad` the
    radius of their enclosure (None: U is exact); `rad_fn`, when given instead, computes that radius
    on first use (the products' paths that work from `core` never need it)."""

    U: Tensor
    V: Tensor
    source: str
    shared_v: bool = False  # all V_i equal (HydraLoRA, CoMoL): ΔW(x) = (Σ_i g_i U_i) V
    U_rad: Tensor | None = None  # |U_exact − U| <= U_rad (U computed from the weights); None: exact
    core: tuple[Tensor, Tensor, float] | None = (
        None  # CoMoL: (B (m, r), M (N, r, r), s), U_i = s B M_i
    )
    rad_fn: Callable[[], Tensor] | None = None  # the radius of U, computed lazily

    @cached_property
    def radius(self) -> Tensor:
        """|U_exact − U| <= radius, entrywise."""
        if self.U_rad is not None:
            return self.U_rad
        return self.rad_fn() if self.rad_fn is not None else torch.zeros_like(self.U)

    @cached_property
    def _u_exponent(self) -> tuple[Tensor, int]:
        return normalise(self.U)

    @cached_property
    def _v_scaling(self) -> tuple[Tensor, int]:
        Vs, ev = normalise(self.V[:1] if self.shared_v else self.V)  # a shared V: one copy
        return Vs.expand_as(self.V), ev

    @property
    def v_scaled(self) -> tuple[Tensor, int]:
        """(V', e) with U_i V_i = 2^e U'_i V'_i (`scaled` without forming the enclosure of U')."""
        Vs, ev = self._v_scaling
        return Vs, self._u_exponent[1] + ev

    @cached_property
    def _u_scaled(self) -> Enclosure:
        Us, eu = self._u_exponent
        rad = self.radius
        return Enclosure(Us, scale_up_t(rad, -eu) if eu else rad)

    @property
    def scaled(self) -> tuple[Enclosure, Tensor, int]:
        """(U', V', e) with U_i V_i = 2^e U'_i V'_i: U (with its rounding) and V scaled by exact
        powers of 2 (the radius rounded upwards), so that Gram products stay in range."""
        Vs, e = self.v_scaled
        return self._u_scaled, Vs, e

    def core_parts(self, centred: bool) -> tuple[Enclosure, Enclosure, float] | None:
        """CoMoL (U_i = s B M_i): (BᵀB, M, s) for the scaled U'_i = s (2^-e_u B) M_i, enclosed, with
        M_i − M̄ when centred (then U'_i − Ū' = s (2^-e_u B)(M_i − M̄) exactly); None without the
        factors or when 2^-e_u B is not exact."""
        if self.core is None:
            return None
        B, M, s = self.core
        eu = self._u_exponent[1]
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
        V, _ = self.v_scaled
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
            Ue = self._u_scaled
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
    """Low-rank factors of the expert maps P_i, from what the adapter declares
    (`Adapter.expert_factors`), else from its dense `expert_matrices()` (small shapes only)."""
    adapter = require_adapter(adapter)
    with torch.no_grad():
        declared = adapter.expert_factors()
        if declared is not None:
            return from_declared(declared, getattr(adapter, "family", type(adapter).__name__))
        return _dense_factors(adapter)


def from_declared(d: DeclaredFactors, source: str) -> ExpertFactors:
    """U_i = s (L_1 ⋯ L_k)_i enclosed (rigorous products; the radius is `U_rad`) and V_i = R_i, from
    the adapter's exact factors. A shared right side (leading 1) sets `shared_v`; left factors
    (B shared, M_i per expert) with a shared right side are CoMoL's cores (`core`)."""
    if not d.left:
        raise ConfigError(f"expert factors of {source}: left=(): expected at least one factor")
    E = max(int(t.shape[0]) for t in (*d.left, d.right))
    shared_v = int(d.right.shape[0]) == 1
    V = d.right.detach().to("cpu", F64).expand(E, -1, -1)
    if len(d.left) == 2 and shared_v and d.left[0].shape[0] == 1 and d.left[1].shape[0] == E:
        B, M = exact(d.left[0]).mid, exact(d.left[1]).mid  # (1, m, r), (N, r, r)
        U = d.scale * (B @ M)  # the enclosure's midpoints (rigorous.matmul, rigorous.scale)

        def radius() -> Tensor:
            return scale(matmul(exact_t(B), exact_t(M)), d.scale).rad

        core = (B[0], M, d.scale)  # (m, r), (N, r, r), s
        return ExpertFactors(U, V, source, shared_v=True, core=core, rad_fn=radius)
    acc = exact(d.left[0])
    for f in d.left[1:]:
        acc = matmul(acc, exact(f))  # (E or 1, m, ·)
    Us = scale(acc, d.scale)
    U, U_rad = Us.mid.expand(E, -1, -1), Us.rad.expand(E, -1, -1)
    return ExpertFactors(U, V, source, shared_v=shared_v, U_rad=U_rad)


def _dense_factors(a: Adapter) -> ExpertFactors:
    """P_i · I (or I · P_i, the smaller identity) from the dense (E, m, n) `expert_matrices()`;
    ConfigError when E·min(m, n) > DENSE_FALLBACK_MAX (or NotLinearError, for a non-linear Δ)."""
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
