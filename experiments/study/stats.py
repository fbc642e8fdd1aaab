"""Paired comparisons across seeds, Holm–Bonferroni, and one verdict sentence per claim.

For a claim "metric of `a` is larger (or smaller) than that of `b`", each seed s gives one pair
(a_s, b_s) trained from the same seed, data order and evaluation set; the analysis is on the paired
differences d_s = a_s − b_s (n seeds):

    mean  d̄ = Σ d_s / n,   sd = sqrt(Σ (d_s − d̄)² / (n − 1)),   d_z = d̄ / sd   (paired Cohen's d)
    t interval   d̄ ± t_{1−α/2, n−1} · sd / √n   (scipy.stats.ttest_rel(...).confidence_interval)
    bootstrap    percentile interval of the mean of resampled d (scipy.stats.bootstrap)

p-values of the family are adjusted by Holm's step-down method: sort p_(1) ≤ … ≤ p_(m), adjusted
p_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j)). The seeds needed for power 1 − β at level α (two-sided
paired t test) are the smallest n with

    P(|T| > t_{1−α/2, n−1}) ≥ 1 − β,   T ~ noncentral t(n − 1, d_z √n),

using the observed d_z (an estimate: with 5 seeds it is itself uncertain, and the report says so).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from moelora_core.errors import ConfigError

Direction = Literal["greater", "less", "noninferior"]
MAX_SEEDS = 100_000


@dataclass(frozen=True)
class Paired:
    """One paired comparison a − b across seeds."""

    metric: str
    a: str
    b: str
    n: int
    mean_a: float
    mean_b: float
    diff: float  # d̄
    sd: float  # sd of the differences
    t_low: float
    t_high: float
    boot_low: float
    boot_high: float
    p: float  # two-sided paired t test (1.0 when every difference is 0)
    d_z: float  # d̄ / sd (±inf when sd = 0 and d̄ ≠ 0, 0 when both are 0)
    p_holm: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_pairs(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.shape != xb.shape or xa.ndim != 1:
        raise ConfigError(f"paired samples of sizes {xa.shape} and {xb.shape}: expected equal 1-D")
    if xa.size < 2:
        raise ConfigError(f"n={xa.size} pairs: expected at least 2 seeds")
    if not (np.isfinite(xa).all() and np.isfinite(xb).all()):
        raise ConfigError("paired samples contain NaN or inf: expected finite metrics")
    return xa, xb


def paired(
    metric: str,
    a_name: str,
    a: Sequence[float],
    b_name: str,
    b: Sequence[float],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Paired:
    """Paired t interval, bootstrap interval, p-value and d_z of a − b (one value per seed each)."""
    from scipy import stats

    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence={confidence}: expected a number in (0, 1)")
    xa, xb = _check_pairs(a, b)
    d = xa - xb  # (n,)
    n, mean, sd = int(d.size), float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:  # every seed gives the same difference: degenerate intervals, exact answer
        lo = hi = blo = bhi = mean
        p, dz = (1.0, 0.0) if mean == 0.0 else (0.0, math.copysign(math.inf, mean))
    else:
        res = stats.ttest_rel(xa, xb)
        ci = res.confidence_interval(confidence_level=confidence)
        lo, hi, p, dz = float(ci.low), float(ci.high), float(res.pvalue), mean / sd
        boot = stats.bootstrap(
            (d,),
            np.mean,
            confidence_level=confidence,
            n_resamples=n_resamples,
            method="percentile",
            random_state=np.random.default_rng(seed),
        )
        blo, bhi = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    return Paired(
        metric,
        a_name,
        b_name,
        n,
        float(xa.mean()),
        float(xb.mean()),
        mean,
        sd,
        lo,
        hi,
        blo,
        bhi,
        p,
        dz,
    )


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (same order as given)."""
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1 or not ((p >= 0) & (p <= 1)).all():
        raise ConfigError(f"pvalues={list(pvalues)}: expected numbers in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adj = np.maximum.accumulate(adj)
    out = np.empty(m)
    out[order] = adj
    return [float(v) for v in out]


def seeds_needed(d_z: float, *, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Smallest n for a two-sided paired t test to reach `power` at `alpha` if the true effect is
    d_z; None when d_z is 0 (no number of seeds detects no effect) or n would exceed MAX_SEEDS."""
    from scipy import stats

    if not (0.0 < alpha < 1.0 and 0.0 < power < 1.0):
        raise ConfigError(f"alpha={alpha}, power={power}: expected numbers in (0, 1)")
    if d_z == 0.0 or not math.isfinite(d_z):
        return None if d_z == 0.0 else 2

    def pw(n: int) -> float:
        t = float(stats.t.ppf(1 - alpha / 2, n - 1))
        nc = abs(d_z) * math.sqrt(n)
        return float(stats.nct.sf(t, n - 1, nc) + stats.nct.cdf(-t, n - 1, nc))

    lo, hi = 2, 2
    while pw(hi) < power:  # exponential search, then bisection (power grows with n)
        lo, hi = hi, hi * 2
        if hi > MAX_SEEDS:
            return None
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if pw(mid) < power else (lo, mid)
    return hi


def with_holm(comparisons: Sequence[Paired]) -> list[Paired]:
    """The comparisons with `p_holm` filled in over the whole family."""
    from dataclasses import replace

    adj = holm([c.p for c in comparisons]) if comparisons else []
    return [replace(c, p_holm=q) for c, q in zip(comparisons, adj, strict=True)]


def verdict(
    c: Paired, direction: Direction, *, alpha: float = 0.05, margin: float = 0.0, family: int = 1
) -> tuple[str, str]:
    """('supports' | 'contradicts' | 'cannot resolve', one sentence why) for a claim on c.

    greater/less: the claim is a − b > 0 (< 0); decided by the Holm-adjusted p and the sign.
    noninferior: the claim is a − b > −margin; decided by the t interval against −margin.
    The seeds needed for an unresolved claim are computed at α / family (Bonferroni, conservative
    for Holm), from the observed d_z.
    """
    if c.p_holm != c.p_holm:  # NaN: not adjusted
        raise ConfigError(f"comparison {c.a} vs {c.b} on {c.metric}: run with_holm first")
    spread = f"d̄ = {c.diff:+.4g} (95% t CI [{c.t_low:+.4g}, {c.t_high:+.4g}]), seed sd {c.sd:.3g}"
    if direction == "noninferior":
        if c.t_low > -margin:
            return "supports", f"{spread}: the whole interval lies above −{margin:g}."
        if c.t_high < -margin:
            return "contradicts", f"{spread}: the whole interval lies below −{margin:g}."
        return "cannot resolve", f"{spread}: the interval straddles −{margin:g}; " + _more(
            c, alpha / max(1, family)
        )
    sign = 1.0 if direction == "greater" else -1.0
    if c.p_holm < alpha:
        word = "supports" if sign * c.diff > 0 else "contradicts"
        return word, f"{spread}, Holm p = {c.p_holm:.3g} < {alpha:g}, d_z = {c.d_z:+.2f}."
    why = "difference smaller than the seed spread" if abs(c.diff) < c.sd else "not significant"
    return "cannot resolve", f"{spread}, Holm p = {c.p_holm:.2g}: {why}; " + _more(
        c, alpha / max(1, family)
    )


def _more(c: Paired, alpha: float) -> str:
    n = seeds_needed(c.d_z, alpha=alpha)
    if n is None:
        return "no detectable difference at any feasible number of seeds."
    return (
        f"about {max(n, c.n + 1)} seeds would be needed for 80% power at α = {alpha:.2g} "
        f"if the observed d_z = {c.d_z:+.2f} were the true effect."
    )
