"""Reduction declarations: `reduces_to` (the variant, specialised, is a known architecture) and
`embeds` (every instance of a known architecture is a variant instance).

Both compare Δ(x) and, where both route, the routing weights g(x) on drawn float64 inputs:
`max|a - b| / (1 + max|a|) <= tol` (1e-10 by default), and a failure names which of the two differs,
where, and both values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from hypothesis.strategies import SearchStrategy

from moelora_core.adapter import Adapter
from moelora_core.registry import ARCHITECTURES

from ..checking import EXACT_TOL, Claim, ClaimError, Outcome
from ..outcomes import compare
from ..strategies import CONFIG_STRATEGIES, DTYPE, Case, build_random, cases
from .base import (
    Declaration,
    Draw,
    VariantCase,
    VariantError,
    check_expect,
    instance_declaration,
    named,
)
from .snippet import config_expression


def target_class(target: str | type) -> tuple[str, type[Adapter]]:
    if isinstance(target, str):
        key = target.lower()
        if key not in ARCHITECTURES:
            raise VariantError(
                f"architecture {target!r} is not registered; expected one of {sorted(ARCHITECTURES)}"
            )
        return key, ARCHITECTURES[key]
    if isinstance(target, type) and issubclass(target, Adapter):
        return target.__name__, target
    raise VariantError(
        f"target={target!r}: expected a registered architecture name {sorted(ARCHITECTURES)} or an "
        "Adapter subclass"
    )


def check_embedded(out: object, cls: type | None, what: str) -> str | None:
    """Why the result of an embedding is unusable (ClaimError for a wrong type), or None."""
    if not isinstance(out, Adapter):
        raise ClaimError(f"{what} returned {type(out).__name__}; expected an Adapter")
    if cls is not None and not isinstance(out, cls):
        raise ClaimError(f"{what} returned a {type(out).__name__}; expected a {cls.__name__}")
    bad = {str(p.dtype) for p in out.parameters() if p.dtype != DTYPE}
    if bad:
        return f"{what} returned parameters of dtype {sorted(bad)}; build it with the source's dtype (float64)"
    return None


def reduces_to(
    target: str | type,
    *,
    embed: Callable[[Any], Adapter],
    when: Callable[[Any], object] | None = None,
    shapes: Mapping[str, Any] | None = None,
    configs: SearchStrategy[Any] | None = None,
    where: Callable[[Any], bool] | None = None,
    tol: float = EXACT_TOL,
    name: str | None = None,
    statement: str | None = None,
    expect: str = "holds",
    max_examples: int | None = None,
) -> Declaration:
    """The variant, prepared by `when(adapter)` (in place, under no_grad) on configs restricted by
    `shapes`/`configs`/`where`, equals `embed(adapter)`, an instance of `target` (registered name or
    Adapter subclass): same Δ(x) and, where both route, same g(x), within `tol` (float64)."""
    key, cls = target_class(target)
    if not callable(embed):
        raise VariantError(
            f"reduces_to({key!r}): embed={embed!r}: expected a callable adapter -> {cls.__name__}"
        )
    cond = " with " + ", ".join(f"{k}={v!r}" for k, v in shapes.items()) if shapes else ""
    cond += f" after {named(when)}" if when is not None else ""
    text = (
        statement or f"{{variant}}{cond} equals {cls.__name__} via {named(embed)} (Δ and routing)"
    )

    def case(v: Any, c: VariantCase) -> Outcome:
        a = c.build()
        with torch.no_grad():
            if when is not None:
                when(a)
            t = embed(a)
            why = check_embedded(t, cls, f"embed {named(embed)}")
            if why is not None:
                return Outcome(math.inf, tol, why)
            return compare(
                a, t, c.inputs(a), tol, ("variant", f"{cls.__name__} via {named(embed)}")
            )

    draw = Draw(shapes, configs, where, max_examples)
    return instance_declaration(
        "reduces_to", name or f"reduces_to_{key.lower()}", text, expect, draw, case
    )


def describe_source(variant: Any, c: Case[Any], embed: Callable[[Any], Adapter]) -> str:
    cfg, imports = config_expression(c.config, variant)
    target = variant.origin or variant.source or "<the variant file or module>"
    fn = named(embed)
    own = getattr(variant.module, fn, None) is embed
    call = f"v.module.{fn}(source)" if own else f"{fn}(source)  # the embed given to embeds()"
    return "\n".join([
        f"{c!r}",
        "rebuild:",
        "    import torch",
        "    from proofs_numeric.strategies import Case",
        "    from proofs_numeric.variants import load_variant",
        *(f"    {line}" for line in imports),
        f"    v = load_variant({target!r}, {variant.name!r})",
        f"    case = Case({cfg}, seed={c.seed}, input_seed={c.input_seed}, batch={c.batch})",
        "    source, x = case.build(), case.inputs()",
        "    with torch.no_grad():",
        f"        embedded = {call}",
        "    print(source(x), embedded(x))  # Δ of the source and of its embedding",
    ])  # fmt: skip


def embeds(
    source: str | type,
    *,
    embed: Callable[[Any], Adapter],
    when: Callable[[Any], object] | None = None,
    source_configs: SearchStrategy[Any] | None = None,
    tol: float = EXACT_TOL,
    name: str | None = None,
    statement: str | None = None,
    expect: str = "holds",
    max_examples: int | None = None,
) -> Declaration:
    """Every drawn `source` instance (registered name, or Adapter subclass with `source_configs`),
    prepared by `when`, equals `embed(source)`, an instance of the variant (same Δ and routing)."""
    key, cls = target_class(source)
    if source_configs is None:
        if key not in CONFIG_STRATEGIES:
            raise VariantError(
                f"embeds({key!r}): give source_configs=<strategy of {cls.__name__} configs>"
            )
        source_configs = CONFIG_STRATEGIES[key]()
    text = (
        statement
        or f"every {cls.__name__} embeds into {{variant}} via {named(embed)} (Δ and routing)"
    )
    exp = check_expect(expect)
    strategy = cases(source_configs)

    def make(v: Any, full: str) -> Claim[Any]:
        def case(c: Case[Any]) -> Outcome:
            src = (
                build_random(c.config, c.seed)
                if key in ARCHITECTURES
                else cls(c.config).to(DTYPE).randomize_(c.seed)
            )
            with torch.no_grad():
                if when is not None:
                    when(src)
                out = embed(src)
                why = check_embedded(out, v.adapter_class, f"embed {named(embed)}")
                if why is not None:
                    return Outcome(math.inf, tol, why)
                return compare(
                    src, out, c.inputs(), tol, (cls.__name__, f"variant via {named(embed)}")
                )

        return Claim(
            full, text.replace("{variant}", v.name), strategy, case, exp,
            spec=f"variant {v.name} ({v.source or 'in memory'})", max_examples=max_examples,
            describe=lambda c: describe_source(v, c, embed),
        )  # fmt: skip

    return Declaration("embeds", name or f"embeds_{key.lower()}", text, exp, make)
