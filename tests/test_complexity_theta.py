"""The Θ decision procedure (`proofs_numeric.theta`, `complexity.same_theta` / `big_o`): decided cases,
the path test's blind spot, assumptions, and the clear errors outside the decidable class."""

from __future__ import annotations

from typing import Any

import pytest
import sympy as sp

from moelora_core import symbols as S
from moelora_core.errors import ConfigError
from proofs_numeric.complexity import ThetaUndecided, big_o, same_theta, theta_path_refuter

n, m, r, N, E = S.n, S.m, S.r, S.N, S.E


def test_issue_example_refuted_where_paths_accept() -> None:
    f, g = n**6 + r**5, n**6 + r**5 + n**3 * r**3
    assert theta_path_refuter(f, g, [n, r]) is None  # the old test sees no difference
    assert not same_theta(f, g, [n, r])
    # the ratio is unbounded along n = t^10, r = t^13: (n³r³)/(n⁶ + r⁵) = t^69 / (t^60 + t^65)
    t = sp.Symbol("t", positive=True)
    assert sp.limit((g / f).subs({n: t**10, r: t**13}), t, sp.oo) == sp.oo
    assert same_theta(f, n**6 + r**5 + n**2 * r**2, [n, r])  # 2/6 + 2/5 < 1


def test_classes_of_the_toolkit() -> None:
    assert same_theta(N * r, N * r + 3, [N, r, n])
    assert not same_theta(N * r, N * n, [N, r, n])
    assert same_theta(r * (n + m) + N * r**2 + N * r, (n + m) * r + N * r**2, [n, m, r, N])
    assert not same_theta(r * (n + m) + N * r**2, N * r * (n + m), [n, m, r, N])
    # rational: TalkLoRA's r²/E; E·r is dominated only once E <= r <= n is assumed
    talk = r * n + r**2 / E + E**2 + E * r + r * m
    assert not same_theta(talk, r * (n + m) + E**2 + r**2 / E, [n, m, r, E])
    assert same_theta(
        talk, r * (n + m) + E**2 + r**2 / E, [n, m, r, E], assume=["E <= r", "r <= n"]
    )
    assert same_theta(sp.sqrt(n) + n, n, [n])  # rational exponents


def test_assumptions_as_relations_and_strings() -> None:
    assert big_o(r, n, [n, r], assume=[sp.Le(r, n)])
    assert big_o(r, n, [n, r], assume=["n >= r"])
    assert big_o(r * m, n**2, [n, m, r], assume=["r + m <= n"])
    assert not big_o(r * m, n, [n, m, r], assume=["r + m <= n"])
    assert same_theta(r, n, [n, r], assume=["Eq(r, 2*n)"])
    assert big_o(r, 0 * n + n, [n, r], assume=["r < n"])


def test_negative_coefficients() -> None:
    assert same_theta(n**2 - n, n**2, [n])
    assert same_theta(n * m - m, n * m, [n, m])
    with pytest.raises(ThetaUndecided, match="not strictly dominated"):
        same_theta(n - r, n, [n, r], assume=["r <= n"])  # vanishes on r = n
    with pytest.raises(ThetaUndecided, match="eventually positive"):
        same_theta(-n, n, [n])


@pytest.mark.parametrize(
    ("f", "g", "kw", "match"),
    [
        (sp.log(n), n, {}, "not a rational power"),
        (sp.exp(n), n, {}, "not a rational power"),
        (n * (S.L - 3), n, {}, "unknown sign"),
        (n, n, {"assume": ["n <= 5"]}, "bounded"),
        (n, n, {"assume": ["n <= r + m"]}, "one positive monomial"),
        (n, n, {"assume": ["n"]}, "expected a relation"),
    ],
)
def test_outside_the_class_raises(f: Any, g: Any, kw: dict[str, Any], match: str) -> None:
    variables = [n, r, m]
    with pytest.raises(ThetaUndecided, match=match):
        same_theta(f, g, variables, **kw)


def test_errors_are_config_errors() -> None:
    assert issubclass(ThetaUndecided, ConfigError)
    with pytest.raises(ConfigError, match="variables"):
        same_theta(n, n, [])
