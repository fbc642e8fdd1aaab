"""The Lipschitz search of `lipschitz_bound`: an adversarially searched lower bound on Lip(f) with
its witness pair, optionally inside a ball (a bounded-region claim), on the one search engine
`proofs_numeric.search` (its finite-difference power stage and bisection, and its Jacobian search).

Every reported ratio is ‖f(a) − f(b)‖ / ‖a − b‖ of two evaluated points, less a rounding margin
1e-12·(1 + max(‖f(a)‖, ‖f(b)‖)) on the numerator (`search.ratios`), so it is a sound lower bound and
(a, b) its witness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from moelora_core.errors import input_checks

from ..search import (
    Fn,
    Probe,
    Region,
    ball,
    bisect_pairs,
    difference_power,
    ratios,
    search,
)
from ..search import closing_ratio as _closing
from ..strategies import DTYPE


@dataclass(frozen=True)
class LipschitzWitness:
    """The largest ratio ‖f(a) - f(b)‖ / ‖a - b‖ found (minus a rounding margin): a lower bound on Lip(f)."""

    ratio: float
    a: Tensor  # (n,)
    b: Tensor  # (n,)
    evaluations: int


@dataclass
class _Found:
    """Every scored pair of one search, and the evaluations of f it took."""

    f: Fn
    stop_above: float
    evals: int = 0
    found: list[tuple[Tensor, Tensor, Tensor]] = field(default_factory=list)  # (ratios, A, B)

    def counted(self, Z: Tensor) -> Tensor:
        self.evals += 1
        return self.f(Z)

    def keep(self, r: Tensor, A: Tensor, B: Tensor) -> bool:
        self.found.append((r, A.detach(), B.detach()))
        return bool(r.max() > self.stop_above)

    def best(self, starts: int) -> LipschitzWitness:
        stacked = torch.stack([r for r, _, _ in self.found])  # (steps, P)
        k, i = divmod(int(stacked.argmax()), starts)
        return LipschitzWitness(
            float(stacked[k, i]), self.found[k][1][i], self.found[k][2][i], self.evals
        )


def _region(n: int, starts: int, radius: float, centre: Tensor | None) -> Region:
    if not math.isfinite(radius):
        return Region(None, None, 0.0)
    return ball(centre, radius, n, starts, DTYPE)


def empirical_lipschitz(
    f: Fn,
    n: int,
    *,
    seed: int = 0,
    starts: int = 24,
    power_steps: int = 5,
    bisections: int = 34,
    patience: int = 4,
    stop_above: float = math.inf,
    radius: float = math.inf,
    centre: Tensor | None = None,
) -> LipschitzWitness:
    """An adversarially searched lower bound on the Lipschitz constant of `f: (P, n) -> (P, ...)`,
    over the whole space or (with `radius`) over the ball ‖x − centre‖ <= radius.

    1. `starts` points at scales 0.1, 1, 10, 100 (capped by the radius). Power iteration on the
       Jacobian finds the worst direction v at each point, and each step moves the point along the
       gradient of ‖J(x) v‖² (ascent towards the steepest place), projected into the ball
       (`search.difference_power`).
    2. Bisection of segments between points, keeping the half with the larger ratio
       (`search.bisect_pairs`).
    Stops early once a ratio exceeds `stop_above`.
    """
    gen = torch.Generator().manual_seed(seed)
    levels = torch.tensor([0.1, 1.0, 10.0, 100.0], dtype=DTYPE).clamp_max(radius / 2)
    scales = levels.repeat((starts + 3) // 4)[:starts, None]
    s = _Found(f, stop_above)
    region = _region(n, starts, radius, centre)
    X = region.project(torch.randn(starts, n, generator=gen, dtype=DTYPE) * scales)  # (P, n)
    with input_checks(False):
        X, stopped = difference_power(s.counted, X, scales, gen, power_steps, region, s.keep)
        if not stopped:
            with torch.no_grad():
                perm = torch.randperm(starts, generator=gen)
                noise = torch.randn(starts, n, generator=gen, dtype=DTYPE) * scales
                B = region.project(X[perm] + noise)
                bisect_pairs(s.counted, X, B, bisections, patience, s.keep)
    return s.best(starts)


def closing_ratio(f: Fn, w: LipschitzWitness, halvings: int = 20) -> float:
    """The witness pair bisected `halvings` more times (keeping the steeper half): a ratio that keeps
    doubling marks a jump, one that settles marks a steep but continuous map."""
    with input_checks(False):
        return _closing(f, w.a, w.b, w.ratio, halvings)


def bounds_search(
    f: Fn, n: int, *, seed: int = 0, radius: float = math.inf
) -> LipschitzWitness | None:
    """The Jacobian search of the engine (screening, power iteration, Danskin ascent, pair ascent) on
    f, turned into a witness pair (x ± h v at its best point and direction, with the same rounding
    margin). None if f cannot go through it (e.g. data-dependent Python)."""
    gen = torch.Generator().manual_seed(seed)
    levels = torch.tensor([0.1, 1.0, 10.0, 100.0], dtype=DTYPE).clamp_max(radius / 2)
    X = torch.randn(16, n, generator=gen, dtype=DTYPE) * levels.repeat(4)[:, None]  # (16, n)
    bounded = math.isfinite(radius)
    region = _region(n, 16, radius, None)
    probe = Probe(f, batched=True)
    try:
        with input_checks(False):
            X = region.project(X)
            res = search(
                probe, probe, X, region, iterations=4, ascent=6, pair_steps=4, keep=8, seed=seed
            )
            x, v = res.best_point.to(DTYPE), res.best_direction.to(DTYPE)
            h = 1e-6 * (1 + float(torch.linalg.vector_norm(x)))
            A, B = (x - h * v)[None], (x + h * v)[None]
            if bounded:
                A, B = (
                    A * (radius / A.norm()).clamp_max(1.0),
                    B * (radius / B.norm()).clamp_max(1.0),
                )
            FA, FB = f(A).reshape(1, -1).detach(), f(B).reshape(1, -1).detach()
    except Exception:
        return None
    nA, nB = torch.linalg.vector_norm(FA, dim=1), torch.linalg.vector_norm(FB, dim=1)
    return LipschitzWitness(float(ratios(A, B, FA, FB, nA, nB)[0]), A[0], B[0], 0)
