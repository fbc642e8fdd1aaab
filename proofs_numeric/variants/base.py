"""The pieces every part of `proofs_numeric.variants` shares: the error type, a drawn instance, a
declaration, and small formatting helpers."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from hypothesis.strategies import SearchStrategy
from torch import Tensor

from moelora_core.adapter import Adapter
from moelora_core.errors import MoELoRAError

from ..checking import Claim, Expect, Outcome

if TYPE_CHECKING:
    from .search import Tweak
    from .variant import Variant

VARIANT_FILE = re.compile(r"^(moelora_variant_\w+|\w+_variant)\.py$")
NAME = re.compile(r"[A-Za-z0-9_\-]+")


class VariantError(MoELoRAError):
    """A variant file or declaration is malformed (does not import, declares nothing, bad shapes, ...)."""


def is_variant_file(path: str | os.PathLike[str]) -> bool:
    """Names the loader and the pytest plugin pick up: `moelora_variant_*.py` and `*_variant.py`."""
    return bool(VARIANT_FILE.match(Path(path).name))


@dataclass(frozen=True)
class VariantCase:
    """A drawn instance of a variant: config, parameter seed, input seed, input batch shape, and (in
    the adversarial phase) the structured redraw and ascent applied to it."""

    config: Any
    seed: int
    input_seed: int
    batch: tuple[int, ...]
    variant: Variant = field(repr=False, compare=False)
    tweak: Tweak | None = None

    def build(self) -> Adapter:
        return self.variant.instance(self.config, self.seed, self.tweak)

    def inputs(self, adapter: Adapter) -> Tensor:
        return self.variant.inputs(adapter, self.input_seed, self.batch, self.tweak)


CaseFn = Callable[["Variant", VariantCase], Outcome]


@dataclass(frozen=True)
class Declaration:
    """One stated belief about a variant; `Variant.claims()` turns it into a `Claim`."""

    kind: str
    name: str
    statement: str
    expect: Expect
    make: Callable[[Variant, str], Claim[Any]] = field(repr=False)
    case: CaseFn | None = field(default=None, repr=False)  # re-run by `Variant.recheck`


@dataclass(frozen=True)
class Draw:
    """How a declaration's instances are drawn: per-claim shapes, a config strategy, a config filter,
    a case budget, and what the adversarial phase varies ('tweak': structured parameters and inputs,
    'sizes': extreme config sizes, '': no search)."""

    shapes: Mapping[str, Any] | None = None
    configs: SearchStrategy[Any] | None = None
    where: Callable[[Any], bool] | None = None
    max_examples: int | None = None
    search: str = "tweak"


def check_expect(expect: str) -> Expect:
    if expect not in ("holds", "refuted"):
        raise VariantError(f"expect={expect!r}: expected 'holds' or 'refuted'")
    return "holds" if expect == "holds" else "refuted"


def check_name(what: str, name: object) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise VariantError(f"{what}={name!r}: expected an identifier (letters, digits, _ or -)")
    return name


def instance_declaration(
    kind: str,
    name: str,
    statement: str,
    expect: str,
    draw: Draw,
    case: CaseFn,
    uses_inputs: bool = True,
) -> Declaration:
    """A declaration checked on drawn `VariantCase`s by `case`."""
    exp = check_expect(expect)

    def make(v: Variant, full: str) -> Claim[Any]:
        search = v.search_cases(draw) if draw.search else None
        return Claim(
            full,
            statement.replace("{variant}", v.name),
            v.cases(draw.shapes, draw.configs, draw.where),
            lambda c: case(v, c),
            exp,
            spec=f"variant {v.name} ({v.source or 'in memory'})",
            max_examples=draw.max_examples,
            describe=lambda c: v.describe(c, full, show_inputs=uses_inputs),
            search=search,
        )

    return Declaration(kind, name, statement, exp, make, case)


def named(fn: Callable[..., Any] | None) -> str:
    return getattr(fn, "__name__", "<callable>") if fn is not None else ""


def fmt(t: Tensor) -> str:
    """A small tensor as nested lists of 6-significant-digit numbers."""
    if t.dim() == 0:
        return f"{float(t):.6g}"
    return "[" + ", ".join(fmt(s) for s in t) + "]"


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
