"""The finite-difference stage of the search, for maps that forward-mode AD cannot go through:
power iteration on J(x) with J v by central differences and Jᵀu by reverse mode, each step moving the
point along ∇‖J(x) v‖² (ascent towards the steepest place), projected into the region. Every pair of
evaluated points is scored with the sound ratio (pairs.ratios) and handed to `keep`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .pairs import ratios
from .probe import Fn
from .region import Region, unit

Keep = Callable[[Tensor, Tensor, Tensor], bool]  # (ratios, A, B) -> stop the search


def difference_power(
    f: Fn, X: Tensor, scales: Tensor, gen: torch.Generator, steps: int, region: Region, keep: Keep
) -> tuple[Tensor, bool]:
    """`steps` power steps at every row of X (P, n); returns the moved points and whether `keep` asked
    to stop. `f` maps (P, n) -> (P, ...) rows; `scales` (P, 1) sets the first step length."""
    P, n = X.shape
    V = unit(torch.randn(P, n, generator=gen, dtype=X.dtype))
    step = 0.25 * scales
    for _ in range(steps):
        h = 1e-5 * (1 + torch.linalg.vector_norm(X, dim=1, keepdim=True))
        A, B = region.project(X + h * V), region.project(X - h * V)
        Ar, Br = A.clone().requires_grad_(True), B.clone().requires_grad_(True)
        Fp, Fm = f(Ar).reshape(P, -1), f(Br).reshape(P, -1)
        np_, nm = (torch.linalg.vector_norm(F.detach(), dim=1) for F in (Fp, Fm))
        if keep(ratios(A, B, Fp.detach(), Fm.detach(), np_, nm), A, B):
            return X, True
        D = Fp - Fm  # (P, K) ≈ 2h J v
        if not D.requires_grad:  # not differentiable by autograd: random directions only
            V = unit(torch.randn(P, n, generator=gen, dtype=X.dtype))
            continue
        ga, gb = torch.autograd.grad((D * D).sum(), [Ar, Br], retain_graph=True, allow_unused=True)
        ja, jb = torch.autograd.grad(((Fp + Fm) * D.detach()).sum(), [Ar, Br], allow_unused=True)
        if ja is not None and jb is not None:  # v <- Jᵀ J v / ‖·‖
            JtU = ja + jb
            V = torch.where(
                torch.linalg.vector_norm(JtU, dim=1, keepdim=True) > 0, unit(JtU), V
            ).detach()
        if ga is not None and gb is not None:
            X = region.project((X + step * unit(ga + gb)).detach())
        step = step * 0.6
    return X, False
