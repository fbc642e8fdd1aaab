"""The Lipschitz search of `lipschitz_bound`: an adversarially searched lower bound on Lip(f) with
its witness pair, optionally inside a ball (a bounded-region claim).

Every reported ratio is ‖f(a) − f(b)‖ / ‖a − b‖ of two evaluated points, less a rounding margin
1e-12·(1 + max(‖f(a)‖, ‖f(b)‖)) on the numerator, so it is a sound lower bound and (a, b) its witness.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from moelora_core.errors import input_checks

from ..strategies import DTYPE

Fn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class LipschitzWitness:
    """The largest ratio ‖f(a) - f(b)‖ / ‖a - b‖ found (minus a rounding margin): a lower bound on Lip(f)."""

    ratio: float
    a: Tensor  # (n,)
    b: Tensor  # (n,)
    evaluations: int


def ratios(A: Tensor, B: Tensor, FA: Tensor, FB: Tensor, nA: Tensor, nB: Tensor) -> Tensor:
    """Sound per-row ratios (‖FA − FB‖ − margin) / ‖A − B‖ with margin = 1e-12 (1 + max(‖FA‖, ‖FB‖))
    (nA, nB: the row norms of FA, FB), so that rounding in f never counts as a measured slope."""
    num = torch.linalg.vector_norm(FA - FB, dim=1) - 1e-12 * (1 + torch.maximum(nA, nB))
    den = torch.linalg.vector_norm(A - B, dim=1)
    return torch.where(den > 0, num.clamp_min(0) / den.clamp_min(1e-300), torch.zeros_like(den))


def unit(V: Tensor) -> Tensor:
    out: Tensor = V / torch.linalg.vector_norm(V, dim=1, keepdim=True).clamp_min(1e-300)
    return out


@dataclass
class _Search:
    """The search's state: f, the ball (centre, radius) it stays in, and every scored pair."""

    f: Fn
    centre: Tensor | None
    radius: float
    stop_above: float
    evals: int = 0
    found: list[tuple[Tensor, Tensor, Tensor]] = field(default_factory=list)  # (ratios, A, B)

    def F(self, Z: Tensor) -> tuple[Tensor, Tensor]:  # (P, n) -> values (P, K), row norms (P,)
        self.evals += 1
        out = self.f(Z).reshape(Z.shape[0], -1)
        return out, torch.linalg.vector_norm(out.detach(), dim=1)

    def keep(self, r: Tensor, A: Tensor, B: Tensor) -> bool:
        self.found.append((r, A.detach(), B.detach()))
        return bool(r.max() > self.stop_above)

    def project(self, X: Tensor) -> Tensor:
        """Into the ball ‖x − centre‖ <= radius (no-op without a radius)."""
        if not math.isfinite(self.radius):
            return X
        c = self.centre if self.centre is not None else torch.zeros_like(X[0])
        d = X - c
        norm = torch.linalg.vector_norm(d, dim=1, keepdim=True)
        out: Tensor = c + d * (self.radius / norm.clamp_min(self.radius))
        return out

    def best(self, starts: int) -> LipschitzWitness:
        stacked = torch.stack([r for r, _, _ in self.found])  # (steps, P)
        k, i = divmod(int(stacked.argmax()), starts)
        return LipschitzWitness(
            float(stacked[k, i]), self.found[k][1][i], self.found[k][2][i], self.evals
        )


def _power_stage(
    s: _Search, X: Tensor, scales: Tensor, gen: torch.Generator, steps: int
) -> tuple[Tensor, bool]:
    """Power iteration on J(x) (J v by central differences, Jᵀu by autograd) at every point, each
    step moving the point along ∇‖J(x) v‖²; returns the points and whether the search may stop."""
    P, n = X.shape
    V = unit(torch.randn(P, n, generator=gen, dtype=DTYPE))
    step = 0.25 * scales
    for _ in range(steps):
        h = 1e-5 * (1 + torch.linalg.vector_norm(X, dim=1, keepdim=True))
        A, B = s.project(X + h * V), s.project(X - h * V)
        Ar, Br = A.clone().requires_grad_(True), B.clone().requires_grad_(True)
        (Fp, np_), (Fm, nm) = s.F(Ar), s.F(Br)
        if s.keep(ratios(A, B, Fp.detach(), Fm.detach(), np_, nm), A, B):
            return X, True
        D = Fp - Fm  # (P, K) ≈ 2h J v
        if not D.requires_grad:  # not differentiable by autograd: random directions only
            V = unit(torch.randn(P, n, generator=gen, dtype=DTYPE))
            continue
        ga, gb = torch.autograd.grad((D * D).sum(), [Ar, Br], retain_graph=True, allow_unused=True)
        ja, jb = torch.autograd.grad(((Fp + Fm) * D.detach()).sum(), [Ar, Br], allow_unused=True)
        if ja is not None and jb is not None:  # v <- Jᵀ J v / ‖·‖
            JtU = ja + jb
            V = torch.where(
                torch.linalg.vector_norm(JtU, dim=1, keepdim=True) > 0, unit(JtU), V
            ).detach()
        if ga is not None and gb is not None:
            X = s.project((X + step * unit(ga + gb)).detach())
        step = step * 0.6
    return X, False


def _bisect_stage(
    s: _Search, X: Tensor, scales: Tensor, gen: torch.Generator, bisections: int, patience: int
) -> None:
    """Bisect segments between points, keeping the half with the larger ratio: a segment closes in on
    a jump (the ratio doubles per step) or on the steepest point; stops after `patience` flat steps."""
    P, n = X.shape
    B = s.project(
        X[torch.randperm(P, generator=gen)] + torch.randn(P, n, generator=gen, dtype=DTYPE) * scales
    )
    A, (FA, nA), (FB, nB) = X, s.F(X), s.F(B)
    best, still = 0.0, 0
    for _ in range(bisections):
        M = (A + B) / 2
        FM, nM = s.F(M)
        left, right = ratios(A, M, FA, FM, nA, nM), ratios(M, B, FM, FB, nM, nB)
        go_left = left >= right  # (P,)
        L = go_left[:, None]
        if s.keep(torch.where(go_left, left, right), torch.where(L, A, M), torch.where(L, M, B)):
            return
        now = float(torch.where(go_left, left, right).max())
        still = still + 1 if now <= best * 1.01 else 0
        best = max(best, now)
        if still >= patience:
            return
        A, FA, nA = torch.where(L, A, M), torch.where(L, FA, FM), torch.where(go_left, nA, nM)
        B, FB, nB = torch.where(L, M, B), torch.where(L, FM, FB), torch.where(go_left, nM, nB)


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
       gradient of ‖J(x) v‖² (ascent towards the steepest place), projected into the ball.
    2. Bisection of segments between points, keeping the half with the larger ratio.
    Stops early once a ratio exceeds `stop_above`.
    """
    gen = torch.Generator().manual_seed(seed)
    levels = torch.tensor([0.1, 1.0, 10.0, 100.0], dtype=DTYPE).clamp_max(radius / 2)
    scales = levels.repeat((starts + 3) // 4)[:starts, None]
    s = _Search(f, centre.to(DTYPE) if centre is not None else None, radius, stop_above)
    X = s.project(torch.randn(starts, n, generator=gen, dtype=DTYPE) * scales)  # (P, n)
    with input_checks(False):
        X, stopped = _power_stage(s, X, scales, gen, power_steps)
        if not stopped:
            with torch.no_grad():
                _bisect_stage(s, X, scales, gen, bisections, patience)
    return s.best(starts)


def closing_ratio(f: Fn, w: LipschitzWitness, halvings: int = 20) -> float:
    """The witness pair bisected `halvings` more times (keeping the steeper half): a ratio that keeps
    doubling marks a jump, one that settles marks a steep but continuous map."""
    A, B = w.a[None], w.b[None]
    with torch.no_grad(), input_checks(False):
        FA, FB = f(A).reshape(1, -1), f(B).reshape(1, -1)
        nA, nB = torch.linalg.vector_norm(FA, dim=1), torch.linalg.vector_norm(FB, dim=1)
        r = w.ratio
        for _ in range(halvings):
            M = (A + B) / 2
            FM = f(M).reshape(1, -1)
            nM = torch.linalg.vector_norm(FM, dim=1)
            left, right = ratios(A, M, FA, FM, nA, nM), ratios(M, B, FM, FB, nM, nB)
            if bool(left >= right):
                B, FB, nB, r = M, FM, nM, float(left)
            else:
                A, FA, nA, r = M, FM, nM, float(right)
    return r


def bounds_search(
    f: Fn, n: int, *, seed: int = 0, radius: float = math.inf
) -> LipschitzWitness | None:
    """The Jacobian search of `proofs_numeric.bounds` (screening, power iteration, Danskin ascent,
    pair ascent) on f, turned into a witness pair (x ± h v at its best point and direction, with the
    same rounding margin). None if f cannot go through it (e.g. data-dependent Python)."""
    from ..bounds.empirical import Probe, Region, search

    gen = torch.Generator().manual_seed(seed)
    levels = torch.tensor([0.1, 1.0, 10.0, 100.0], dtype=DTYPE).clamp_max(radius / 2)
    X = torch.randn(16, n, generator=gen, dtype=DTYPE) * levels.repeat(4)[:, None]  # (16, n)
    bounded = math.isfinite(radius)
    region = (
        Region(torch.zeros(1, n, dtype=DTYPE), torch.zeros(16, dtype=torch.long), radius)
        if bounded
        else Region(None, None, 0.0)
    )
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
