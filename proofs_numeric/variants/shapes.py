"""`shapes={field: spec}` -> Hypothesis strategies of configs.

A spec is an inclusive `(lo, hi)` range (ints or floats), a `[list]` or `range` of choices, a Hypothesis
strategy, or a constant. A drawn config whose constructor raises a `MoELoRAError` (the project's
`ConfigError`, ...) or one of the variant's declared `redraw=` types is rejected and redrawn; any other
exception is an error of the variant's code, reported with its file and line.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hypothesis import reject
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from moelora_core.errors import MoELoRAError

from ..checking import summarise
from .base import VariantError

Redraw = tuple[type[BaseException], ...]


def is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def field_strategy(name: str, spec: Any) -> SearchStrategy[Any]:
    """(lo, hi) -> inclusive range; [a, b, ...] or range(...) -> choices; a strategy as is; else constant."""
    if isinstance(spec, SearchStrategy):
        return spec
    if isinstance(spec, range | list):
        if len(spec) == 0:
            raise VariantError(f"shapes[{name!r}]={spec!r}: expected at least one choice")
        return st.sampled_from(list(spec))
    if isinstance(spec, tuple):
        if len(spec) != 2 or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in spec
        ):
            raise VariantError(
                f"shapes[{name!r}]={spec!r}: expected an inclusive range (lo, hi), a list of choices, "
                "a Hypothesis strategy or a constant"
            )
        lo, hi = spec
        if lo > hi:
            raise VariantError(f"shapes[{name!r}]={spec!r}: expected lo <= hi")
        if is_int(lo) and is_int(hi):
            return st.integers(int(lo), int(hi))
        return st.floats(float(lo), float(hi), allow_nan=False, allow_infinity=False)
    return st.just(spec)


def extreme_values(spec: Any) -> list[Any] | None:
    """The ends of an integer range and far beyond it (x16, x256): sizes for counting-only checks."""
    if isinstance(spec, tuple) and len(spec) == 2 and all(is_int(v) for v in spec):
        lo, hi = spec
        return sorted({lo, hi, 16 * hi, 256 * hi})
    return None


def config_fields(config: type) -> tuple[set[str], set[str]]:
    """(all field names, required field names) of a dataclass config."""
    fs = dataclasses.fields(config)
    required = {
        f.name
        for f in fs
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    return {f.name for f in fs if f.init}, required


class Rejections:
    """The last reason a drawn config was rejected, for the 'nothing could be drawn' message."""

    def __init__(self) -> None:
        self.last = ""


def construct(
    cls: Callable[..., Any], kwargs: Mapping[str, Any], why: Rejections, redraw: Redraw = ()
) -> Any:
    call = f"{getattr(cls, '__name__', 'config')}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    invalid: Redraw = (MoELoRAError, *redraw)
    try:
        return cls(**kwargs)
    except invalid as e:
        why.last = f"{call}: {e}"
        reject()
    except Exception as e:
        raise VariantError(
            f"{call} raised {summarise(e)}; configs are redrawn only when the constructor raises a "
            "MoELoRAError (e.g. ConfigError) or a type declared in Variant(redraw=...)"
        ) from None


def configs_from_shapes(
    cls: type, shapes: Mapping[str, Any], why: Rejections, redraw: Redraw = ()
) -> SearchStrategy[Any]:
    fields = {k: field_strategy(k, v) for k, v in shapes.items()}
    return st.fixed_dictionaries(fields).map(lambda kw: construct(cls, kw, why, redraw))


def override(
    configs: SearchStrategy[Any], shapes: Mapping[str, Any], why: Rejections, redraw: Redraw = ()
) -> SearchStrategy[Any]:
    """Replace some fields of drawn dataclass configs by values drawn from `shapes`."""
    fields = st.fixed_dictionaries({k: field_strategy(k, v) for k, v in shapes.items()})

    def replace(pair: tuple[Any, dict[str, Any]]) -> Any:
        cfg, kw = pair
        return construct(lambda **k: dataclasses.replace(cfg, **k), kw, why, redraw)

    return st.tuples(configs, fields).map(replace)


def config_class_of(build: Callable[..., Any]) -> type | None:
    """The dataclass annotated on the builder's parameters (`def __init__(self, config: MyConfig)`),
    looked up along the class's MRO when a subclass does not annotate its own `__init__`."""
    targets: list[Any] = [build]
    if isinstance(build, type):
        targets = [k.__dict__["__init__"] for k in build.__mro__ if "__init__" in k.__dict__]
    for target in targets:
        try:
            hints = typing.get_type_hints(target)
        except Exception:
            continue
        for name, hint in hints.items():
            if name != "return" and isinstance(hint, type) and dataclasses.is_dataclass(hint):
                return hint
    return None


def batch_strategy(
    name: str, batches: Sequence[tuple[int, ...]]
) -> SearchStrategy[tuple[int, ...]]:
    shapes = [tuple(b) for b in batches]
    if not shapes or not all(all(is_int(d) and d >= 1 for d in b) for b in shapes):
        raise VariantError(
            f"Variant {name!r}: batches={batches!r}: expected a list of shapes of positive ints"
        )
    return st.sampled_from(shapes)
