"""`lipschitz_bound`: x -> of(adapter, x) is L(adapter)-Lipschitz (ℓ2 -> ℓ2), everywhere or on a ball,
checked against the adversarially searched lower bound of `lipschitz.empirical_lipschitz`."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from hypothesis import settings
from hypothesis.strategies import SearchStrategy
from torch import Tensor

from moelora_core.adapter import Adapter

from ..checking import ClaimError, Outcome
from ..strategies import DTYPE
from .base import Declaration, Draw, VariantCase, VariantError, fmt, instance_declaration, named
from .lipschitz import LipschitzWitness, bounds_search, closing_ratio, empirical_lipschitz

MapOf = Callable[[Adapter, Tensor], Tensor]
Effort = Literal["auto", "fast", "thorough"]
LIPSCHITZ_RTOL = 1e-9  # a measured ratio may exceed the claim by this relative margin (rounding)


def map_of(of: MapOf | str | None) -> tuple[MapOf, str]:
    """(adapter, x) -> tensor for `of`: None / "routing" (g), a method name, or a callable."""
    if of is None or of == "routing":

        def routing(a: Adapter, x: Tensor) -> Tensor:
            g = a.routing(x)
            if g is None:
                raise ClaimError(f"{type(a).__name__} has no router (routing(x) is None): pass of=")
            return g

        return routing, "g"
    if isinstance(of, str):
        method = of

        def by_name(a: Adapter, x: Tensor) -> Tensor:
            fn = getattr(a, method, None)
            if not callable(fn):
                raise ClaimError(f"of={method!r}: {type(a).__name__} has no method {method!r}")
            out = fn(x)
            if not isinstance(out, Tensor):
                raise ClaimError(
                    f"of={method!r}: {type(a).__name__}.{method}(x) returned {type(out).__name__}"
                )
            return out

        return by_name, method
    return of, named(of)


def _witness(f: Callable[[Tensor], Tensor], n: int, seed: int, stop: float, radius: float,
             centre: Tensor | None, thorough: bool) -> tuple[LipschitzWitness, str]:  # fmt: skip
    w = empirical_lipschitz(f, n, seed=seed, stop_above=stop, radius=radius, centre=centre)
    how = f"empirical_lipschitz(seed={seed}{'' if math.isinf(radius) else f', radius={radius:g}'})"
    if thorough and w.ratio <= stop and centre is None:
        j = bounds_search(f, n, seed=seed, radius=radius)
        if j is not None and j.ratio > w.ratio:
            return j, f"bounds_search(seed={seed})"
    return w, how


def lipschitz_bound(
    bound: Callable[[Adapter], float],
    *,
    of: MapOf | str | None = None,
    radius: float | None = None,
    centre: Sequence[float] | Tensor | None = None,
    effort: Effort = "auto",
    name: str | None = None,
    statement: str | None = None,
    expect: str = "holds",
    shapes: Mapping[str, Any] | None = None,
    configs: SearchStrategy[Any] | None = None,
    where: Callable[[Any], bool] | None = None,
    max_examples: int | None = None,
) -> Declaration:
    """x -> of(adapter, x) is `bound(adapter)`-Lipschitz (ℓ2 -> ℓ2) on every drawn instance, over the
    whole input space or, with `radius`, on the ball ‖x − centre‖ <= radius (centre 0 by default): the
    claimed bound must be >= the adversarially searched lower bound.

    `of`: None or "routing" (the routing weights g(x)), the name of an adapter method x -> tensor, or a
    callable (adapter, x) -> tensor. `effort`: "fast" runs `empirical_lipschitz`; "thorough" also runs
    the Jacobian search of `proofs_numeric.bounds` and keeps the larger; "auto" is "thorough" under the
    thorough profile. The reported error is measured / claimed (tolerance 1 + 1e-9). In the adversarial
    phase the parameters are redrawn with structure (`search.Tweak`) before the same search."""
    fn, label = map_of(of)
    if effort not in ("auto", "fast", "thorough"):
        raise VariantError(f"effort={effort!r}: expected 'auto', 'fast' or 'thorough'")
    if radius is not None and not (isinstance(radius, int | float) and 0 < radius < math.inf):
        raise VariantError(f"radius={radius!r}: expected a finite number > 0")
    ball = math.inf if radius is None else float(radius)
    c0 = None if centre is None else torch.as_tensor(centre, dtype=DTYPE).reshape(-1)
    region = "" if radius is None else f" on ‖x{'' if c0 is None else ' − c'}‖ <= {ball:g}"
    text = (
        statement or f"x -> {label}(x) of {{variant}} is {named(bound)}(adapter)-Lipschitz{region}"
    )

    def case(v: Any, c: VariantCase) -> Outcome:
        a = c.build().requires_grad_(False)  # the search differentiates in x only
        claimed: object = bound(a)
        if isinstance(claimed, Tensor) and claimed.numel() == 1:
            claimed = claimed.item()
        if not isinstance(claimed, int | float) or not math.isfinite(claimed) or claimed < 0:
            raise ClaimError(
                f"bound {named(bound)} returned {claimed!r}: expected a finite number >= 0"
            )
        if c0 is not None and c0.numel() != a.in_features:
            raise ClaimError(
                f"centre has {c0.numel()} entries; expected in_features={a.in_features}"
            )
        f = lambda X: fn(a, X)  # noqa: E731
        stop = claimed * (1 + LIPSCHITZ_RTOL)
        thorough = effort == "thorough" or (
            effort == "auto" and settings.get_current_profile_name() == "thorough"
        )
        w, how = _witness(f, a.in_features, c.input_seed, stop, ball, c0, thorough)
        return _outcome(f, w, how, float(claimed), label)

    draw = Draw(shapes, configs, where, max_examples)
    return instance_declaration(
        "lipschitz_bound", name or f"lipschitz_{label}", text, expect, draw, case, False
    )


def _outcome(
    f: Callable[[Tensor], Tensor], w: LipschitzWitness, how: str, claimed: float, label: str
) -> Outcome:
    err = w.ratio / claimed if claimed > 0 else (0.0 if w.ratio == 0 else math.inf)
    detail = f"measured ‖{label}(a) - {label}(b)‖/‖a - b‖ >= {w.ratio:.6g} vs claimed bound {claimed:.6g}"
    if err > 1 + LIPSCHITZ_RTOL:
        detail += f" at a = {fmt(w.a)}, b - a = {[f'{d:.3g}' for d in (w.b - w.a).tolist()]}"
        detail += f" ({how} finds it again)"
        closer = closing_ratio(f, w)
        if closer > 100 * w.ratio:
            detail += (
                f"; 20 more halvings of the pair give {closer:.3g}: {label}(x) jumps between a "
                "and b, so no finite bound holds"
            )
    return Outcome(err, 1 + LIPSCHITZ_RTOL, detail)
