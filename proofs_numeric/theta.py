"""A decision procedure for Θ between polynomial and rational expressions (Newton polytopes, exact LP).

Setting. Variables `v = (v_1..v_k)` range over `[1, ∞)^k`, restricted by declared assumptions, and all of
them tend to ∞. `f = O(g)` means: there are `C` and `v0` with `|f(v)| ≤ C g(v)` wherever every `v_i ≥ v0`
(and the assumptions hold). `f = Θ(g)` means `f = O(g)` and `g = O(f)`.

Positive polynomials. Write `u = log v`; a monomial `v^a` is `e^{a·u}`, and a polynomial
`g = Σ_j c_j v^{b_j}` with all `c_j > 0` lies within constant factors of `max_j e^{b_j·u}`. The region
`{u ≥ u0, assumptions}` is a polyhedron whose recession cone is `D = {d ≥ 0, h_l·d ≤ 0}` (an assumption
`v^p ≤ c·v^q` gives `h = p − q`). Then `v^a = O(g)` iff `a·d ≤ max_j b_j·d` for every `d ∈ D`, and by the
minimax theorem (LP duality) iff

    ∃ λ ≥ 0, Σ_j λ_j = 1, ν ≥ 0:   Σ_j λ_j b_j + Σ_l ν_l h_l ≥ a   (componentwise),

i.e. `a` lies in the downward closure of the Newton polytope `conv{b_j}`, widened along the assumptions.
`f = O(g)` iff every exponent vector of `f` passes. Without assumptions this is the classical
criterion (Newton polytope, downward closure). The LP is solved exactly (sympy's rational simplex).

Signs. A polynomial with negative coefficients, `f = P − Q` (`P, Q` positive parts), is in the decidable
class when every monomial `v^a` of `Q` is *strictly* dominated: some `c = Σ λ_j b_j + Σ ν_l h_l − a ≥ 0`
with `c ≠ 0` (then `v^a / P → 0` as all variables grow, so `f = Θ(P)`). Otherwise (e.g. `n − r` under
`r ≤ n`, which vanishes on `r = n`) the procedure raises `ThetaUndecided` instead of guessing.

Constants. Only the directions of the assumptions matter: `r <= n` and `2r <= n` give the same cone,
so a difference that needs the constant (`n − r` under `2r <= n`) is not decided (it raises). A
witness path (`growth_witness`) respects the assumptions up to constant factors.

Rationals. `f = p/q`: both parts are reduced to their positive dominant parts, and
`p/q = O(s/t)` iff `p·t = O(s·q)` (all positive for large v). Exponents may be rational (`sqrt(n)`).
Symbols outside `variables` are constants: a coefficient must have a known sign. Anything else (log,
exp, a sign-unknown coefficient, an assumption that is not monomial ≤ monomial) raises `ThetaUndecided`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import sympy as sp
from sympy.solvers.simplex import InfeasibleLPError, UnboundedLPError, linprog

from moelora_core import symbols as S
from moelora_core.errors import ConfigError

Exponent = tuple[sp.Rational, ...]
Assumption: TypeAlias = "sp.Basic | str"  # a sympy relation, or a string such as "r <= n"


class ThetaUndecided(ConfigError):
    """The expression or an assumption lies outside the class the Θ procedure decides."""


@dataclass(frozen=True)
class Region:
    """The asymptotic region: variables (in order) and the rows h_l of the cone D = {d ≥ 0, h·d ≤ 0}."""

    variables: tuple[sp.Symbol, ...]
    rows: tuple[Exponent, ...]


def _monomials(expr: sp.Expr, vs: Sequence[sp.Symbol], what: str) -> dict[Exponent, sp.Expr]:
    """expr (a polynomial in vs, rational exponents allowed) as {exponent vector: coefficient}."""
    out: dict[Exponent, sp.Expr] = {}
    for term in sp.Add.make_args(sp.expand(expr)):
        coeff: sp.Expr = sp.Integer(1)
        exps = {v: sp.Integer(0) for v in vs}
        for factor in sp.Mul.make_args(term):
            base, e = factor.as_base_exp()
            if base in exps and e.is_Rational:
                exps[base] += e
            elif factor.free_symbols & set(vs):
                raise ThetaUndecided(
                    f"{what}: factor {factor} of term {term} is not a rational power of one of the "
                    f"variables {list(vs)}; expected a polynomial or rational expression"
                )
            else:
                coeff *= factor
        key = tuple(sp.Rational(exps[v]) for v in vs)
        out[key] = out.get(key, sp.Integer(0)) + coeff
    return {k: c for k, c in out.items() if sp.expand(c) != 0}


def _assumption_rows(assume: Iterable[Assumption], vs: Sequence[sp.Symbol]) -> list[Exponent]:
    """Each `lhs <= rhs` (monomials; sums on the left allowed) as rows h = p − q of the cone D."""
    rows: list[Exponent] = []
    for a in assume:
        names = {**S.ALL, **{v.name: v for v in vs}}  # the caller's symbols win over the toolkit's
        rel = sp.sympify(a, locals=names) if isinstance(a, str) else a
        if not isinstance(rel, sp.Basic) or not rel.free_symbols & set(vs):
            raise ThetaUndecided(
                f"assume={a!r}: mentions none of the variables {list(vs)}; expected a relation "
                "between them"
            )
        if isinstance(rel, sp.Equality):
            pairs = [(rel.lhs, rel.rhs), (rel.rhs, rel.lhs)]
        elif isinstance(rel, sp.core.relational.LessThan | sp.core.relational.StrictLessThan):
            pairs = [(rel.lhs, rel.rhs)]
        elif isinstance(rel, sp.core.relational.GreaterThan | sp.core.relational.StrictGreaterThan):
            pairs = [(rel.rhs, rel.lhs)]
        else:
            raise ThetaUndecided(
                f"assume={a!r}: expected a relation lhs <= rhs, lhs >= rhs or lhs = rhs"
            )
        for small, big in pairs:
            big_m = _monomials(big, vs, f"assumption {a}")
            small_m = _monomials(small, vs, f"assumption {a}")
            if len(big_m) != 1 or not all(
                c.is_positive for c in [*big_m.values(), *small_m.values()]
            ):
                raise ThetaUndecided(
                    f"assume={a!r}: expected (sum of positive monomials) <= (one positive monomial)"
                )
            (q,) = big_m
            rows.extend(tuple(pi - qi for pi, qi in zip(p, q, strict=True)) for p in small_m)
    return rows


def region(variables: Iterable[sp.Symbol], assume: Iterable[Assumption] = ()) -> Region:
    """The region of `variables` -> ∞ under `assume`; raises if the assumptions keep a variable bounded."""
    return _region(tuple(variables), tuple(assume))


@functools.lru_cache(maxsize=256)
def _region(vs: tuple[sp.Symbol, ...], assume: tuple[Assumption, ...]) -> Region:
    if not vs or len(set(vs)) != len(vs):
        raise ConfigError(f"variables={list(vs)}: expected distinct sympy symbols, at least one")
    reg = Region(vs, tuple(_assumption_rows(assume, vs)))
    # every variable must be able to grow: some d ∈ D with all d_i ≥ 1 (d ≥ 0 is linprog's default)
    k = len(vs)
    A = [[-int(i == j) for j in range(k)] for i in range(k)] + [list(h) for h in reg.rows]
    b = [-1] * k + [0] * len(reg.rows)
    try:
        linprog(sp.Matrix([0] * k), sp.Matrix(A), sp.Matrix(b))
    except InfeasibleLPError:
        raise ThetaUndecided(
            f"assume={list(assume)}: the assumptions keep some variable of {list(vs)} bounded; "
            "expected a region where all of them can grow"
        ) from None
    return reg


def _domination(
    a: Exponent, bs: Sequence[Exponent], reg: Region, *, strict: bool
) -> sp.Rational | None:
    """max Σ_i c_i over c = Σ λ_j b_j + Σ ν_l h_l − a ≥ 0, None if infeasible. Without `strict` any
    feasible value may be returned; with it, a positive lower bound or the optimum.

    Bounded: `region` checked some d with all d_i ≥ 1 and h·d ≤ 0, so no ν ≥ 0 has Hν ≥ 0, Hν ≠ 0.

    Feasible: v^a = O(Σ_j v^{b_j}) on the region. Positive optimum: v^a = o(Σ_j v^{b_j})."""
    covering = [b for b in bs if all(bi >= ai for bi, ai in zip(b, a, strict=True))]
    if covering:  # a vertex covers a: feasible without an LP; strict unless a is that vertex
        best = max(sp.Rational(sum(b) - sum(a)) for b in covering)
        if best > 0 or not strict:
            return best  # a lower bound on the LP's optimum: enough for "feasible" and for "> 0"
    return _lp(a, tuple(bs), reg)


@functools.lru_cache(maxsize=4096)
def _lp(a: Exponent, bs: tuple[Exponent, ...], reg: Region) -> sp.Rational | None:
    k, J, L = len(a), len(bs), len(reg.rows)
    # columns: λ_1..λ_J, ν_1..ν_L (all >= 0); rows of M: (Σ λ_j b_j + Σ ν_l h_l)_i
    M = sp.Matrix([[*(b[i] for b in bs), *(h[i] for h in reg.rows)] for i in range(k)])
    ones = sp.Matrix([[1] * k])
    A, rhs = -M, sp.Matrix([-ai for ai in a])  # c_i >= 0
    A_eq, b_eq = sp.Matrix([[1] * J + [0] * L]), sp.Matrix([1])  # Σ λ_j = 1
    try:
        value, _ = linprog(-(ones * M), A, rhs, A_eq, b_eq)  # min −Σ_i (M x)_i
    except InfeasibleLPError:
        return None
    except UnboundedLPError:  # excluded by `region` (no ν ≥ 0 with Hν ≥ 0, Hν ≠ 0); kept explicit
        return sp.Integer(1)
    return sp.Rational(-value - sum(a))


def dominant_part(expr: sp.Expr, reg: Region, what: str = "expression") -> list[Exponent]:
    """Exponent vectors of the positive part P of a polynomial `expr = P − Q` that is Θ(P).

    Raises ThetaUndecided when a coefficient's sign is unknown, when `expr` is not eventually positive,
    or when a negative monomial is not strictly dominated by P on the region."""
    terms = _monomials(expr, reg.variables, what)
    pos, neg = [], []
    for e, coeff in terms.items():
        if coeff.is_positive:
            pos.append(e)
        elif coeff.is_negative:
            neg.append(e)
        else:
            raise ThetaUndecided(
                f"{what}: coefficient {coeff} of the monomial with exponents {e} has an unknown sign"
            )
    if not pos:
        raise ThetaUndecided(f"{what} = {expr}: expected an eventually positive expression")
    for a in neg:
        value = _domination(a, pos, reg, strict=True)
        if value is None or value <= 0:
            raise ThetaUndecided(
                f"{what} = {expr}: the negative term with exponents {a} is not strictly dominated by "
                "the positive terms on the region, so the sign or the order of the difference is not "
                "decided here"
            )
    return pos


def _as_fraction(expr: sp.Expr, reg: Region, what: str) -> tuple[list[Exponent], list[Exponent]]:
    expr = sp.sympify(expr)
    if any(p.exp.is_negative for p in expr.atoms(sp.Pow)):
        num, den = sp.together(expr).as_numer_denom()
    else:  # a polynomial: skip `together`, the costly part
        num, den = expr, sp.Integer(1)
    if num == 0:
        return [], dominant_part(den, reg, f"{what} (denominator)")
    return dominant_part(num, reg, f"{what} (numerator)"), dominant_part(
        den, reg, f"{what} (denominator)"
    )


def _products(xs: list[Exponent], ys: list[Exponent]) -> list[Exponent]:
    return sorted({tuple(a + b for a, b in zip(x, y, strict=True)) for x in xs for y in ys})


def big_o_region(f: sp.Expr, g: sp.Expr, reg: Region) -> bool:
    """Decide f = O(g) on the region (see the module docstring)."""
    fn, fd = _as_fraction(f, reg, "f")
    gn, gd = _as_fraction(g, reg, "g")
    if not fn:
        return True  # f ≡ 0
    if not gn:
        return False  # g ≡ 0 and f is eventually positive
    lhs, rhs = _products(fn, gd), _products(gn, fd)  # f/g = (fn·gd) / (gn·fd)
    return all(_domination(a, rhs, reg, strict=False) is not None for a in lhs)


def _unbounded_direction(
    a: Exponent, bs: Sequence[Exponent], reg: Region
) -> tuple[int, ...] | None:
    """Integer d >= 1 in D with a·d > max_j b_j·d (v = t^d makes v^a / Σ_j v^{b_j} -> ∞), or None.

    LP: max τ (capped at 1) over d_i >= 1, h·d <= 0, (b_j − a)·d + τ <= 0. By the minimax argument in the
    module docstring such a d exists iff v^a is not O(Σ_j v^{b_j}); d is then made integral by scaling."""
    k = len(a)
    rows = [[*(bi - ai for bi, ai in zip(b, a, strict=True)), 1] for b in bs]
    rows += [[*h, 0] for h in reg.rows]
    rows += [[-int(i == j) for j in range(k)] + [0] for i in range(k)]  # d_i >= 1
    rows += [[0] * k + [1]]  # τ <= 1
    rhs = [0] * (len(bs) + len(reg.rows)) + [-1] * k + [1]
    bounds = [(0, None)] * k + [(None, None)]
    try:
        value, x = linprog(
            sp.Matrix([0] * k + [-1]), sp.Matrix(rows), sp.Matrix(rhs), bounds=bounds
        )
    except InfeasibleLPError:
        return None
    if -value <= 0:
        return None
    d = [sp.Rational(v) for v in x[:k]]
    scale = sp.ilcm(*(v.q for v in d))
    return tuple(int(v * scale) for v in d)


def growth_witness(f: sp.Expr, g: sp.Expr, reg: Region) -> tuple[int, ...] | None:
    """A path v = t^d (integers d >= 1, inside the region's cone) along which f/g -> ∞, or None if
    f = O(g) on the region."""
    fn, fd = _as_fraction(f, reg, "f")
    gn, gd = _as_fraction(g, reg, "g")
    if not fn or not gn:
        return None
    lhs, rhs = _products(fn, gd), _products(gn, fd)
    for a in lhs:
        if _domination(a, rhs, reg, strict=False) is None:
            return _unbounded_direction(a, rhs, reg)
    return None
