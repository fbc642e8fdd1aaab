"""The study's statistics against textbook values, with mutated twins that must disagree."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("scipy")

from moelora_core.errors import ConfigError
from moelora_experiments.study.stats import holm, paired, seeds_needed, verdict, with_holm

A = [0.91, 0.93, 0.92, 0.95, 0.94]
B = [0.90, 0.90, 0.91, 0.92, 0.90]


def test_paired_matches_the_formula() -> None:
    from scipy import stats

    c = paired("accuracy", "a", A, "b", B)
    d = np.array(A) - np.array(B)
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert c.diff == pytest.approx(d.mean())
    assert (c.t_low, c.t_high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert c.d_z == pytest.approx(d.mean() / d.std(ddof=1))
    assert c.boot_low <= c.diff <= c.boot_high
    assert d.min() <= c.boot_low and c.boot_high <= d.max()  # percentile interval of a mean
    # mutated twin: an unpaired comparison gives a different (wider) interval on the same data
    w = stats.ttest_ind(A, B).confidence_interval()
    assert (w.high - w.low) > (c.t_high - c.t_low)


def test_holm_known_example() -> None:
    # m = 4; sorted p: .01 .02 .03 .04 -> 4*.01=.04, 3*.02=.06, 2*.03=.06, 1*.04=.04 -> cummax
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    bonferroni = [min(1.0, 4 * p) for p in (0.03, 0.01, 0.04, 0.02)]
    assert holm([0.03, 0.01, 0.04, 0.02]) != pytest.approx(bonferroni)  # the twin Holm improves on
    with pytest.raises(ConfigError, match="pvalues"):
        holm([0.1, 1.5])


def test_seeds_needed_matches_power_tables() -> None:
    # two-sided paired t test, alpha 0.05, power 0.8 (G*Power): d_z 0.5 -> 34, 1.0 -> 10, 0.2 -> 199
    assert seeds_needed(0.5) == 34
    assert seeds_needed(1.0) == 10
    assert seeds_needed(-0.2) == 199
    assert seeds_needed(0.0) is None
    assert seeds_needed(0.5, alpha=0.01) > 34


def test_verdicts() -> None:
    (c,) = with_holm([paired("accuracy", "a", A, "b", B)])
    assert verdict(c, "greater")[0] == "supports"
    assert verdict(c, "less")[0] == "contradicts"
    assert verdict(c, "noninferior", margin=0.01)[0] == "supports"
    noisy = [0.90, 0.95, 0.88, 0.97, 0.89]
    (n,) = with_holm([paired("accuracy", "a", noisy, "b", B)])
    word, why = verdict(n, "greater")
    assert word == "cannot resolve" and "seeds would be needed" in why
    same = with_holm([paired("x", "a", B, "b", B)])[0]
    assert verdict(same, "greater")[0] == "cannot resolve"
    with pytest.raises(ConfigError, match="with_holm"):
        verdict(paired("accuracy", "a", A, "b", B), "greater")


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="sizes"):
        paired("x", "a", [1.0, 2.0], "b", [1.0])
    with pytest.raises(ConfigError, match="at least 2"):
        paired("x", "a", [1.0], "b", [1.0])
    with pytest.raises(ConfigError, match="finite"):
        paired("x", "a", [1.0, math.nan], "b", [1.0, 2.0])
