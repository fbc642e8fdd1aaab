"""The Jacobian stages of the search, vectorised over the points:

1. screening: v = J_fᵀ u for a random u, score ‖J_f v‖/‖v‖ at every point;
2. power iteration on J_fᵀ J_f: v <- J_fᵀ J_f v / ‖·‖, σ = ‖J_f v‖; for a small output (k <= EXACT_OUT,
   e.g. routing weights) the full Jacobian from k vjps and its exact σ_max instead (a lower bound too,
   and the best one at that point);
3. gradient ascent on the inputs: x <- x + η ∇_x ‖J_f(x) v‖ / ‖∇‖ with v the current top right
   singular vector (Danskin: the gradient of σ_max where it is simple), projected onto the domain,
   v refreshed by power steps after each move.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .probe import Probe
from .region import Region, unit

F64 = torch.float64
EXACT_OUT = 64  # output dims up to this: full Jacobian by k vjps instead of power iteration


def _masked(V: Tensor, mask: Tensor | None) -> Tensor:
    return V if mask is None else V * mask


def screen(
    p: Probe, X: Tensor, *, mask: Tensor | None = None, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """One vjp and one jvp per point: v = J_fᵀ u (u random), score ‖J_f v‖ for unit v; (σ, v)."""
    k = p.value(X[:1]).shape[-1]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    U = torch.randn(X.shape[0], k, generator=gen, dtype=F64).to(dtype=X.dtype, device=X.device)
    V = _masked(p.vjp(X, U), mask)
    zero = torch.linalg.vector_norm(V, dim=-1) == 0  # e.g. J = 0: any direction will do
    if bool(zero.any()):
        R = torch.randn(X.shape, generator=gen, dtype=F64).to(dtype=X.dtype, device=X.device)
        V = torch.where(zero.unsqueeze(-1), _masked(R, mask), V)
    V = unit(V)
    return torch.linalg.vector_norm(p.jvp(X, V), dim=-1), V


def power(
    p: Probe, X: Tensor, V: Tensor, iterations: int, *, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Power iteration on J_fᵀ J_f from unit V; returns (‖J_f v‖ (N,), unit v (N, d))."""
    for _ in range(iterations):
        W = _masked(p.vjp(X, p.jvp(X, V)), mask)
        nz = torch.linalg.vector_norm(W, dim=-1, keepdim=True) > 0
        V = torch.where(nz, unit(W), V)
    return torch.linalg.vector_norm(p.jvp(X, V), dim=-1), V


def jacobian_power(
    p: Probe, X: Tensor, iterations: int, *, mask: Tensor | None = None, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Screening start then `iterations` power steps at every row of X; (σ (N,), unit v (N, d))."""
    _, V = screen(p, X, mask=mask, seed=seed)
    return power(p, X, V, iterations, mask=mask)


def jacobians(p: Probe, X: Tensor) -> Tensor:
    """Full Jacobians (N, k, d): one forward, then the pullback vmapped over the k unit cotangents."""
    return p.jacobians(X)


def top_singular(J: Tensor) -> tuple[Tensor, Tensor]:
    """σ_max of each J (N, k, d) and its unit top right singular vector, via the k x k Gram in
    float64 (rows with non-finite entries score 0: an overflowed point proves nothing)."""
    J64 = J.to(F64)
    G = J64 @ J64.transpose(-1, -2)  # (N, k, k): non-finite iff J is (or its Gram overflows)
    ok = torch.isfinite(G).flatten(1).all(dim=1)  # (N,)
    w, U = torch.linalg.eigh(torch.where(ok[:, None, None], G, torch.zeros_like(G)))
    s = w[..., -1].clamp_min(0).sqrt()
    v = (U[..., -1].unsqueeze(-2) @ J64).squeeze(-2)  # (N, d): u_topᵀ J = σ vᵀ
    v = torch.where(ok[:, None], v, torch.zeros_like(v))
    return s.to(J.dtype), unit(v).to(J.dtype)


def exact_small(p: Probe, X: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(σ_max, unit top right singular vector) per point from the full Jacobian (k <= EXACT_OUT);
    `mask` (N, d) or (d,) keeps only those input coordinates (the restricted Jacobian)."""
    J = jacobians(p, X)
    if mask is not None:
        J = J * mask.unsqueeze(-2)
    return top_singular(J)


def out_dim(p: Probe, X: Tensor) -> int:
    return int(p.value(X[:1]).shape[-1])


def jacobian_at(p: Probe, X: Tensor, V: Tensor) -> Tensor:
    """‖J_f(x_k) v_k‖ / ‖v_k‖ (one jvp), (N,)."""
    out: Tensor = torch.linalg.vector_norm(p.jvp(X, unit(V)), dim=-1)
    return out


def ascend_jacobian(
    p: Probe, X: Tensor, V: Tensor, region: Region, steps: int, *, mask: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradient ascent of ‖J_f(x) v‖ over x in the region; the best (σ, x, v) per start."""
    small = out_dim(p, X) <= EXACT_OUT
    best_s, best_x, best_v = jacobian_at(p, X, V), X.clone(), V.clone()
    for t in range(steps):
        g = p.sigma_grad(X, V)
        eta = region.step_scale(X) * (0.7**t)
        X = region.project(X + eta * unit(g))
        s, V = exact_small(p, X, mask) if small else power(p, X, V, 2, mask=mask)
        better = s > best_s
        best_s = torch.where(better, s, best_s)
        best_x = torch.where(better.unsqueeze(-1), X, best_x)
        best_v = torch.where(better.unsqueeze(-1), V, best_v)
    return best_s, best_x, best_v
