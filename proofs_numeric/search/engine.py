"""The search driver: screen every start, refine the best (power iteration or the exact small
Jacobian, gradient ascent, adversarial pairs), re-evaluate the winners in float64.

Every number found is a lower bound on the Lipschitz constant (up to rounding) however the search
went; the search only decides how high it gets. It runs in the map's dtype; the reported numbers are
re-evaluated in float64 (one jvp per point with the found unit v, and the pair ratios), so a float32
search still reports float64 values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .jacobian import (
    EXACT_OUT,
    F64,
    ascend_jacobian,
    exact_small,
    jacobian_at,
    out_dim,
    power,
    screen,
)
from .pairs import ascend_pairs, sound_pair_ratio
from .probe import Probe
from .region import Region, unit


@dataclass(frozen=True)
class SearchResult:
    """Float64 re-evaluated lower bounds: max Jacobian norm and max pair ratio over the domain."""

    jacobian: float
    pairs: float
    best_point: Tensor  # (d,) float64, where the Jacobian norm was largest
    best_direction: Tensor  # (d,) unit
    points: int  # points screened
    refined: int  # points that got power iteration (and ascent, pairs)
    iterations: int  # power iterations (0 when the Jacobian was formed exactly)
    ascent_steps: int
    pair_steps: int

    @property
    def value(self) -> float:
        return max(self.jacobian, self.pairs)


def search(
    p: Probe,
    p64: Probe,
    starts: Tensor,
    region: Region,
    *,
    iterations: int,
    ascent: int,
    pair_steps: int,
    keep: int,
    mask: Tensor | None = None,
    seed: int = 0,
    extra_pairs: tuple[Tensor, Tensor] | None = None,
) -> SearchResult:
    """Screen every start, refine the `keep` best (power iteration, ascent, pairs), re-evaluate the
    winners in float64 with `p64` (the same map in float64). `extra_pairs` (A, B) are pairs already
    in the domain (e.g. pairs of given inputs), scored as they are."""
    X = region.project(starts)
    score, V = screen(p, X, mask=mask, seed=seed)
    k = min(keep, X.shape[0])
    top = torch.topk(score, k).indices
    Xk, sub = X[top], region.take(top)
    mk = None if mask is None or mask.dim() == 1 else mask[top]
    small = out_dim(p, X) <= EXACT_OUT
    if small:
        _, Vk = exact_small(p, Xk, mk)
    else:
        _, Vk = power(p, Xk, V[top], iterations, mask=mk)
    if ascent > 0:
        _, Xk, Vk = ascend_jacobian(p, Xk, Vk, sub, ascent, mask=mk)
    X64, V64 = Xk.detach().to(F64), Vk.detach().to(F64)
    if small:
        m64 = None if mk is None else mk.to(F64)
        s64, V64 = exact_small(p64, X64, m64)
    else:
        s64 = jacobian_at(p64, X64, V64)
    best = int(torch.argmax(s64))
    pair_best = 0.0
    if pair_steps > 0 and mask is None:
        _, A, B = ascend_pairs(p, Xk.detach(), Vk.detach(), sub, pair_steps)
        pair_best = float(sound_pair_ratio(p64, A.to(F64), B.to(F64)).max())
    if extra_pairs is not None and extra_pairs[0].shape[0] > 0:
        A, B = extra_pairs
        pair_best = max(pair_best, float(sound_pair_ratio(p64, A.to(F64), B.to(F64)).max()))
    return SearchResult(
        jacobian=float(s64[best]),
        pairs=pair_best,
        best_point=X64[best],
        best_direction=unit(V64[best]),
        points=int(X.shape[0]),
        refined=k,
        iterations=0 if small else iterations,
        ascent_steps=ascent,
        pair_steps=pair_steps if mask is None else 0,
    )
