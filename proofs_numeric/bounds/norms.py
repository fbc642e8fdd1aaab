"""Certified norms of the stacked expert maps from their low-rank factors (factors.py), without forming
the m x n matrices.

With G_U = U_catᵀ U_cat (U_cat = [U_1 … U_E], Ek x Ek) and C = D (Q ⊗ I_n) Dᵀ for D = blockdiag(V_i),
i.e. C_ij = Q_ij V_i V_jᵀ (Q = I for 𝒫, Q = Π for 𝒫_c): ‖U_cat D (Q ⊗ I)‖₂² = λ_max(C^{1/2} G_U C^{1/2})
(exact, Ek x Ek), and Y(x)ᵀ Y(x) has entries (V_i x)ᵀ (U_iᵀ U_j) (V_j x), E x E per input. Cost:
O(Ek(m + n) Ek) once and O(N Ek n) for N centres.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from moelora_core.validate import require_instance

from .factors import ExpertFactors
from .rigorous import (
    Enclosure,
    centre_rows,
    exact,
    exact_t,
    gram_pair_upper,
    hadamard,
    matmul,
    matmul_floats,
    scale,
    scale_up,
    scale_up_t,
    sym_lmax_upper,
    up,
)
from .spectral import F64, certify, up_sqrt


@dataclass(frozen=True)
class StackNorms:
    """max_i ‖P_i‖₂, ‖𝒫‖₂ = ‖[P_1 … P_E]‖₂, ‖𝒫_c‖₂ = ‖[P_1 − P̄ … P_E − P̄]‖₂, ‖P̄‖₂ (certified)."""

    expert_max: float
    experts: list[float]
    stack: float
    stack_centred: float
    mean: float  # ‖P̄‖₂ = ‖Σ_i P_i‖₂ / E


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
    e = f.v_scaled[1]
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
    total = scale_up(float(up_sqrt(gram_pair_upper(GU, GV))), e)  # ‖Σ_i U_i V_i‖₂ = ‖U_cat V_st‖₂
    experts = [certify(float(v)) for v in per]
    return StackNorms(
        max(experts), experts, certify(float(stack)), certify(stack_c), certify(up(total / E))
    )


def _core_stack_norms(f: ExpertFactors, CV: Enclosure) -> StackNorms | None:
    """CoMoL (P_i = s B M_i V): P_i P_iᵀ = s² B (M_i CV M_iᵀ) Bᵀ, CV = V Vᵀ, so ‖P_i‖₂² =
    λ_max(BᵀB · s² M_i CV M_iᵀ), ‖𝒫‖₂² = λ_max(BᵀB · s² Σ_i M_i CV M_iᵀ) and ‖𝒫_c‖₂² the same with
    M_i − M̄: r x r eigenproblems (rigorous.gram_pair_upper) instead of Ek x Ek. None when
    `core_parts` is."""
    parts, parts_c = f.core_parts(False), f.core_parts(True)
    if not f.shared_v or parts is None or parts_c is None:
        return None
    e = f.v_scaled[1]
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
    # Σ_i P_i = s B (Σ_i M_i) V: ‖·‖₂² = λ_max(BᵀB · s² M_Σ CV M_Σᵀ)
    flat = matmul(ones, Enclosure(*(t.reshape(N, -1) for t in M.pair)))  # (1, r²): Σ_i M_i
    Msum = Enclosure(*(t.view(M.mid.shape[1:]) for t in flat.pair))
    Cmean = scale(scale(matmul(matmul(Msum, CV), Msum.T), s), s)
    total = scale_up(float(up_sqrt(gram_pair_upper(GB, Cmean))), e)
    experts = [certify(float(v)) for v in per]
    return StackNorms(
        max(experts), experts, certify(float(stack)), certify(float(stack_c)),
        certify(up(total / N)),
    )  # fmt: skip


def centred_response_norms(
    f: ExpertFactors, X: Tensor, chunk: int = 4096, *, abs_X: Tensor | None = None
) -> Tensor:
    """Certified ‖Y_c(x)‖₂ = ‖[(P_1 − P̄) x … (P_E − P̄) x]‖₂ per row of X (N, n), float64, (N,):
    ‖Y_c‖₂² = λ_max(Π Yᵀ Y Π) with (Yᵀ Y)_ij = z_iᵀ (G_U)_ij z_j, z_i = V_i x (k), all enclosed.
    The k x k blocks are contracted directly (the zeros of blockdiag(z_i) are never multiplied, so
    each product has k terms, not Ek). A shared V centres the U_i first (then Yᵀ Y is already
    centred: no cancellation)."""
    E, _, k = f.U.shape
    Vs, e = f.v_scaled
    Vt = (Vs[:1] if f.shared_v else Vs).reshape(-1, Vs.shape[-1]).T  # (n, E'k), exact floats
    G = f.centred_gram if f.shared_v else f.grams[0]  # (Ek, Ek), rows (i, p), columns (j, q)
    Gj = Enclosure(*(t.view(E * k, E, k).permute(1, 0, 2) for t in G.pair))  # (E_j, Ek, k)
    core = f.core_parts(True) if f.shared_v else None
    out = []
    X = X.to("cpu", F64)
    absX = X.abs() if abs_X is None else abs_X  # (N, n)
    for X_, aX in zip(X.split(chunk), absX.split(chunk), strict=True):
        b = X_.shape[0]
        zt = matmul_floats(X_, Vt, aX)  # (b, E'k): (V_i x)ᵀ, E' = 1 for a shared V
        if core is not None:
            out.append(scale_up_t(up_sqrt(sym_lmax_upper(_core_responses(core, zt))), e))
            continue
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


def _core_responses(core: tuple[Enclosure, Enclosure, float], zt: Enclosure) -> Enclosure:
    """CoMoL: Yᵀ Y (b, N, N) of the centred responses s B (M_i − M̄) z, z = V x (`zt`: (b, r)), as
    s² w_iᵀ (BᵀB) w_j with w_i = (M_i − M̄) z: r x r products per input, none m or Ek long."""
    GB, Mc, s = core
    z = zt.T  # (r, b): V x
    w = matmul(Mc, z)  # (N, r, b)
    u = matmul(GB, w)  # (N, r, b): BᵀB w_j
    wb = Enclosure(*(t.permute(2, 0, 1) for t in w.pair))  # (b, N_i, r)
    ub = Enclosure(*(t.permute(2, 1, 0) for t in u.pair))  # (b, r, N_j)
    return scale(scale(matmul(wb, ub), s), s)


MIXED_MAX = 128  # Ek above which ‖ΔW(x)‖₂ per centre (Ek x Ek eigenproblems) is not computed


def mixed_norm_fn(f: ExpertFactors) -> Callable[[Tensor], Tensor] | None:
    """G (b, E) -> certified ‖ΔW‖₂ = ‖Σ_i g_i P_i‖₂ per row for the float weights g, float64 (None
    when Ek x Ek is too large): λ_max(G_g C) by rigorous.gram_pair_upper."""
    E, _, k = f.U.shape
    GU, GV = f.grams
    if f.shared_v:  # (Σ g_i U_i) V: k x k per row
        Vs, e = f.v_scaled
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
        return scale_up_t(up_sqrt(gram_pair_upper(GU, C)), f.v_scaled[1])

    return general
