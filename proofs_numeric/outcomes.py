"""Outcomes that compare an adapter with another adapter or with its own formulas (one copy of each,
shared by the claim catalogues, the declared claims and `moelora verify`'s variants).

* `compare(source, target, x, tol, names)`: an exact reduction, Δ(x) and, where both route, g(x):

      error = max( rel(Δ_s(x), Δ_t(x)), rel(g_s(x), g_t(x)) ),   rel(a, b) = max|a − b| / (1 + max|a|),

  with a detail naming which of the two differs, where, and both values;
* `reduction_outcome(source, target, x)`: the same at `EXACT_TOL`;
* `param_count_outcome(a)`: |counted trainable parameters − param_formula(a)|, exact (tolerance 0);
* `macs_outcome(a, formula, counted)`: |counted MACs/token − formula(a)|, exact;
* `counted_macs_outcome(a, formula, sparse)`: the same with the MACs counted from `a`'s forward pass
  (`complexity.counted_macs_per_token`, the sparse top-k path with `sparse`);
* `shared_layers_outcome(config, layers)`: L layers of one module type sharing the part `make_shared`
  builds: |unique trainable parameters − (L·param_formula + shared_param_formula)| plus each layer's
  |own count − param_formula|, exact;
* `verdict(ok, detail)`: a decided statement as an outcome (error 0 if true, 1 if false, tolerance ½);
  `symbolic(check)`: the case of a one-case claim decided by `check() -> (ok, detail)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sympy as sp
import torch
from torch import Tensor

from moelora_core import symbols as S
from moelora_core.adapter import Adapter
from moelora_core.registry import architecture_of

from .checking import EXACT_TOL, Outcome, rel_error
from .complexity import counted_macs_per_token

__all__ = [
    "compare",
    "counted_macs_outcome",
    "macs_outcome",
    "param_count_outcome",
    "reduction_outcome",
    "shared_layers_outcome",
    "symbolic",
    "verdict",
]


def _difference(label: str, a: Tensor | None, b: Tensor | None, names: tuple[str, str]) -> str:
    """`label: relative error e`, then the shapes (if they differ) or the largest difference."""
    err = rel_error(a, b)
    text = f"{label}: relative error {err:.3g}"
    if a is None or b is None or a.shape != b.shape:
        shapes = [None if t is None else tuple(t.shape) for t in (a, b)]
        return text + f" ({names[0]} gives shape {shapes[0]}, {names[1]} {shapes[1]})"
    if err > 0 and a.numel():
        flat = int((a.detach() - b.detach()).abs().argmax())
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape))
        text += (
            f", largest at {list(idx)}: {names[0]} {float(a.detach()[idx]):.9g}"
            f" vs {names[1]} {float(b.detach()[idx]):.9g}"
        )
    return text


def compare(
    source: Adapter, target: Adapter, x: Tensor, tol: float, names: tuple[str, str]
) -> Outcome:
    """Δ and (where both route) g of `source` and `target` on x (..., n): the worst relative error,
    and what each is, where they differ most and both values."""
    da, db = source(x), target(x)  # (..., m)
    parts = [("Δ(x)", da, db)]
    ga, gb = source.routing(x), target.routing(x)  # (..., E) or None
    if ga is not None and gb is not None:
        parts.append(("routing g(x)", ga, gb))
    errors = [rel_error(a, b) for _, a, b in parts]
    detail = "; ".join(_difference(label, a, b, names) for label, a, b in parts)
    if len(parts) == 1:
        detail += " (routing not compared: " + (
            "neither routes)" if ga is None and gb is None else "only one routes)"
        )
    return Outcome(max(errors), tol, detail)


def reduction_outcome(
    source: Adapter, target: Adapter, x: Tensor, tol: float = EXACT_TOL
) -> Outcome:
    """Compare Δ and (where both route) g of `source` and its embedding `target` on inputs x."""
    return compare(source, target, x, tol, ("source", "embedding"))


def param_count_outcome(a: Adapter) -> Outcome:
    """Counted trainable parameters == `a.param_formula()` at the instance's values, exactly."""
    counted, formula = a.num_trainable_params(), a.param_formula_value()
    return Outcome(float(abs(counted - formula)), 0.0, f"counted {counted}, formula {formula}")


def macs_outcome(a: Adapter, formula: sp.Expr, counted: int) -> Outcome:
    """Counted matmul multiply–adds per token == `formula` at the instance's values, exactly."""
    expected = int(sp.sympify(formula).subs(a.subs()))
    return Outcome(
        float(abs(counted - expected)), 0.0, f"counted {counted} MACs/token, formula {expected}"
    )


def counted_macs_outcome(a: Adapter, formula: sp.Expr, *, sparse: bool = False) -> Outcome:
    """Matmul multiply–adds per token counted from `a`'s forward pass (its sparse top-k path with
    `sparse`) == `formula` at the instance's values, exactly."""
    return macs_outcome(a, formula, counted_macs_per_token(a, sparse=sparse))


def shared_layers_outcome(config: Any, layers: int, *, shared_per_layer: bool = False) -> Outcome:
    """`layers` layers of one module type sharing one `make_shared` part (on the meta device):

        unique trainable parameters = L·param_formula + shared_param_formula,
        each layer's own trainable parameters = param_formula,

    error = the sum of both gaps (exact). `shared_per_layer` counts the shared part in every layer
    (L·(param_formula + shared_param_formula): the mutated twin)."""
    cls = architecture_of(config)
    shared = cls.make_shared(config, device="meta")  # counting only: no memory, no init
    built = [cls.create(config, shared=shared, device="meta") for _ in range(layers)]
    unique = {id(p): p for a in built for p in a.parameters() if p.requires_grad}
    counted = sum(p.numel() for p in unique.values())
    per, once = built[0].param_formula(), built[0].shared_param_formula()
    formula = S.L * (per + once) if shared_per_layer else S.L * per + once
    expected = int(sp.sympify(formula).subs({**built[0].subs(), S.L: layers}))
    per_value = built[0].param_formula_value()
    own = max(abs(a.num_trainable_params() - per_value) for a in built)
    return Outcome(
        float(abs(counted - expected) + own),
        0.0,
        f"unique params {counted} over {layers} layers, formula {expected}; per layer off by {own}",
    )


def verdict(ok: bool, detail: str) -> Outcome:
    """A decided statement: error 0 if `ok`, 1 otherwise, against a tolerance of ½."""
    return Outcome(0.0 if ok else 1.0, 0.5, detail)


def symbolic(check: Callable[[], tuple[bool, str]]) -> Callable[[Any], Outcome]:
    """The case of a one-case claim (its strategy draws one dummy value) decided by `check()`."""

    def case(_: Any) -> Outcome:
        return verdict(*check())

    return case
