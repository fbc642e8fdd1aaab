"""Pair ratios ‖f(a) − f(b)‖ / ‖a − b‖ (each a lower bound on Lip(f) on the segment [a, b]), the
adversarial pair ascent of the Jacobian search, and the bisection of segments that closes in on a jump.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .probe import Fn, Probe
from .region import Region, unit

MIN_SEPARATION = 1e-7  # pairs closer than this (relative to 1 + ‖x‖) are not scored
ROUNDING_MARGIN = 1e-12  # sound ratios: this x (1 + max(‖f(a)‖, ‖f(b)‖)) taken off the numerator


def ratios(
    A: Tensor, B: Tensor, FA: Tensor, FB: Tensor, nA: Tensor, nB: Tensor,
    *, margin: float = ROUNDING_MARGIN,
) -> Tensor:  # fmt: skip
    """Sound per-row ratios (‖FA − FB‖ − margin (1 + max(‖FA‖, ‖FB‖)))₊ / ‖A − B‖ (nA, nB: the row
    norms of FA, FB), so that rounding in f never counts as a measured slope; 0 where A = B."""
    num = torch.linalg.vector_norm(FA - FB, dim=1) - margin * (1 + torch.maximum(nA, nB))
    den = torch.linalg.vector_norm(A - B, dim=1)
    return torch.where(den > 0, num.clamp_min(0) / den.clamp_min(1e-300), torch.zeros_like(den))


def sound_pair_ratio(p: Probe, A: Tensor, B: Tensor) -> Tensor:
    """`pair_ratio` with `ratios`' rounding allowance, for a reported lower bound: rounding in f
    can never count as a measured slope; rows closer than MIN_SEPARATION give 0."""
    FA, FB = p.value(A), p.value(B)
    nA, nB = torch.linalg.vector_norm(FA, dim=-1), torch.linalg.vector_norm(FB, dim=-1)
    d = torch.linalg.vector_norm(A - B, dim=-1)
    ok = d > MIN_SEPARATION * (1.0 + torch.linalg.vector_norm(A, dim=-1))
    return torch.where(ok, ratios(A, B, FA, FB, nA, nB), torch.zeros_like(d))


def pair_ratio(p: Probe, A: Tensor, B: Tensor) -> Tensor:
    """‖f(a) − f(b)‖ / ‖a − b‖ per row; rows closer than MIN_SEPARATION give 0."""
    d = torch.linalg.vector_norm(A - B, dim=-1)
    num = torch.linalg.vector_norm(p.value(A) - p.value(B), dim=-1)
    scale = 1.0 + torch.linalg.vector_norm(A, dim=-1)
    ok = d > MIN_SEPARATION * scale
    return torch.where(ok, num / d.clamp_min(1e-300), torch.zeros_like(d))


def ascend_pairs(
    p: Probe, X: Tensor, V: Tensor, region: Region, steps: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Adversarial pairs from (x − δ/2, x + δ/2), δ ∥ v; the best (ratio, a, b) per start."""
    half = 0.05 * region.step_scale(X) * unit(V)
    A = region.project(X - half).detach()
    B = region.project(A + 2 * half).detach()
    best_r = pair_ratio(p, A, B).detach()
    best_a, best_b = A.clone(), B.clone()
    for t in range(steps):
        A_ = A.detach().requires_grad_(True)
        B_ = B.detach().requires_grad_(True)
        with torch.enable_grad():
            r = pair_ratio(p, A_, B_)
            ga, gb = torch.autograd.grad(r.sum(), (A_, B_))
        eta = 0.1 * region.step_scale(X) * (0.7**t)
        A = region.project(A.detach() + eta * unit(ga))
        B = region.project(B.detach() + eta * unit(gb))
        r = pair_ratio(p, A, B).detach()
        better = r > best_r
        best_r = torch.where(better, r, best_r)
        best_a = torch.where(better.unsqueeze(-1), A, best_a)
        best_b = torch.where(better.unsqueeze(-1), B, best_b)
    return best_r, best_a, best_b


def bisect_pairs(
    f: Fn, A: Tensor, B: Tensor, steps: int, patience: int,
    keep: Callable[[Tensor, Tensor, Tensor], bool],
) -> None:  # fmt: skip
    """Bisect the segments [a_k, b_k], keeping the half with the larger sound ratio: a segment closes
    in on a jump (the ratio doubles per step) or on the steepest point. Every step's (ratios, A, B)
    goes to `keep`, which returns True to stop; also stops after `patience` flat steps."""
    (FA, nA), (FB, nB) = _valued(f, A), _valued(f, B)
    best, still = 0.0, 0
    for _ in range(steps):
        M = (A + B) / 2
        FM, nM = _valued(f, M)
        left, right = ratios(A, M, FA, FM, nA, nM), ratios(M, B, FM, FB, nM, nB)
        go_left = left >= right  # (P,)
        L = go_left[:, None]
        if keep(torch.where(go_left, left, right), torch.where(L, A, M), torch.where(L, M, B)):
            return
        now = float(torch.where(go_left, left, right).max())
        still = still + 1 if now <= best * 1.01 else 0
        best = max(best, now)
        if still >= patience:
            return
        A, FA, nA = torch.where(L, A, M), torch.where(L, FA, FM), torch.where(go_left, nA, nM)
        B, FB, nB = torch.where(L, M, B), torch.where(L, FM, FB), torch.where(go_left, nM, nB)


def _valued(f: Fn, Z: Tensor) -> tuple[Tensor, Tensor]:
    """f(Z) as (P, K) rows and their norms (P,)."""
    out = f(Z).reshape(Z.shape[0], -1)
    return out, torch.linalg.vector_norm(out.detach(), dim=1)


def closing_ratio(f: Fn, a: Tensor, b: Tensor, ratio: float, halvings: int = 20) -> float:
    """The pair (a, b) bisected `halvings` more times (keeping the steeper half): a ratio that keeps
    doubling marks a jump, one that settles marks a steep but continuous map."""
    A, B = a[None], b[None]
    with torch.no_grad():
        (FA, nA), (FB, nB) = _valued(f, A), _valued(f, B)
        r = ratio
        for _ in range(halvings):
            M = (A + B) / 2
            FM, nM = _valued(f, M)
            left, right = ratios(A, M, FA, FM, nA, nM), ratios(M, B, FM, FB, nM, nB)
            if bool(left >= right):
                B, FB, nB, r = M, FM, nM, float(left)
            else:
                A, FA, nA, r = M, FM, nM, float(right)
    return r
