"""Spectral norms for the bounds: exact where cheap, a certified interval otherwise, and the softmax
Jacobian with its constant ½.

Softmax Jacobian. For p = softmax(z), ∂p/∂z = J(p) = diag(p) − p pᵀ (symmetric, J(p) 1 = 0), and

    ‖J(p)‖₂ ≤ ½,  with equality iff p = (e_i + e_j)/2 for some i ≠ j.

Proof: for a unit u, uᵀ J(p) u = Σ_k p_k u_k² − (Σ_k p_k u_k)² = Var_p(u), the variance of the values
u_k under the distribution p. Popoviciu: Var_p(u) ≤ (max u − min u)²/4, and (u_i − u_j)² ≤ 2(u_i² + u_j²)
≤ 2, so Var_p(u) ≤ ½. Equality needs u = (e_i − e_j)/√2 and p = ½ on i and on j. J(p) ⪰ 0, so its
spectral norm is its largest eigenvalue. The classical constant 1 (‖J‖₂ ≤ ‖J‖_∞ ≤ 1) is never attained.
Since J(p) 1 = 0 and J is symmetric, J(p) = J(p) Π with Π = I − 11ᵀ/E: softmax ignores the logits'
component along 1, so ‖J(p) L‖₂ ≤ ½ ‖Π L‖₂ ≤ ½ ‖L‖₂ for any logit map L.

Exact norms. For a matrix with min(shape) <= EXACT_MAX_DIM, σ_max comes from `torch.linalg.svdvals` in
float64 (backward stable: relative error a few ulp times the dimension).

Certified interval (larger matrices). Block power (subspace) iteration gives an orthonormal-ish
Q (p x k); with B = Qᵀ M and the explicitly computed residual R = M − Q B,

    M = Q B + R  ⇒  ‖M‖₂ ≤ ‖Q‖₂ ‖B‖₂ + ‖R‖_F,    ‖M‖₂ ≥ ‖B‖₂ / ‖Q‖₂,
    ‖Q‖₂ ≤ sqrt(1 + ‖QᵀQ − I‖_F)   (measured, so Q need not be exactly orthonormal).

‖B‖₂ is exact (k x q, small), ‖R‖_F is computed, not estimated: the upper end holds for any Q, and
iterating only makes it tighter (for a matrix of rank <= k the residual is rounding noise).

Rounding. The upper ends are rigorous upper bounds on the exact real norm of the float matrix: the
Gram matrix, the eigen-decomposition's residual and every product are enclosed with their rounding
errors (rigorous.py; docs/bounds.md, "Why the certified numbers are upper bounds in floating point"),
so no backward-stability constant of svd/eigh is assumed. Each certified value is then raised by the
relative allowance CERT_RTOL = 2⁻⁴⁰ (≈ 9e-13), which is not part of the proof: it keeps a correct
report's certified numbers above float64 re-evaluations of the searched lower bounds, which err by
a few ulp times the dimension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from moelora_core.errors import ArgumentTypeError, NonFiniteError, ShapeError
from moelora_core.validate import require_simplex, require_tensor

from .rigorous import (
    CertificateError,
    exact,
    exact_t,
    frob_upper,
    gram_pair_upper,
    matmul,
    norm_upper,
    normalise,
    scale_up,
    sub,
    up,
)

SOFTMAX_LIP = 0.5  # sup_p ‖diag(p) − ppᵀ‖₂
CLASSICAL_SOFTMAX_LIP = 1.0  # the textbook constant, kept for the refuted twins
CERT_RTOL = 2.0**-40  # final relative allowance above the rigorous bound (see the docstring)
EXACT_MAX_DIM = 1024
F64 = torch.float64
NORM_MAX_ENTRY = 1e150  # larger entries: ‖M‖₂ or the Gram routes (squares) could overflow float64


def softmax_jacobian(p: Tensor) -> Tensor:
    """J(p) = diag(p) − p pᵀ, (..., E) -> (..., E, E); p: rows on the probability simplex."""
    require_simplex("p", p)
    return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)


def centring(E: int, *, dtype: torch.dtype = F64, device: torch.device | None = None) -> Tensor:
    """Π = I − 11ᵀ/E (E x E), the projector onto logit vectors with zero mean."""
    return torch.eye(E, dtype=dtype, device=device) - torch.full(
        (E, E), 1.0 / E, dtype=dtype, device=device
    )


def certify(value: float) -> float:
    """Raise a rigorous upper bound by the allowance CERT_RTOL (rounded upwards; 0 stays 0)."""
    return up(up(value * (1.0 + CERT_RTOL))) if value != 0.0 else 0.0


def rigorous_norm(M: Tensor) -> float:
    """A rigorous upper bound on ‖M‖₂ for the float matrix M (rigorous.norm_upper, scaled by an
    exact power of 2 to keep intermediates in range)."""
    A, e = normalise(M)
    return scale_up(float(norm_upper(exact(A))), e)


@dataclass(frozen=True)
class SpectralNorm:
    """‖M‖₂ ∈ [lower, upper]; `method` 'svd' (exact up to rounding) or 'subspace' (certified)."""

    lower: float
    upper: float
    method: str
    iterations: int = 0

    @property
    def value(self) -> float:
        """The certified upper end (what a bound uses)."""
        return self.upper


def _check_matrix(M: Tensor, name: str) -> Tensor:
    if not isinstance(name, str):
        raise ArgumentTypeError(f"name={name!r}: expected a str")
    if not isinstance(M, Tensor) or M.dim() != 2:
        shape = tuple(M.shape) if isinstance(M, Tensor) else type(M).__name__
        raise ShapeError(f"{name}.shape={shape}: expected a 2-D matrix")
    require_tensor(name, M)
    A = M.detach().to("cpu", F64)
    if A.numel() and math.isfinite(float(A.abs().max())) and float(A.abs().max()) > NORM_MAX_ENTRY:
        raise CertificateError(
            f"{name}: max |entry| = {float(A.abs().max()):.3g}; expected <= {NORM_MAX_ENTRY:g}: "
            "beyond it the norm and its certification margin could overflow float64"
        )
    if not math.isfinite(float(A.sum())) and not bool(torch.isfinite(A).all()):
        raise NonFiniteError(f"{name}: non-finite entries; expected a finite matrix")
    return A


def exact_norm(M: Tensor, name: str = "M") -> float:
    """σ_max(M) in float64 via svdvals (0 for an empty matrix)."""
    A = _check_matrix(M, name)
    if A.numel() == 0:
        return 0.0
    return float(torch.linalg.svdvals(A)[0])


def subspace_norm(M: Tensor, k: int = 16, iterations: int = 4, seed: int = 0) -> SpectralNorm:
    """Certified interval for ‖M‖₂ by block power iteration with k vectors (see the module docstring)."""
    A = _check_matrix(M, "M")
    p, q = A.shape
    k = max(1, min(k, p, q))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    Y = A @ torch.randn(q, k, generator=gen, dtype=F64).to(A.device)  # (p, k)
    for _ in range(iterations):
        Q = torch.linalg.qr(Y).Q
        Z = torch.linalg.qr(A.T @ Q).Q  # (q, k)
        Y = A @ Z
    Q = torch.linalg.qr(Y).Q  # (p, k)
    # rigorous: B = QᵀM and R = M − QB enclosed, ‖Q‖₂² <= 1 + ‖QᵀQ − I‖_F enclosed
    As, e = normalise(A)
    B = matmul(exact_t(Q.T.contiguous()), exact_t(As))  # (k, q)
    R = sub(exact_t(As), matmul(exact_t(Q), B))
    eye = torch.eye(k, dtype=F64)
    defect = float(frob_upper(sub(matmul(exact_t(Q.T.contiguous()), exact_t(Q)), exact_t(eye))))
    q_norm = up(math.sqrt(up(1.0 + defect)))
    b = float(norm_upper(B))
    upper = certify(scale_up(up(up(q_norm * b) + float(frob_upper(R))), e))
    b_est = float(torch.linalg.svdvals(Q.T @ A)[0])
    return SpectralNorm(b_est / q_norm, upper, "subspace", iterations)


def spectral_norm(M: Tensor, name: str = "M", *, seed: int = 0) -> SpectralNorm:
    """‖M‖₂: exact (svdvals) when min(shape) <= EXACT_MAX_DIM, else the certified subspace interval."""
    A = _check_matrix(M, name)
    if min(A.shape, default=0) <= EXACT_MAX_DIM:
        s = exact_norm(A, name)
        return SpectralNorm(s, max(certify(rigorous_norm(A)), s), "svd")
    return subspace_norm(A, seed=seed)


def psd_sqrt(C: Tensor) -> Tensor:
    """Symmetric square root of a (batch of) PSD matrices, negative rounding eigenvalues clamped."""
    w, V = torch.linalg.eigh(C)
    out: Tensor = (V * w.clamp_min(0).sqrt().unsqueeze(-2)) @ V.transpose(-1, -2)
    return out


def lambda_max(S: Tensor) -> Tensor:
    """Largest eigenvalue of (a batch of) symmetric matrices, clamped at 0 (for PSD inputs)."""
    out: Tensor = torch.linalg.eigvalsh(S)[..., -1].clamp_min(0.0)
    return out


def gram_pair_norm(GU: Tensor, C: Tensor) -> Tensor:
    """Rigorous upper bound on ‖U D‖₂ given the float matrices GU = UᵀU and C = D Dᵀ (taken as exact,
    PSD): sqrt(λ_max(GU C)) via rigorous.gram_pair_upper (batched, float64)."""
    return up_sqrt(gram_pair_upper(exact(GU), exact(C)))


def up_sqrt(x: Tensor) -> Tensor:
    """Elementwise sqrt rounded upwards (sqrt is correctly rounded, one step up covers it)."""
    r = x.clamp_min(0.0).sqrt()
    out: Tensor = torch.nextafter(r, torch.full_like(r, math.inf))
    return out
