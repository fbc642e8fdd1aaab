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

Every certified upper bound is multiplied by (1 + CERT_RTOL) to cover float64 rounding of the SVD and
Gram products (dimension <= 1e5 gives relative rounding < 1e-10). Norms obtained from a Gram matrix
(σ² = λ_max(G)) also get an absolute margin GRAM_ATOL x ‖G‖_F on λ before the square root, because
the Gram route turns a rounding error of ~dim·eps·‖G‖ on λ into one of sqrt(dim·eps·‖G‖) on a
singular value near 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from moelora_core.errors import ArgumentTypeError, NonFiniteError, ShapeError
from moelora_core.validate import require_simplex, require_tensor

SOFTMAX_LIP = 0.5  # sup_p ‖diag(p) − ppᵀ‖₂
CLASSICAL_SOFTMAX_LIP = 1.0  # the textbook constant, kept for the refuted twins
CERT_RTOL = 1e-10
GRAM_ATOL = 1e-12  # absolute margin (x the Gram's scale) on eigenvalues from Gram products
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
    """Inflate an upper bound computed in float64 by the rounding margin CERT_RTOL."""
    return value * (1.0 + CERT_RTOL)


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
        raise NonFiniteError(
            f"{name}: max |entry| = {float(A.abs().max()):.3g}; expected <= {NORM_MAX_ENTRY:g}, so "
            "that its norm and the certification margin stay finite in float64"
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
    B = Q.T @ A  # (k, q)
    R = A - Q @ B
    defect = float(torch.linalg.matrix_norm(Q.T @ Q - torch.eye(k, dtype=F64, device=A.device)))
    q_norm = math.sqrt(1.0 + defect)
    b = float(torch.linalg.svdvals(B)[0])
    upper = certify(q_norm * b + float(torch.linalg.matrix_norm(R)))
    return SpectralNorm(b / q_norm, upper, "subspace", iterations)


def spectral_norm(M: Tensor, name: str = "M", *, seed: int = 0) -> SpectralNorm:
    """‖M‖₂: exact (svdvals) when min(shape) <= EXACT_MAX_DIM, else the certified subspace interval."""
    A = _check_matrix(M, name)
    if min(A.shape, default=0) <= EXACT_MAX_DIM:
        s = exact_norm(A, name)
        return SpectralNorm(s, certify(s), "svd")
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


def lambda_max_upper(M: Tensor, scale: Tensor | None = None) -> Tensor:
    """λ_max of symmetric (batched) M plus the rounding margin GRAM_ATOL x scale (default ‖M‖_F).

    A Gram route squares the values: eigvalsh's absolute error ~ dim·eps·‖M‖ is negligible next to
    a large λ_max but not next to a tiny one, so the margin is absolute, and sqrt(λ + margin) stays
    an upper bound even when the true singular value is 0 (it then reads ~1e-6 x the scale).
    """
    s = torch.linalg.matrix_norm(M) if scale is None else scale
    out: Tensor = torch.linalg.eigvalsh(M)[..., -1].clamp_min(0.0) + GRAM_ATOL * s
    return out


def gram_pair_norm(GU: Tensor, C: Tensor) -> Tensor:
    """Upper bound on ‖U D‖₂ given UᵀU = GU and D Dᵀ = C: sqrt(λ_max(C^{1/2} GU C^{1/2}) + margin),
    margin GRAM_ATOL ‖C‖_F ‖GU‖_F (batched, float64)."""
    S = psd_sqrt(C)
    scale = torch.linalg.matrix_norm(C) * torch.linalg.matrix_norm(GU)
    return lambda_max_upper(S @ GU @ S, scale).sqrt()
