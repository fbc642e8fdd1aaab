"""Formula declarations: `param_formula` (counted parameters == a sympy formula, exactly, on drawn
instances and, in the adversarial phase, at extreme sizes) and `complexity` (f = Θ(g), optionally under
assumptions such as `assume="r <= n"`)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from functools import lru_cache
from typing import Any

import sympy as sp
from hypothesis import strategies as st

from moelora_core import symbols as S
from moelora_core.adapter import Adapter
from moelora_core.errors import input_checks

from ..checking import Claim, ClaimError, Outcome
from ..complexity import counted_macs_per_token, same_theta, theta_witness
from .base import (
    Declaration,
    Draw,
    VariantCase,
    VariantError,
    check_expect,
    instance_declaration,
)

# Names a formula may use as functions or constants; every other name is a positive symbol, so that
# `I`, `E`, `N`, `S`, `Q`, `O` are never sympy's imaginary unit, Euler's number, N(), ... by accident.
FUNCTIONS: dict[str, Any] = {
    "sqrt": sp.sqrt, "log": sp.log, "exp": sp.exp, "Max": sp.Max, "Min": sp.Min, "Abs": sp.Abs,
    "floor": sp.floor, "ceiling": sp.ceiling, "pi": sp.pi, "oo": sp.oo, "Rational": sp.Rational,
}  # fmt: skip
RESERVED = {sp.I: "the imaginary unit I", sp.E: "Euler's number E", sp.zoo: "zoo", sp.nan: "nan"}
LAYER_FIELDS = ("num_layers", "layers", "n_layers")  # config fields that give L


def symbol(name: str) -> sp.Symbol:
    return S.ALL.get(name) or sp.Symbol(name, positive=True)


def parse(text: str, what: str) -> sp.Basic:
    """A formula or relation read with a local namespace: every name is a symbol (the toolkit's own
    n, m, r, r_e, E, N, L where it is one of them) or one of `FUNCTIONS`."""
    names = set(re.findall(r"[A-Za-z_]\w*", text))
    local = {nm: FUNCTIONS[nm] if nm in FUNCTIONS else symbol(nm) for nm in names}
    try:
        out: sp.Basic = sp.sympify(text, locals=local)
    except (sp.SympifyError, SyntaxError, TypeError, AttributeError) as e:
        raise VariantError(f"{what}={text!r}: not a formula sympy can read ({e})") from None
    return out


def canonical(expr: sp.Expr | str | int, what: str) -> sp.Expr:
    """A formula in `moelora_core.symbols` (n, m, r, r_e, E, N, L); other names are positive symbols."""
    out = parse(expr, what) if isinstance(expr, str) else sp.sympify(expr)
    if not isinstance(out, sp.Expr):
        raise VariantError(f"{what}={expr!r}: expected an expression, got {type(out).__name__}")
    for const, label in RESERVED.items():
        if out.has(const):
            raise VariantError(
                f"{what}={expr!r} contains sympy's {label}; write the formula as a string (every name "
                "is then a symbol) or use sympy.Symbol for a symbol of that name"
            )
    subs = {s: symbol(s.name) for s in out.free_symbols if isinstance(s, sp.Symbol)}
    result: sp.Expr = out.xreplace(subs)
    return result


def assumptions(assume: str | sp.Basic | Sequence[str | sp.Basic] | None) -> tuple[sp.Basic, ...]:
    """`"r <= n, E <= n"`, a list of such strings, or sympy relationals -> relationals."""
    if assume is None:
        return ()
    items: list[str | sp.Basic] = (
        [p for p in re.split(r"[,;]", assume) if p.strip()]
        if isinstance(assume, str)
        else [assume] if isinstance(assume, sp.Basic) else list(assume)
    )  # fmt: skip
    out = []
    for item in items:
        rel = parse(item.strip(), "assume") if isinstance(item, str) else item
        if not isinstance(rel, sp.core.relational.Relational):
            raise VariantError(f"assume={item!r}: expected an inequality such as 'r <= n'")
        out.append(rel.xreplace({s: symbol(s.name) for s in rel.free_symbols}))
    return tuple(out)


@lru_cache(maxsize=256)
def sstr(expr: sp.Expr) -> str:
    """str(expr), memoised: sympy's printer costs more than the check it reports on."""
    return str(expr)


def variables_of(
    variables: Sequence[sp.Symbol | str] | str | None, *exprs: sp.Expr
) -> list[sp.Symbol]:
    if variables is None:
        found: set[sp.Symbol] = set()
        for e in exprs:
            found |= {s for s in e.free_symbols if isinstance(s, sp.Symbol)}
        return sorted(found, key=lambda s: s.name)
    names = (
        re.split(r"[\s,]+", variables.strip()) if isinstance(variables, str) else list(variables)
    )
    return [symbol(v if isinstance(v, str) else v.name) for v in names]


def instance_values(a: Adapter, subs: Callable[[Any], Mapping[Any, int]] | None) -> dict[str, int]:
    """Values of formula symbols for one instance: n, m, E; the config's integer fields by name (and
    L from num_layers / layers / n_layers); the adapter's `param_subs()`; then the user's `subs`."""
    vals: dict[str, int] = {"n": a.in_features, "m": a.out_features, "E": a.num_experts}
    cfg = a.config
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if isinstance(value, int) and not isinstance(value, bool):
                vals.setdefault(f.name, value)
                if f.name in LAYER_FIELDS:
                    vals.setdefault("L", value)
    with suppress(NotImplementedError):
        vals.update({k.name: int(v) for k, v in a.param_subs().items()})
    if subs is not None:
        vals.update(
            {(k if isinstance(k, str) else k.name): int(v) for k, v in subs(a.config).items()}
        )
    return vals


def param_formula(
    expr: sp.Expr | str | None = None,
    *,
    subs: Callable[[Any], Mapping[Any, int]] | None = None,
    name: str = "param_formula",
    statement: str | None = None,
    expect: str = "holds",
    shapes: Mapping[str, Any] | None = None,
    where: Callable[[Any], bool] | None = None,
    max_examples: int | None = None,
) -> Declaration:
    """Counted trainable parameters (`num_trainable_params()`) == `expr` on every drawn instance, and
    in the adversarial phase at the ends of every integer range of `shapes` and 16x, 256x beyond
    (counted on the meta device: no memory).

    `expr`: sympy, or a string in n, m, r, r_e, E, N, L and the config's integer field names (None:
    the adapter's own `param_formula()`). Symbol values: n, m, E from the adapter, the config's integer
    fields (L from num_layers), the adapter's `param_subs()`, then `subs(config)`. A symbol with no
    value is an error of the declaration (verdict error), not a refutation."""
    formula = canonical(expr, "param_formula") if expr is not None else None
    text = statement or (
        f"counted trainable parameters of {{variant}} = "
        f"{formula if formula is not None else 'param_formula()'}"
    )

    def case(v: Any, c: VariantCase) -> Outcome:
        a = c.build()
        f = formula if formula is not None else canonical(a.param_formula(), "param_formula()")
        return formula_outcome(a, f, subs, a.num_trainable_params(), "num_trainable_params()")

    draw = Draw(shapes, None, where, max_examples, search="sizes")
    return instance_declaration("param_formula", name, text, expect, draw, case, False)


def formula_outcome(
    a: Adapter, f: sp.Expr, subs: Callable[[Any], Mapping[Any, int]] | None, counted: int, how: str
) -> Outcome:
    """|counted - f(instance's values)|, exact; ClaimError for a symbol with no value."""
    vals = instance_values(a, subs)
    missing = sorted(s.name for s in f.free_symbols if s.name not in vals)
    if missing:
        raise ClaimError(
            f"formula {sstr(f)}: no value for symbol(s) {missing}; known {sorted(vals)}: "
            "pass subs=lambda config: {...}"
        )
    value = f.xreplace({s: vals[s.name] for s in f.free_symbols})
    at = ", ".join(f"{s.name}={vals[s.name]}" for s in sorted(f.free_symbols, key=lambda s: s.name))
    detail = f"counted {counted} ({how}), formula {sstr(f)} = {value} at {at}"
    return Outcome(float(abs(counted - value)), 0.0, detail)


def mac_formula(
    expr: sp.Expr | str | None = None,
    *,
    subs: Callable[[Any], Mapping[Any, int]] | None = None,
    name: str = "mac_formula",
    statement: str | None = None,
    expect: str = "holds",
    shapes: Mapping[str, Any] | None = None,
    where: Callable[[Any], bool] | None = None,
    max_examples: int | None = None,
) -> Declaration:
    """Matmul multiply-adds per token of the forward pass (`complexity.counted_macs_per_token`: the
    FLOPs torch dispatches for 2 tokens minus 1 token, halved) == `expr` (None: the adapter's own
    `macs_formula()` method), on drawn instances and, in the adversarial phase, at extreme sizes
    (counted on the meta device). Symbols as in `param_formula`."""
    formula = canonical(expr, "mac_formula") if expr is not None else None
    shown = formula if formula is not None else "macs_formula()"
    text = statement or f"matmul MACs per token of {{variant}} = {shown}"

    def case(v: Any, c: VariantCase) -> Outcome:
        a = c.build()
        f = formula
        if f is None:
            try:
                f = canonical(a.macs_formula(), "macs_formula()")
            except NotImplementedError:
                raise ClaimError(
                    f"{type(a).__name__} has no macs_formula() method: pass the formula"
                ) from None
        with input_checks(False):  # no value checks: the instance may live on the meta device
            counted = counted_macs_per_token(a)
        return formula_outcome(a, f, subs, counted, "counted_macs_per_token")

    draw = Draw(shapes, None, where, max_examples, search="sizes")
    return instance_declaration("mac_formula", name, text, expect, draw, case, False)


def why_not_theta(f: sp.Expr, g: sp.Expr, vs: list[sp.Symbol], assume: tuple[sp.Basic, ...]) -> str:
    """The growth path of `complexity.theta_witness` along which f/g or g/f diverges, as text."""
    found = theta_witness(f, g, vs, assume=assume)
    if found is None:
        return "no diverging path found"
    path, ratio = found
    return "along " + ", ".join(f"{v.name}=t^{a}" for v, a in path.items()) + f": {ratio} -> oo"


def complexity(
    expr: sp.Expr | str | None,
    theta: sp.Expr | str,
    variables: Sequence[sp.Symbol | str] | str | None = None,
    *,
    assume: str | sp.Basic | Sequence[str | sp.Basic] | None = None,
    where: Callable[[Any], bool] | None = None,
    name: str = "complexity",
    statement: str | None = None,
    expect: str = "holds",
    max_examples: int | None = None,
) -> Declaration:
    """`expr` = Θ(`theta`) as `variables` (default: every symbol of both) grow, each at its own rate,
    in the regime `assume` (inequalities such as "r <= n", as a string, a list or sympy relationals;
    `complexity.same_theta`). `expr=None` checks the adapter's own `param_formula()` on drawn
    instances (restricted by `where`)."""
    g = canonical(theta, "theta")
    f = canonical(expr, "complexity") if expr is not None else None
    rels = assumptions(assume)
    regime = f" assuming {', '.join(str(r) for r in rels)}" if rels else ""
    text = statement or f"{f if f is not None else 'param_formula()'} = Θ({g}){regime}"
    exp = check_expect(expect)
    memo: dict[str, tuple[bool, str]] = {}

    def verdict(fx: sp.Expr) -> Outcome:
        key = sp.srepr(fx)
        if key not in memo:
            vs = variables_of(variables, fx, g)
            ok = same_theta(fx, g, vs, assume=rels)
            why = "" if ok else "; " + why_not_theta(fx, g, vs, rels)
            memo[key] = ok, f"f = {fx}, g = {g}, variables {[v.name for v in vs]}{regime}{why}"
        ok, detail = memo[key]
        return Outcome(0.0 if ok else 1.0, 0.5, detail)

    if f is not None:
        if where is not None:
            raise VariantError(
                "complexity(expr, ..., where=...): a symbolic claim has no instances to filter; "
                "state its regime with assume=, or pass expr=None to check drawn param_formula()s"
            )

        def make(v: Any, full: str) -> Claim[Any]:
            return Claim(full, text, st.just(None), lambda _: verdict(f), exp,
                         spec=f"variant {v.name} ({v.source or 'in memory'})", max_examples=1,
                         describe=lambda _: f"symbolic: {f} vs Θ({g}){regime}")  # fmt: skip

        return Declaration("complexity", name, text, exp, make)

    def case(v: Any, c: VariantCase) -> Outcome:
        return verdict(canonical(c.build().param_formula(), "param_formula()"))

    draw = Draw(None, None, where, max_examples, search="")
    decl = instance_declaration("complexity", name, text, expect, draw, case, False)
    return decl
