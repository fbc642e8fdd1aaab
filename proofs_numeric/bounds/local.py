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

‖ΔW(x)‖₂ per centre is an eigenproblem; a cheap bound first: ΔW(x) − P̄ = Σ_i (p_i − 1/E)(P_i − P̄) =
𝒫_c ((p − 1/E) ⊗ I), so ‖ΔW(x)‖₂ <= ‖P̄‖₂ + ‖p − 1/E‖₂ ‖𝒫_c‖₂ (small for near-uniform routing). The
eigenproblems are then solved only for the centres whose bound could still be the largest.

Computation (factors.py, norms.py): from the low-rank factors P_i = U_i V_i, certified, without forming
the m x n matrices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from moelora_core.errors import ShapeError, checks_enabled
from moelora_core.maps import LinearMap
from moelora_core.validate import require_finite, require_instance, require_real, require_tensor

from .certified import pair_distances, router_terms
from .factors import ExpertFactors
from .norms import StackNorms, centred_response_norms, mixed_norm_fn, stack_norms
from .rigorous import (
    Enclosure,
    centred_rows_norm_upper,
    half_up,
    matmul_floats,
    poly_up,
    row_norms_upper,
    scale_t,
    scale_up_t,
    softmax_error,
)
from .spectral import F64, SOFTMAX_LIP, certify

REFINE_CHUNK = 64  # centres per refinement step of ‖ΔW(c_k)‖₂


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


@dataclass(frozen=True)
class Centres:
    """Centres as exact float64 CPU rows (N, n) with their certified norms (N,): computed once and
    shared by every layer that reads the same inputs (`model_report`)."""

    X: Tensor
    norms: Tensor
    abs_X: Tensor  # |X|, for the enclosed products X Vᵀ and X (Π L)ᵀ

    @classmethod
    def of(cls, centres: Tensor) -> Centres:
        X = centres.detach().to("cpu", F64)
        return cls(X, row_norms_upper(X), X.abs())


def local_bounds(
    f: ExpertFactors, centres: Tensor | Centres, radius: float, L: Tensor | Sequence[LinearMap]
) -> tuple[LocalBounds, Tensor]:
    """The three local bounds (max over centres) and K_adapt per centre (N,). L: the router's logit
    map, as its factors (innermost first; certified without forming L) or as an (E, n) matrix taken
    as exact. Everything is an upper bound on the exact real value (rigorous.py), on the CPU."""
    require_instance("f", f, ExpertFactors)
    radius = require_real("radius", radius, minimum=0.0)
    _check_shapes(f, centres.X if isinstance(centres, Centres) else centres, L)
    sn = stack_norms(f)
    eff, cen_norm, C_enc, e = router_terms(L)
    cen = half_up(cen_norm)
    c = centres if isinstance(centres, Centres) else Centres.of(centres)
    X, cn = c.X, c.norms  # (N, n) float64, (N,) certified ‖c_k‖
    yc = centred_response_norms(f, X, abs_X=c.abs_X)  # (N,)
    R = float(radius)
    spec = poly_up(sn.expert_max + eff * sn.stack * (cn + R))
    tight = torch.minimum(poly_up(sn.expert_max + cen * (yc + R * sn.stack_centred)), spec)
    # adaptive: the routing at the centres, enclosed (softmax ignores the mean logit: Π L suffices)
    Z = matmul_floats(X, C_enc.T, c.abs_X)  # (N, E): 2^-e Π L x
    Z = Enclosure(scale_t(Z.mid, e), scale_up_t(Z.rad, e))  # the midpoint scaled exactly
    P, p_up, dp = softmax_error(Z)  # float softmax, upper bounds on p and on ‖p − p̂‖₁
    DR = poly_up(pair_distances(C_enc, e) * R)  # (E,) D_k R
    growth = torch.exp(DR.clamp(max=700.0)) * (1 + 8 * 2.0**-53)  # exp to 2 ulp
    jac = poly_up(p_up * growth).masked_fill(DR > 700.0, SOFTMAX_LIP)
    jac = jac.max(dim=-1).values.clamp(max=SOFTMAX_LIP)  # (N,)
    rest = poly_up(cen_norm * jac * (yc + R * sn.stack_centred))  # router term per centre
    # ‖ΔW(c)‖₂ <= ‖P̄‖₂ + ‖p − 1/E‖₂ ‖𝒫_c‖₂ (ΔW(c) − P̄ = Σ_i (p_i − 1/E)(P_i − P̄)): cheap, per centre
    dev = centred_rows_norm_upper(P)  # ‖p̂ − 1/E‖₂; ‖p − 1/E‖₂ <= that + ‖p − p̂‖₁
    drift = cen * R * sn.stack_centred  # ‖ΔW(y) − ΔW(c)‖₂ on the ball (2 roundings, in poly_up)
    cheap = poly_up(sn.mean + (dev + dp) * sn.stack_centred + drift)
    # valid per centre (each form bounds the same constant, so the smallest is kept); refined below
    adaptive = torch.minimum(poly_up(torch.clamp(cheap, max=sn.expert_max) + rest), tight)
    _refine(f, adaptive, rest, P, dp, sn, drift)
    rep = LocalBounds(
        radius=radius, spec=certify(float(spec.max())), tight=certify(float(tight.max())),
        adaptive=certify(float(adaptive.max())), lower=None, gap_ratio=None,
        expert_max=sn.expert_max, stack=sn.stack, stack_centred=sn.stack_centred,
        centre_norm_max=float(cn.max()), centred_response_max=float(yc.max()),
        router_effective=eff, router_centred=cen, factors=f.source,
    )  # fmt: skip
    return rep, adaptive


def _check_shapes(f: ExpertFactors, centres: Tensor, L: Tensor | Sequence[LinearMap]) -> None:
    """centres (N >= 1, n) finite; L (E, n) as a matrix or as factors; else ShapeError."""
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


def _refine(
    f: ExpertFactors, adaptive: Tensor, rest: Tensor, P: Tensor, dp: Tensor, sn: StackNorms,
    growth: float,
) -> None:  # fmt: skip
    """Refine ‖ΔW(c_k)‖₂ in `adaptive` (in place) in chunks, largest bound first, until no unrefined
    centre can beat the best refined one (refined <= unrefined, so the maximum is then exact); the
    float routing p̂ is off the exact one by ‖p − p̂‖₁, so ‖ΔW‖ <= ‖Σ p̂_i P_i‖ + ‖p − p̂‖₁ max_i ‖P_i‖;
    `growth` = ½‖Π L‖₂ R ‖𝒫_c‖₂ bounds the change of ΔW over the ball."""
    mixed = mixed_norm_fn(f)
    if mixed is None:
        return
    best = -math.inf
    for chunk in torch.argsort(adaptive, descending=True).split(REFINE_CHUNK):
        if float(adaptive[chunk[0]]) <= best:
            break
        m = poly_up(mixed(P[chunk]) + dp[chunk] * sn.expert_max + growth)
        refined = poly_up(torch.clamp(m, max=sn.expert_max) + rest[chunk])
        adaptive[chunk] = torch.minimum(refined, adaptive[chunk])  # refined <= unrefined
        best = max(best, float(adaptive[chunk].max()))
