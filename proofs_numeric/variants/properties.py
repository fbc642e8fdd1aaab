"""`property` (= `satisfies`): a free-form statement about every drawn instance, checked by the
user's predicate; the adversarial phase climbs the predicate's margin when it is a differentiable
tensor."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from hypothesis.strategies import SearchStrategy
from torch import Tensor

from moelora_core.adapter import Adapter

from ..checking import ClaimError, Outcome
from .base import Declaration, Draw, VariantCase, VariantError, check_name, instance_declaration
from .search import ascend

Predicate = Callable[[Adapter, Tensor], object]  # returns bool, a float error, or an Outcome


def _outcome(res: object, tol: float) -> Outcome:
    if isinstance(res, Outcome):
        return res
    if isinstance(res, Tensor) and res.numel() == 1:
        res = res.item()
    if isinstance(res, bool) or type(res).__name__ == "bool_":  # numpy's bool too
        return Outcome(0.0 if bool(res) else 1.0, 0.5, f"predicate returned {bool(res)}")
    if not isinstance(res, int | float):
        raise ClaimError(
            f"predicate returned {type(res).__name__}; expected bool, a float (the error) or Outcome"
        )
    value = float(res)
    return Outcome(value, tol, f"predicate returned {value:.6g} (tolerance {tol:g})")


def satisfies(
    name: str,
    predicate: Predicate,
    *,
    tol: float = 0.0,
    statement: str | None = None,
    expect: str = "holds",
    shapes: Mapping[str, Any] | None = None,
    configs: SearchStrategy[Any] | None = None,
    where: Callable[[Any], bool] | None = None,
    max_examples: int | None = None,
) -> Declaration:
    """`predicate(adapter, x)` holds on every drawn instance: it returns True, a float <= `tol` (the
    error: 0 when the statement holds exactly), or an `Outcome`. It runs
    under `torch.no_grad()`, on a fresh instance, so it may modify the parameters (e.g. zero the router).

    Adversarial phase: structured redraws of the parameters and inputs; and, when the predicate
    returns a 0-dim tensor that autograd can differentiate (call it without `float(...)`), gradient
    ascent on that value in every parameter and the inputs (`search.ascend`). Also available as
    `property` (not exported by `import *`, which would shadow the builtin)."""
    check_name("property name", name)
    if not callable(predicate):
        raise VariantError(
            f"property {name!r}: predicate={predicate!r}: expected a callable (adapter, x)"
        )
    if not (isinstance(tol, int | float) and tol >= 0 and not math.isnan(tol)):
        raise VariantError(f"property {name!r}: tol={tol!r}: expected a number >= 0")
    doc = (predicate.__doc__ or "").strip().splitlines()
    text = statement or (doc[0] if doc else f"{name} holds for {{variant}}")

    def case(v: Any, c: VariantCase) -> Outcome:
        a = c.build()
        x = c.inputs(a)
        if c.tweak is not None and c.tweak.steps:
            ascend(a, x, lambda xv: predicate(a, xv), c.tweak.steps)
        with torch.no_grad():
            return _outcome(predicate(a, x), tol)

    draw = Draw(shapes, configs, where, max_examples)
    return instance_declaration("property", name, text, expect, draw, case)
