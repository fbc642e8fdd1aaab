"""Rigorous float64 enclosures: upper bounds on exact real quantities computed from float weights.

An `Enclosure` (mid, rad) stands for every real matrix M with |M − mid| <= rad entrywise. Weights
are floats, so `exact(W)` has rad = 0. Every operation returns an enclosure of the exact real result
(see docs/bounds.md, "Why the certified numbers are upper bounds in floating point"):

  * rounding model (IEEE binary64, round to nearest): fl(a ∘ b) = (a ∘ b)(1 + δ) + η, |δ| <= u = 2⁻⁵³,
    |η| <= 2⁻¹⁰⁷⁵ (η only for products that underflow; sums and differences of floats are exact on
    underflow);
  * products (Higham, Thm 3.5): |fl(AB) − AB| <= γ_k |A||B| + k·2⁻¹⁰⁷⁴, γ_k = k u/(1 − k u); with
    enclosed factors |AB − mid_A mid_B| <= |mid_A| rad_B + rad_A (|mid_B| + rad_B);
  * every radius is itself a float sum of at most k nonnegative rounded terms, so its computed value
    is at least (1 − γ_k) times the exact one: `_bound` multiplies it by 1 + 2γ_{k+8} and adds
    2(k+8)·2⁻¹⁰⁷⁴, which covers that and its own rounding (valid while (k + 8)u < 0.01);
  * singular values: for symmetric S with eigh output (w, V), S = V diag(w) Vᵀ + R exactly, so
    λ_max(S) <= max(w_max, 0)·‖V‖₂² + ‖R‖_F (Weyl), ‖V‖₂² <= 1 + ‖VᵀV − I‖_F, with R and VᵀV − I
    enclosed; ‖M‖₂² = λ_max(M Mᵀ) and ‖M‖₂ <= ‖mid‖₂ + ‖rad‖_F. No backward-stability constant of
    the eigensolver is assumed: its output is only a guess that the residual checks.

Scalars are assembled with upward rounding (`up`: the next float above). Anything non-finite raises
`CertificateError`: no number is returned that is not an upper bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from moelora_core.errors import NonFiniteError

F64 = torch.float64
U_ROUND = 2.0**-53  # unit roundoff of binary64
ETA = 2.0**-1074  # smallest positive subnormal
INF = math.inf


class CertificateError(NonFiniteError):
    """A certified bound cannot be made (overflow, non-finite intermediate, refuted by a search)."""


def gamma(k: int) -> float:
    """γ_k = k u / (1 − k u) (Higham's constant), for k u < 1."""
    ku = k * U_ROUND
    if ku >= 0.01:
        raise CertificateError(f"dimension k={k}: γ_k needs k·u < 0.01 for the rounding argument")
    return ku / (1.0 - ku)


def up(x: float) -> float:
    """The next float above x (an upward-rounded result of one operation)."""
    return math.nextafter(x, INF)


def up_t(x: Tensor) -> Tensor:
    """Elementwise next float above."""
    return torch.nextafter(x, torch.full_like(x, INF))


def all_finite(t: Tensor) -> bool:
    """No NaN or inf in t. A finite sum (one pass) proves it, since a NaN or inf entry makes every
    partial sum containing it NaN or inf; only a non-finite sum (also: an overflow of finite
    entries) needs the entrywise check."""
    with torch.no_grad():
        if math.isfinite(float(t.sum())):
            return True
        return bool(torch.isfinite(t).all())


def _finite(t: Tensor, what: str) -> Tensor:
    if not all_finite(t):
        raise CertificateError(f"{what}: non-finite intermediate (overflow); no certificate")
    return t


def _bound(r: Tensor, k: int) -> Tensor:
    """Upper bound on the exact value of a radius computed as float sums of <= k rounded terms.
    Not checked here: a non-finite radius propagates (inf, or NaN from inf·0) into every value
    computed from it, and every public result is checked (`_finite`)."""
    return r * (1.0 + 2.0 * gamma(k + 8)) + 2.0 * (k + 8) * ETA


@dataclass(frozen=True)
class Enclosure:
    """Every real matrix M with |M − mid| <= rad entrywise (float64, CPU, batched over leading dims)."""

    mid: Tensor
    rad: Tensor

    @property
    def pair(self) -> tuple[Tensor, Tensor]:
        return self.mid, self.rad

    @property
    def T(self) -> Enclosure:
        return Enclosure(self.mid.transpose(-1, -2), self.rad.transpose(-1, -2))


def exact(M: Tensor) -> Enclosure:
    """The float matrix itself (float32/64 -> float64 is exact)."""
    A = M.detach().to("cpu", F64)
    _finite(A, "matrix")
    return Enclosure(A, torch.zeros_like(A))


def _is_exact(e: Enclosure) -> bool:
    return not bool(e.rad.any())


def matmul(A: Enclosure, B: Enclosure) -> Enclosure:
    """Enclosure of the exact product of any members of A and B (broadcast over batch dims)."""
    k = A.mid.shape[-1]
    mid = A.mid @ B.mid  # an overflow here makes γ|A||B| (in the radius) non-finite too
    aA, aB = A.mid.abs(), B.mid.abs()
    r = aA @ (B.rad + gamma(k) * aB) if not _is_exact(B) else gamma(k) * (aA @ aB)
    if not _is_exact(A):
        r = r + A.rad @ (aB + B.rad)
    rad = _bound(r, 2 * k + 2)
    if not bool(r.all()):  # entries with no nonzero term are exactly 0 (no underflow allowance)
        support = (((aA + A.rad) > 0).to(F64) @ ((aB + B.rad) > 0).to(F64)) > 0
        rad = rad.masked_fill(~support, 0.0)
    return Enclosure(mid, rad)


def matmul_floats(A: Tensor, B: Tensor | Enclosure, abs_a: Tensor | None = None) -> Enclosure:
    """`matmul(exact_t(A), B)` for a float64 CPU tensor A taken as exact (B exact too when given as
    a tensor), without forming or scanning zero radii: the same bound, |A|(rad_B + γ_k|B|), and
    the same support mask. `abs_a`: |A| when the caller has it already (shared inputs)."""
    k = A.shape[-1]
    Bm, Br = (B, None) if isinstance(B, Tensor) else B.pair
    mid = A @ Bm
    aA, aB = (A.abs() if abs_a is None else abs_a), Bm.abs()
    r = gamma(k) * (aA @ aB) if Br is None else aA @ (Br + gamma(k) * aB)
    rad = _bound(r, 2 * k + 2)
    if not bool(r.all()):  # entries with no nonzero term are exactly 0 (no underflow allowance)
        bsup = aB > 0 if Br is None else (aB + Br) > 0
        support = ((aA > 0).to(F64) @ bsup.to(F64)) > 0
        rad = rad.masked_fill(~support, 0.0)
    return Enclosure(mid, rad)


def sub(A: Enclosure, B: Enclosure) -> Enclosure:
    """Enclosure of A − B (one rounding per entry)."""
    mid = A.mid - B.mid  # non-finite: caught in the radius (u|mid|)
    return Enclosure(mid, _bound(A.rad + B.rad + U_ROUND * mid.abs(), 4))


def scale(A: Enclosure, s: float) -> Enclosure:
    """Enclosure of s·A for a float s (one rounding per entry)."""
    mid = s * A.mid  # non-finite: caught in the radius (u|mid|)
    return Enclosure(mid, _bound(abs(s) * A.rad + U_ROUND * mid.abs(), 3))


def centre_rows(A: Enclosure) -> Enclosure:
    """Enclosure of Π A (Π = I − 11ᵀ/E over dim −2) without cancellation.

    Two passes: R = fl(mid − m) for the float mean m (Π(mid − 1mᵀ) = Π mid exactly, one rounding
    per entry, and R is small when the rows share a large common component), then C = fl(R − m₂);
    |Π|·rad <= rad + mean(rad) entrywise, and fl(mean) errs by <= γ_{E+1} mean|R|.
    """
    E = A.mid.shape[-2]
    if E == 1:  # Π = 0
        return Enclosure(torch.zeros_like(A.mid), torch.zeros_like(A.mid))
    R = A.mid - A.mid.mean(-2, keepdim=True)  # non-finite: caught in the radius (u|R|)
    rR = U_ROUND * R.abs()  # |R − (mid − m)| <= u |R| (1 + u), absorbed by _bound
    m2 = R.mean(-2, keepdim=True)
    C = R - m2
    r_in = A.rad + rR
    r = r_in + r_in.mean(-2, keepdim=True) + gamma(E + 1) * R.abs().mean(-2, keepdim=True)
    r = r + U_ROUND * C.abs()
    return Enclosure(C, _bound(r, E + 4))


def normalise(M: Tensor) -> tuple[Tensor, int]:
    """M = 2^e · M' with max |M'| in [½, 1), when that scaling is exact; else (M, 0)."""
    A = M.detach().to("cpu", F64)
    mx = float(A.abs().max()) if A.numel() else 0.0
    if mx == 0.0 or not math.isfinite(mx):
        return A, 0
    e = math.frexp(mx)[1]
    S = torch.ldexp(A, torch.tensor(-e, dtype=torch.int32))
    if not torch.equal(torch.ldexp(S, torch.tensor(e, dtype=torch.int32)), A):
        return A, 0
    return S, e


def scale_up(x: float, e: int) -> float:
    """An upper bound on x·2^e as a float; CertificateError on overflow."""
    try:
        y = math.ldexp(x, e)
    except OverflowError as err:
        raise CertificateError(f"bound {x:g}·2^{e} overflows float64; no certificate") from err
    if not math.isfinite(y):
        raise CertificateError(f"bound {x:g}·2^{e} overflows float64; no certificate")
    return up(y) if 0.0 < abs(y) < 2.0**-1021 or (y == 0.0 and x > 0.0) else y


def frob_upper(A: Enclosure) -> Tensor:
    """Upper bound on ‖M‖_F for every member (over the last two dims): ‖mid‖_F + ‖rad‖_F."""
    n = A.mid.shape[-1] * A.mid.shape[-2]
    out = torch.zeros(A.mid.shape[:-2], dtype=F64)
    for part in (A.mid, A.rad):
        s = _bound((part * part).sum((-2, -1)), n + 2)
        out = up_t(out + up_t(s.sqrt()))
    return _finite(out, "Frobenius norm")


def row_norms_upper(X: Tensor) -> Tensor:
    """Upper bound on ‖x‖₂ for every row of a float64 CPU tensor X taken as exact (N, n) -> (N,):
    `frob_upper` without the (zero) radius term."""
    s = _bound(torch.einsum("...i,...i->...", X, X), X.shape[-1] + 2)  # one pass, any order
    return _finite(up_t(s.sqrt()), "row norm")


def sym_lmax_upper(S: Enclosure) -> Tensor:
    """Upper bound on λ_max of every symmetric member of S (batched over leading dims)."""
    p = S.mid.shape[-1]
    if p == 0:
        return torch.zeros(S.mid.shape[:-2], dtype=F64)
    Sl = S.mid.tril() + S.mid.tril(-1).transpose(-1, -2)  # the symmetric matrix eigh reads
    w, V = torch.linalg.eigh(Sl)
    VD = V * w.unsqueeze(-2)
    VDe = Enclosure(VD, _bound(U_ROUND * VD.abs(), 2))
    # S_true − V diag(w) Vᵀ, both symmetric, enclosed from S itself (not only its lower triangle)
    res = frob_upper(sub(S, matmul(VDe, exact_t(V.transpose(-1, -2)))))
    eye = torch.eye(p, dtype=F64).expand_as(Sl)
    d = frob_upper(sub(matmul(exact_t(V.transpose(-1, -2)), exact_t(V)), exact_t(eye)))
    wmax = w[..., -1].clamp_min(0.0)
    top = up_t(wmax * up_t(1.0 + d))
    return _finite(up_t(top + res), "eigenvalue bound")


def exact_t(M: Tensor) -> Enclosure:
    """A float64 CPU tensor taken as exact (no copy, no check): internal use."""
    return Enclosure(M, torch.zeros_like(M))


def norm_upper(A: Enclosure) -> Tensor:
    """Upper bound on ‖M‖₂ for every member of A: sqrt(λ_max(mid midᵀ)) + ‖rad‖_F (batched)."""
    if A.mid.shape[-1] == 0 or A.mid.shape[-2] == 0:
        return torch.zeros(A.mid.shape[:-2], dtype=F64)
    m = A.mid if A.mid.shape[-2] <= A.mid.shape[-1] else A.mid.transpose(-1, -2)
    g = sym_lmax_upper(matmul(exact_t(m), exact_t(m.transpose(-1, -2))))
    r = frob_upper(Enclosure(A.rad, torch.zeros_like(A.rad)))
    zero = ~(A.mid.flatten(-2).any(-1) | A.rad.flatten(-2).any(-1))  # the member is exactly 0
    out = up_t(up_t(g.sqrt()) + r).masked_fill(zero, 0.0)
    return _finite(out, "spectral norm bound")


def gram_pair_upper(G: Enclosure, C: Enclosure) -> Tensor:
    """Upper bound on λ_max(G C) for PSD members G, C (batched): with S = C̃^{1/2} from eigh and
    C = S Sᵀ + Δ (‖Δ‖₂ <= δ enclosed), C ⪯ S Sᵀ + δI, so λ_max(G^{1/2} C G^{1/2}) <=
    λ_max(Sᵀ G S) + δ ‖G‖₂."""
    Cl = C.mid.tril() + C.mid.tril(-1).transpose(-1, -2)
    w, V = torch.linalg.eigh(Cl)
    S = (V * w.clamp_min(0).sqrt().unsqueeze(-2)) @ V.transpose(-1, -2)
    St = S.transpose(-1, -2)
    delta = frob_upper(sub(C, matmul(exact_t(S), exact_t(St))))
    lam = sym_lmax_upper(matmul(matmul(exact_t(St), G), exact_t(S)))
    g = sym_lmax_upper(G)
    return _finite(up_t(lam + up_t(delta * g)), "Gram-pair bound")


def hadamard(A: Enclosure, K: Tensor) -> Enclosure:
    """Enclosure of K ∘ A for a float matrix K (exact constants; broadcast)."""
    mid = K * A.mid  # non-finite: caught in the radius (u|mid|)
    return Enclosure(mid, _bound(K.abs() * A.rad + U_ROUND * mid.abs(), 3))


def scale_up_t(x: Tensor, e: int) -> Tensor:
    """Elementwise upper bound on x·2^e (x >= 0); CertificateError on overflow."""
    y = torch.ldexp(x, torch.tensor(e, dtype=torch.int32))
    return _finite(up_t(y), "scaled bound")


def scale_t(x: Tensor, e: int) -> Tensor:
    """x·2^e, exact (ldexp) apart from underflow to subnormals, which moves a value by at most
    2^-1074 (any radius from `scale_up_t` covers it); CertificateError on overflow."""
    return _finite(torch.ldexp(x, torch.tensor(e, dtype=torch.int32)), "scaled value")


def poly_up(x: Tensor) -> Tensor:
    """Upper bound on the exact value of a nonnegative expression evaluated in float64 with at most
    8 roundings (sums and products of nonnegative upper bounds): x (1 + 16u), one step up."""
    return _finite(up_t(x * (1.0 + 16.0 * U_ROUND)), "bound expression")


def softmax_error(Z: Enclosure) -> tuple[Tensor, Tensor, Tensor]:
    """For every row z of a member of Z (N, E): the float softmax p̂ = softmax(mid), an upper bound
    p_up >= softmax(z) and an upper bound on ‖softmax(z) − p̂‖₁ (per row).

    p_k = 1 / Σ_j exp(z_j − z_k); the differences are enclosed (d ± r), exp is assumed accurate to
    2 ulp (glibc, SLEEF), the sum of E terms loses at most γ_E, so with the lower and upper sums
    s_lo, s_hi: p_k ∈ [1/s_hi, 1/s_lo] up to (1 ± 4u) for the division and the exp of the bounds.
    """
    E = Z.mid.shape[-1]
    d = Z.mid.unsqueeze(-2) - Z.mid.unsqueeze(-1)  # (N, k, j): z_j − z_k
    # 3u|d|: the rounding of d and of d ± r (the rest of that rounding is in _bound's slack)
    r = _bound(Z.rad.unsqueeze(-2) + Z.rad.unsqueeze(-1) + 3.0 * U_ROUND * d.abs(), 4)
    lo = (torch.exp(d - r) * (1.0 - 8.0 * U_ROUND)).sum(-1) * (1.0 - 2.0 * gamma(E + 4))
    hi = (torch.exp(d + r) * (1.0 + 8.0 * U_ROUND) + ETA).sum(-1) * (1.0 + 2.0 * gamma(E + 4))
    p_up = up_t(1.0 / lo).clamp(max=1.0)  # (N, E)
    p_lo = (1.0 / hi) * (1.0 - 4.0 * U_ROUND)
    p_hat = torch.softmax(Z.mid, dim=-1)
    dev = torch.maximum(p_up - p_hat, p_hat - p_lo).clamp_min(0.0)
    l1 = _finite(_bound((dev + U_ROUND * (p_up + p_hat)).sum(-1), E + 4), "routing error")
    return p_hat, _finite(p_up, "routing bound"), l1


def centred_rows_norm_upper(P: Tensor) -> Tensor:
    """Upper bound on ‖p − 1/E‖₂ for every float row p of P (N, E) (exact 1/E): the float norm of
    fl(p − fl(1/E)) with its γ_{E+4} slack, plus u per entry for the two roundings of the difference
    (|fl(1/E) − 1/E| <= u/E, |fl(d) − d| <= u|d|, so the vector errs by <= u‖d‖ + u/√E <= 2u in
    2-norm for rows of the simplex)."""
    E = P.shape[-1]
    n = torch.linalg.vector_norm(P - 1.0 / E, dim=-1)
    return _finite(up_t(_bound(n, E + 4) + 2.0 * U_ROUND), "routing deviation")


def half_up(x: float) -> float:
    """An upper bound on x/2 (exact unless x is subnormal with an odd last bit)."""
    y = 0.5 * x
    return y if 2.0 * y == x else up(y)
