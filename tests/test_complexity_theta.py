"""The Θ decision procedure (`proofs_numeric.theta`, `complexity.same_theta` / `big_o`): decided cases,
the path test's blind spot, assumptions, and the clear errors outside the decidable class."""

from __future__ import annotations

from typing import Any

import pytest
import sympy as sp

from moelora_core import symbols as S
from moelora_core.errors import ConfigError
from proofs_numeric.complexity import (
    ThetaUndecided,
    big_o,
    same_theta,
    theta_path_refuter,
    theta_witness,
)

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
        (n, n, {"assume": ["L <= N"]}, "mentions none of the variables"),
    ],
)
def test_outside_the_class_raises(f: Any, g: Any, kw: dict[str, Any], match: str) -> None:
    variables = [n, r, m]
    with pytest.raises(ThetaUndecided, match=match):
        same_theta(f, g, variables, **kw)


def test_assumption_strings_use_the_callers_symbols() -> None:
    a, b = sp.symbols("a b")  # plain symbols, not the toolkit's
    assert big_o(a, b, [a, b], assume=["a <= b"])
    assert not big_o(a, b, [a, b])


def test_errors_are_config_errors() -> None:
    assert issubclass(ThetaUndecided, ConfigError)
    with pytest.raises(ConfigError, match="variables"):
        same_theta(n, n, [])


@pytest.mark.parametrize(
    ("f", "g", "assume"),
    [
        (n**6 + r**5, n**6 + r**5 + n**3 * r**3, ()),
        (N * r, N * n, ()),
        (r, n, ("r <= n",)),
        (n**3 + r**2, n**3 + r**2 + n * r**2, ()),
        (r * n + r**2 / E + E**2 + E * r + r * m, r * (n + m), ()),
    ],
)
def test_witness_path_makes_the_ratio_diverge(f: Any, g: Any, assume: tuple[str, ...]) -> None:
    variables = sorted(f.free_symbols | g.free_symbols, key=str)
    found = theta_witness(f, g, variables, assume=assume)
    assert found is not None and not same_theta(f, g, variables, assume=assume)
    path, label = found
    assert all(e >= 1 for e in path.values())
    t = sp.Symbol("t", positive=True)
    ratio = f / g if label == "f/g" else g / f
    assert sp.limit(ratio.subs({v: t**e for v, e in path.items()}), t, sp.oo) == sp.oo
    assert theta_witness(f, f + 1, variables, assume=assume) is None


def test_interpolated_count_reads_the_module_and_rejects_non_polynomials() -> None:
    from moelora_core.errors import ConfigError as CE
    from proofs_numeric.catalogue.counts import router_count
    from proofs_numeric.complexity import interpolated_count

    assert router_count("comol_core") == N * r
    assert router_count("comol_x") == N * n
    assert router_count("moelora_r") == N * n
    assert interpolated_count(lambda v: v[n] * v[r] ** 2 + 3, [n, r]) == n * r**2 + 3
    with pytest.raises(CE, match="expected a polynomial"):
        interpolated_count(lambda v: 2 ** v[n], [n], degree=2)
