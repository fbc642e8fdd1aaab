"""Certified upper bounds on the router's Lipschitz constant, from its logit map's factors.

The router computes g(x) = softmax(L x) with L = F_K ⋯ F_1 (E x n), the factors of
`adapter.router_logit_map().factors()` (innermost first): [I, W_g] for an input router, [A, W_r] for a
latent MoELoRA, [A, T⊗I, W_r] for TalkLoRA, [A, W_c] for the CoMoL core router. The Jacobian is
J_g(x) = J(p) L with J(p) = diag(p) − ppᵀ, and J(p) = J(p) Π (Π = I − 11ᵀ/E), so for all x, x':

    ‖g(x) − g(x')‖ ≤ Lip ‖x − x'‖,   Lip ≤ ½ ‖Π L‖₂ ≤ ½ ‖L‖₂ ≤ ½ ∏_k ‖F_k‖₂
                                        (centred)   (effective)  (product)

(softmax constant ½ from `spectral.SOFTMAX_LIP`; Lipschitz = sup of the Jacobian norm on the convex
R^n). For TalkLoRA the product form is ½ ‖W_r‖₂ ‖T‖₂ ‖A‖₂ (‖T ⊗ I‖₂ = ‖T‖₂) and the effective form
½ ‖W_r (T ⊗ I) A‖₂; for the CoMoL core router ½ ‖W_c A‖₂.

Latent routers also have a head-perturbation map h ↦ g = softmax(H h), H = F_K ⋯ F_2 (the factors
after the latent map F_1 = A): TalkLoRA H = W_r (T ⊗ I), latent MoELoRA H = W_r, CoMoL H = W_c. The
same three forms bound it. For TalkLoRA a perturbation δ confined to head j gives (T ⊗ I)δ = (T e_j) ⊗ δ_j,
so it is bounded by ½ ‖W_r‖₂ ‖T e_j‖₂ ‖δ‖ (product) and ½ ‖Π W_r ((T e_j) ⊗ I_d)‖₂ ‖δ‖ (centred).

Attainability (used to say when a bound cannot be tight): ‖J(p) Π L‖₂ = ½ ‖Π L‖₂ needs J(p) to have
eigenvalue ½ on a top left singular vector of Π L, i.e. p = (e_i + e_j)/2 and u = (e_i − e_j)/√2. So
sup_x ‖J_g(x)‖₂ ≥ ½ max_{i<j} ‖l_i − l_j‖/√2 = a · ½‖Π L‖₂ when every centred logit vector is reachable
(rank Π L = E − 1; approached as z_i = z_j → +∞ relative to the others), where a ∈ [0, 1] is the pair
alignment; and a < 1 means the centred bound is not attained (strictly).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from moelora_core.adapter import Adapter, HasTalking
from moelora_core.errors import ArgumentTypeError
from moelora_core.maps import BlockDiagonal, Dense, Identity, KronIdentity, LinearMap

from ..pairwise import farthest_pair
from .domain import Domain, NoRouterError, require_routed
from .rigorous import (
    Enclosure,
    centre_rows,
    exact,
    exact_t,
    frob_upper,
    half_up,
    matmul,
    norm_upper,
    normalise,
    scale_up,
    scale_up_t,
    sub,
    up,
)
from .spectral import F64, certify, spectral_norm

RANK_RTOL = 1e-9  # relative singular-value threshold for rank(Π L)
ALIGN_TOL = 1e-9  # pair alignment below 1 − ALIGN_TOL: the centred bound is not attained


def factor_name(f: LinearMap) -> str:
    if isinstance(f, KronIdentity):
        return f"{factor_name(f.talk)}⊗I"
    if isinstance(f, Identity):
        return "I"
    if isinstance(f, Dense | BlockDiagonal):
        return f.name
    return type(f).__name__


def logit_factors(adapter: Adapter) -> list[LinearMap]:
    """The factors of the router's logit map x -> L x, innermost first."""
    lm = adapter.router_logit_map()
    if lm is None or getattr(adapter, "router", None) is None:
        raise NoRouterError(f"adapter={type(adapter).__name__}: has no router")
    return lm.factors()


def is_latent(factors: Sequence[LinearMap]) -> bool:
    """A latent router reads h = F_1 x for a non-identity first factor (A)."""
    return len(factors) > 1 and not isinstance(factors[0], Identity)


def effective_matrix(factors: Sequence[LinearMap]) -> Tensor:
    """L = F_K ⋯ F_1 in float64, multiplied outermost first (E rows throughout); identities skipped."""
    M: Tensor | None = None
    for f in reversed(factors):
        if isinstance(f, Identity):
            continue
        D = f.dense().detach().to("cpu", F64)
        M = D if M is None else M @ D
    if M is None:  # only identities: L = I
        return torch.eye(factors[0].in_features, dtype=F64)
    return M


@dataclass(frozen=True)
class RouterBounds:
    """The three certified forms for p = softmax(L v), with the norms they are made of."""

    num_experts: int
    product: float  # ½ ∏ ‖F_k‖₂
    effective: float  # ½ ‖L‖₂
    centred: float  # ½ ‖Π L‖₂
    factor_norms: dict[str, float]
    logit_norm: float  # ‖L‖₂
    centred_norm: float  # ‖Π L‖₂
    centred_rank: int  # rank(Π L); E − 1 means every centred logit vector is reachable
    pair_alignment: float  # a = max_ij ‖l_i − l_j‖ / (√2 ‖Π L‖₂) (1 when Π L = 0)
    best_pair: tuple[int, int] | None
    methods: dict[str, str] = field(default_factory=dict)

    @property
    def upper(self) -> float:
        """The tightest certified form (the centred one)."""
        return self.centred

    def to_dict(self) -> dict[str, object]:
        return {
            "product": self.product,
            "effective": self.effective,
            "centred": self.centred,
            "factor_norms": dict(self.factor_norms),
            "logit_norm": self.logit_norm,
            "centred_norm": self.centred_norm,
            "centred_rank": self.centred_rank,
            "pair_alignment": self.pair_alignment,
            "best_pair": list(self.best_pair) if self.best_pair is not None else None,
            "methods": dict(self.methods),
        }


def pair_alignment(PL: Tensor, centred_norm: float) -> tuple[float, tuple[int, int] | None]:
    """a = max_{i<j} ‖l_i − l_j‖ / (√2 ‖Π L‖₂) and the maximising pair (rows l_i of L or of Π L)."""
    E = PL.shape[0]
    if E < 2 or centred_norm == 0.0:
        return 1.0, None
    i, j, d2 = farthest_pair(PL)  # ‖l_i − l_j‖², i < j
    a = math.sqrt(max(float(d2[i, j]), 0.0) / 2.0) / centred_norm
    return min(a, 1.0), (i, j)


def dense_chain(factors: Sequence[LinearMap]) -> list[Tensor]:
    """The non-identity factors as dense matrices, innermost first ([I] for only identities)."""
    mats = [f.dense() for f in factors if not isinstance(f, Identity)]
    return mats or [torch.eye(factors[0].in_features, dtype=F64)]


def chain_enclosure(mats: Sequence[Tensor], *, centred: bool) -> tuple[Enclosure, int]:
    """Enclosure of 2^-e (Π) M_K ⋯ M_1 (matrices innermost first) and e: each factor scaled exactly
    by a power of 2, the outermost one's rows centred before any product (no cancellation), then
    multiplied outermost first with the rounding of every product enclosed (rigorous.py)."""
    scaled = [normalise(M) for M in mats]
    top = exact(scaled[-1][0])
    enc = centre_rows(top) if centred else top
    for M, _ in reversed(scaled[:-1]):
        enc = matmul(enc, exact_t(M))
    return enc, sum(e for _, e in scaled)


def certified_norm(enc: Enclosure, e: int) -> float:
    """An upper bound on ‖M‖₂ for every member M of 2^e · enc (CertificateError on overflow)."""
    return certify(scale_up(float(norm_upper(enc)), e))


def bounds_for(factors: Sequence[LinearMap]) -> RouterBounds:
    """Certified forms for v ↦ softmax(F_K ⋯ F_1 v), upper bounds on the exact real values for the
    float weights (docs/bounds.md, "Why the certified numbers are upper bounds in floating point")."""
    norms: dict[str, float] = {}
    methods: dict[str, str] = {}
    prod = 1.0
    for f in factors:
        if isinstance(f, Identity):
            continue
        W = f.talk.dense() if isinstance(f, KronIdentity) else f.dense()  # ‖T ⊗ I‖₂ = ‖T‖₂
        s = spectral_norm(W, factor_name(f))
        key = factor_name(f.talk) if isinstance(f, KronIdentity) else factor_name(f)
        norms[key], methods[key] = s.upper, s.method
        prod = up(prod * s.upper)
    mats = dense_chain(factors)
    L_enc, e = chain_enclosure(mats, centred=False)
    C_enc, _ = chain_enclosure(mats, centred=True)
    E = C_enc.mid.shape[0]
    product = certify(half_up(prod))  # ½ ∏ ‖F_k‖₂
    logit_norm = min(certified_norm(L_enc, e), 2 * product)  # ‖L‖₂ <= ∏‖F_k‖₂
    centred_norm = min(certified_norm(C_enc, e), logit_norm)  # ‖ΠL‖₂ <= ‖L‖₂
    methods["L"], methods["ΠL"] = "enclosure", "enclosure"
    PL = C_enc.mid  # 2^-e Π L to rounding (rank and alignment are scale-free)
    sv = torch.linalg.svdvals(PL)  # E values (E small): the norm and the rank at once
    top = float(sv[0]) if sv.numel() else 0.0
    rank = int((sv > RANK_RTOL * top).sum()) if top > 0 else 0
    a, pair = pair_alignment(PL, top)
    return RouterBounds(
        num_experts=E,
        product=product,
        effective=half_up(logit_norm),
        centred=half_up(centred_norm),
        factor_norms=norms,
        logit_norm=logit_norm,
        centred_norm=centred_norm,
        centred_rank=rank,
        pair_alignment=a,
        best_pair=pair,
        methods=methods,
    )


def router_terms(L: Tensor | Sequence[LinearMap]) -> tuple[float, float, Enclosure, int]:
    """Certified ½‖L‖₂, ‖Π L‖₂ and the enclosure (with exponent e) of 2^-e Π L, from the logit
    map's factors (rows centred before any product) or from L itself, taken as exact."""
    mats = [L] if isinstance(L, Tensor) else dense_chain(L)
    L_enc, e = chain_enclosure(mats, centred=False)
    C_enc, _ = chain_enclosure(mats, centred=True)
    logit_norm = certified_norm(L_enc, e)
    return half_up(logit_norm), min(certified_norm(C_enc, e), logit_norm), C_enc, e


def pair_distances(C: Enclosure, e: int) -> Tensor:
    """Certified D_k = max_j ‖l_k − l_j‖₂ (E,) from the enclosure of 2^-e Π L (rows l_k − l̄)."""
    diff = sub(
        Enclosure(C.mid.unsqueeze(1), C.rad.unsqueeze(1)),
        Enclosure(C.mid.unsqueeze(0), C.rad.unsqueeze(0)),
    )  # (E, E, n)
    norms = frob_upper(Enclosure(diff.mid.unsqueeze(-2), diff.rad.unsqueeze(-2)))  # (E, E)
    return scale_up_t(norms.max(dim=1).values, e)


def router_bounds(adapter: Adapter) -> RouterBounds:
    """Bounds on the Lipschitz constant of x ↦ g(x)."""
    adapter = require_routed(adapter)
    return bounds_for(logit_factors(adapter))


def head_bounds(adapter: Adapter) -> RouterBounds | None:
    """Bounds on the Lipschitz constant of h ↦ g for a latent router (None for an input router)."""
    adapter = require_routed(adapter)
    factors = logit_factors(adapter)
    if not is_latent(factors):
        return None
    return bounds_for(factors[1:])


@dataclass(frozen=True)
class TalkBounds:
    """TalkLoRA's talking module seen through the head-perturbation bound."""

    talk_norm: float  # ‖T‖₂; the head bound relative to T = I (fixed W_r)
    attenuation: list[float]  # ‖T e_j‖₂: the factor on a perturbation confined to head j
    head_product: list[float]  # ½ ‖W_r‖₂ ‖T e_j‖₂
    head_centred: list[float]  # ½ ‖Π W_r ((T e_j) ⊗ I_d)‖₂
    amplifies: bool  # ‖T‖₂ > 1

    def to_dict(self) -> dict[str, object]:
        return {
            "talk_norm": self.talk_norm,
            "attenuation": list(self.attenuation),
            "head_product": list(self.head_product),
            "head_centred": list(self.head_centred),
            "amplifies": self.amplifies,
        }


def talk_bounds(t: Adapter) -> TalkBounds:
    """The per-head bounds of an adapter with a talking module T (`HasTalking`: TalkLoRA): ‖T‖₂,
    ‖T e_j‖₂ and the head-j bounds, for the router W_r over E heads of size d = r / E."""
    t = require_routed(t)
    if not isinstance(t, HasTalking):
        raise ArgumentTypeError(
            f"t={type(t).__name__}: expected a TalkLoRA or another adapter with a talking module "
            "(`.talking`, moelora_core.adapter.HasTalking)"
        )
    T = t.talking.dense().detach().to("cpu", F64)  # (E, E)
    W = logit_factors(t)[-1].dense().detach().to("cpu", F64)  # W_r: (E, E d)
    E = T.shape[0]
    d = W.shape[1] // E
    talk_norm = spectral_norm(T, "T").lower  # ‖T‖₂ as measured (compared with 1)
    att = torch.linalg.vector_norm(T, dim=0)  # (E,) column norms ‖T e_j‖₂
    w_norm = spectral_norm(W, "W_r").upper
    Ts, et = normalise(T)
    Ws, ew = normalise(W)
    att_up = frob_upper(exact_t(Ts.T.unsqueeze(-1)))  # (E,) certified 2^-et ‖T e_j‖₂
    # head j of Π W_r (T ⊗ I_d) = (Π W_r)((T e_j) ⊗ I_d): centre W_r's rows first, then multiply
    K = torch.einsum("ij,ab->jiab", Ts, torch.eye(d, dtype=F64)).reshape(E, E * d, d)
    C = centre_rows(exact(Ws))  # (E_out, E d)
    H = matmul(Enclosure(C.mid.unsqueeze(0), C.rad.unsqueeze(0)), exact_t(K))  # (heads, E_out, d)
    per_head = norm_upper(H) if d > 0 else torch.zeros(E, dtype=F64)
    head_product = [certify(half_up(up(w_norm * scale_up(float(v), et)))) for v in att_up]
    head_centred = [
        min(certify(half_up(scale_up(float(v), ew + et))), hp)
        for v, hp in zip(per_head, head_product, strict=True)
    ]
    return TalkBounds(
        talk_norm=talk_norm,
        attenuation=[float(v) for v in att],
        head_product=head_product,
        head_centred=head_centred,
        amplifies=talk_norm > 1.0,
    )


def tightness_reasons(b: RouterBounds, domain: Domain, prefix: str = "") -> list[str]:
    """Reasons, proved from the computed quantities, why the certified forms cannot be attained."""
    out: list[str] = []
    E = b.num_experts
    if E == 1 or b.centred_norm == 0.0:
        out.append(
            f"{prefix}constant router (E = {E}, Π L = 0): g does not depend on the input, Lip(g) = 0 "
            "= the centred bound; the effective and product forms (> 0) cannot be tight"
        )
        return out
    if b.product > b.effective * (1 + 1e-6):
        out.append(
            f"{prefix}product form: ½∏‖F_k‖₂ = {b.product:.6g} > ½‖L‖₂ = {b.effective:.6g}, the "
            "factors' singular directions do not align; only the effective and centred forms can "
            "be tight"
        )
    if b.effective > b.centred * (1 + 1e-6):
        out.append(
            f"{prefix}effective form: ‖L‖₂ = {b.logit_norm:.6g} > ‖Π L‖₂ = {b.centred_norm:.6g}, L "
            "has a component along 1 that softmax ignores; ½‖L‖₂ is not attained"
        )
    if b.pair_alignment < 1 - ALIGN_TOL:
        attain = (
            f"at least {b.pair_alignment:.4f} x the bound is approached as the logits of the pair "
            f"{b.best_pair} grow above the rest"
            if b.centred_rank == E - 1
            else f"rank(Π L) = {b.centred_rank} < E − 1 = {E - 1}: not every logit pattern is "
            "reachable"
        )
        out.append(
            f"{prefix}geometry: ‖J(p)‖₂ = ½ only at p = (e_i + e_j)/2 along (e_i − e_j)/√2, and no "
            f"such direction is a top left singular vector of Π L (pair alignment "
            f"{b.pair_alignment:.4f} < 1): sup_x ‖J_g(x)‖₂ < ½‖Π L‖₂; {attain}"
        )
    if domain.kind != "unconstrained" and E >= 3:
        out.append(
            f"{prefix}bounded domain: for E >= 3, ½ needs p = (e_i + e_j)/2 on the boundary of the "
            "simplex, which bounded inputs never reach; the certified bound holds on all of R^n"
        )
    return out
