"""Verify a user-defined MoE-LoRA variant: write it once, state what you believe, let the toolkit try to
break each statement.

A variant file (any Python file or importable module) subclasses `moelora_core.adapter.Adapter`, builds
its maps from `moelora_core.maps`, and declares at module level

    VARIANT = Variant(
        "adamole",
        build=AdaMoLE,                               # config -> Adapter
        config=AdaMoLEConfig,                        # a frozen dataclass whose fields ...
        shapes={"in_features": (1, 8), "num_experts": (1, 4), "top_k": [None, 1, 2]},  # ... are drawn
        claims=[
            reduces_to("lora", embed=to_lora, shapes={"num_experts": 1}),
            embeds("lora", embed=from_lora),
            param_formula("E*r_e*(n + m) + E*n + n + 1"),
            complexity("E*r_e*(n + m) + E*n + n + 1", theta="E*r_e*(n + m)"),
            lipschitz_bound(lambda a: a.router.logits.spectral_norm() / 2, of="probabilities"),
            property("weights_sum_to_one", lambda a, x: float((a.routing(x).sum(-1) - 1).abs().max())),
        ],
    )

(or `VARIANTS = [...]`). Each declaration becomes a `checking.Claim` over drawn instances: a config
(from `shapes`, inclusive `(lo, hi)` ranges and `[choices]`, or from a Hypothesis strategy `configs=`),
a parameter seed (every parameter redrawn N(0, 1/fan_in) in float64) and an input seed, checked by
the same `check_claim` as `pytest -m theorems`, so a refuted claim comes back with Hypothesis's shrunk
counterexample. What each kind checks:

* `reduces_to(T, embed, when)`: after `when(adapter)` (a parameter setting, e.g. equal experts) and/or a
  config restriction (`shapes=`), `embed(adapter)` is a `T` with the same Δ(x) and, where both route, the
  same g(x) on drawn inputs: `max|a - b| / (1 + max|a|) <= 1e-10` (`reduction_outcome`).
* `embeds(S, embed)`: every drawn `S` (a registered architecture) maps to an equal variant instance.
* `param_formula(f)`: counted trainable parameters == f at the instance's sizes, exactly.
* `complexity(f, theta)`: f = Θ(theta) as the variables grow (`complexity.same_theta`).
* `lipschitz_bound(L, of)`: L(adapter) >= an adversarially searched lower bound on the Lipschitz
  constant of x -> of(adapter, x) (default: the routing weights g(x)). The search (power iteration on
  finite-difference Jacobians, ascent on ‖J v‖, bisection towards jumps) only ever reports the ratio
  ‖f(a) - f(b)‖ / ‖a - b‖ of two evaluated points, minus a rounding margin, so a refutation is a witness.
* `property(name, predicate)`: predicate(adapter, x) is True, or a float <= tol, on every instance.

Every declaration takes `expect="refuted"` for a statement the file records as false (it then counts as
as-expected when the checker refutes it) and `name=`/`statement=`. `load_variants(path_or_module)` finds
the declarations; `run_variant` checks them; `moelora verify` and the pytest plugin are thin layers on top.
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import importlib
import importlib.util
import itertools
import math
import os
import re
import sys
import time
import traceback
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import sympy as sp
import torch
from hypothesis import HealthCheck, find, reject, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisException
from hypothesis.strategies import SearchStrategy
from torch import Tensor

from moelora_core import symbols as S
from moelora_core.adapter import Adapter
from moelora_core.errors import MoELoRAError, input_checks
from moelora_core.registry import ARCHITECTURES

from .checking import EXACT_TOL, Claim, ClaimReport, Expect, Outcome, check_claim
from .claims import reduction_outcome
from .complexity import same_theta
from .strategies import (
    DTYPE,
    Case,
    build_random,
    cases,
    comol_configs,
    hydralora_configs,
    lora_configs,
    moelora_configs,
    seeds,
    talklora_configs,
)

__all__ = [
    "Declaration",
    "LipschitzWitness",
    "Outcome",
    "Variant",
    "VariantCase",
    "VariantError",
    "VariantReport",
    "bounds_search",
    "complexity",
    "embeds",
    "empirical_lipschitz",
    "is_variant_file",
    "lipschitz_bound",
    "load_variant",
    "load_variants",
    "param_formula",
    "reduces_to",
    "run_variant",
    "satisfies",
]

Predicate = Callable[[Adapter, Tensor], object]  # returns bool, a float error, or an Outcome
MapOf = Callable[[Adapter, Tensor], Tensor]
LIPSCHITZ_RTOL = 1e-9  # a measured ratio may exceed the claim by this relative margin (rounding)
_BATCHES = st.sampled_from([(3,), (2, 3), (1,), (2, 1, 2)])
_SOURCE_CONFIGS: dict[str, Callable[[], SearchStrategy[Any]]] = {
    "lora": lora_configs,
    "moelora": moelora_configs,
    "hydralora": hydralora_configs,
    "talklora": talklora_configs,
    "comol": comol_configs,
}
VARIANT_FILE = re.compile(r"^(moelora_variant_\w+|\w+_variant)\.py$")


class VariantError(MoELoRAError):
    """A variant file or declaration is malformed (does not import, declares nothing, bad shapes, ...)."""


def is_variant_file(path: str | os.PathLike[str]) -> bool:
    """Names the loader and the pytest plugin pick up: `moelora_variant_*.py` and `*_variant.py`."""
    return bool(VARIANT_FILE.match(Path(path).name))


# ----- drawn instances -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantCase:
    """A drawn instance of a variant: config, parameter seed, input seed, input batch shape."""

    config: Any
    seed: int
    input_seed: int
    batch: tuple[int, ...]
    variant: Variant = field(repr=False, compare=False)

    def build(self) -> Adapter:
        return self.variant.instance(self.config, self.seed)

    def inputs(self, adapter: Adapter) -> Tensor:
        return self.variant.inputs(adapter, self.input_seed, self.batch)


@dataclass(frozen=True)
class Declaration:
    """One stated belief about a variant; `Variant.claims()` turns it into a `Claim`."""

    kind: str
    name: str
    statement: str
    expect: Expect
    make: Callable[[Variant, str], Claim[Any]] = field(repr=False)


def _check_expect(expect: str) -> Expect:
    if expect not in ("holds", "refuted"):
        raise VariantError(f"expect={expect!r}: expected 'holds' or 'refuted'")
    return "holds" if expect == "holds" else "refuted"


# ----- shapes -> config strategies -------------------------------------------------------------------


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _field_strategy(name: str, spec: Any) -> SearchStrategy[Any]:
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
        if _is_int(lo) and _is_int(hi):
            return st.integers(int(lo), int(hi))
        return st.floats(float(lo), float(hi), allow_nan=False, allow_infinity=False)
    return st.just(spec)


def _config_fields(config: type) -> tuple[set[str], set[str]]:
    """(all field names, required field names) of a dataclass config."""
    fs = dataclasses.fields(config)
    required = {
        f.name
        for f in fs
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    return {f.name for f in fs if f.init}, required


class _Rejections:
    """The last reason a drawn config was rejected, for the 'nothing could be drawn' message."""

    def __init__(self) -> None:
        self.last = ""


def _construct(cls: Callable[..., Any], kwargs: Mapping[str, Any], why: _Rejections) -> Any:
    try:
        return cls(**kwargs)
    except (MoELoRAError, ValueError, TypeError, AssertionError) as e:
        why.last = f"{getattr(cls, '__name__', cls)}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}): {e}"
        reject()


def _configs_from_shapes(
    cls: type, shapes: Mapping[str, Any], why: _Rejections
) -> SearchStrategy[Any]:
    fields = {k: _field_strategy(k, v) for k, v in shapes.items()}
    return st.fixed_dictionaries(fields).map(lambda kw: _construct(cls, kw, why))


def _override(
    configs: SearchStrategy[Any], shapes: Mapping[str, Any], why: _Rejections
) -> SearchStrategy[Any]:
    """Replace some fields of drawn dataclass configs by values drawn from `shapes`."""
    fields = st.fixed_dictionaries({k: _field_strategy(k, v) for k, v in shapes.items()})

    def replace(pair: tuple[Any, dict[str, Any]]) -> Any:
        cfg, kw = pair
        return _construct(lambda **k: dataclasses.replace(cfg, **k), kw, why)

    return st.tuples(configs, fields).map(replace)


def _config_class_of(build: Callable[..., Any]) -> type | None:
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


def _batch_strategy(
    name: str, batches: Sequence[tuple[int, ...]]
) -> SearchStrategy[tuple[int, ...]]:
    shapes = [tuple(b) for b in batches]
    if not shapes or not all(all(_is_int(d) and d >= 1 for d in b) for b in shapes):
        raise VariantError(
            f"Variant {name!r}: batches={batches!r}: expected a list of shapes of positive ints"
        )
    return st.sampled_from(shapes)


# ----- the variant -----------------------------------------------------------------------------------


class Variant:
    """A user-defined architecture and the claims made about it.

    name: short identifier (claim names are `name.claim`).
    build: config -> Adapter (usually the Adapter subclass itself).
    configs: a Hypothesis strategy of configs; or `shapes` (with `config`, the frozen dataclass; inferred
        from `build`'s annotation when omitted): per field an inclusive `(lo, hi)` range, a `[list]` of
        choices, a strategy or a constant. Drawn configs whose constructor raises are rejected.
    claims: declarations made with `reduces_to`, `embeds`, `param_formula`, `complexity`,
        `lipschitz_bound`, `property`.
    init: `init(adapter, seed)` to redraw the parameters (default `adapter.randomize_(seed)`: every
        parameter N(0, 1/fan_in), so no zero-initialised B makes a claim trivially true).
    input_scale: inputs are `input_scale * N(0, I)`.
    batches: the leading shapes of the inputs drawn (default (3,), (2, 3), (1,), (2, 1, 2)); a claim
        about statistics over tokens (a load-balancing loss) may want more tokens, e.g. [(8,), (16,)].
    """

    def __init__(
        self,
        name: str,
        build: Callable[[Any], Adapter],
        *,
        configs: SearchStrategy[Any] | None = None,
        config: type | None = None,
        shapes: Mapping[str, Any] | None = None,
        claims: Sequence[Declaration] = (),
        init: Callable[[Adapter, int], object] | None = None,
        input_scale: float = 1.0,
        batches: Sequence[tuple[int, ...]] | None = None,
        description: str = "",
    ) -> None:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
            raise VariantError(
                f"Variant name={name!r}: expected a non-empty identifier (letters, digits, _ or -)"
            )
        if not callable(build):
            raise VariantError(
                f"Variant {name!r}: build={build!r}: expected a callable config -> Adapter"
            )
        self.name, self.build, self.init, self.description = name, build, init, description
        self.input_scale = float(input_scale)
        self.batches = _BATCHES if batches is None else _batch_strategy(name, batches)
        self.source: str | None = None  # set by the loader: the file or module it came from
        self._why = _Rejections()
        self.shapes: dict[str, Any] | None = dict(shapes) if shapes is not None else None
        self.config_class = config
        if configs is None and shapes is None:
            raise VariantError(
                f"Variant {name!r}: give configs=<hypothesis strategy> or shapes={{field: range}}"
            )
        if configs is not None and shapes is not None:
            raise VariantError(f"Variant {name!r}: give either configs= or shapes=, not both")
        if shapes is not None:
            self.config_class = config or _config_class_of(build)
            if self.config_class is None:
                raise VariantError(
                    f"Variant {name!r}: shapes= needs the config dataclass: pass config=MyConfig"
                )
            self._check_shape_keys(dict(shapes), complete=True)
            self.configs = _configs_from_shapes(self.config_class, dict(shapes), self._why)
        else:
            if not isinstance(configs, SearchStrategy):
                raise VariantError(
                    f"Variant {name!r}: configs={configs!r}: expected a Hypothesis strategy"
                )
            self.configs = configs
        self.declarations = list(claims)
        if not self.declarations:
            raise VariantError(
                f"Variant {name!r} declares no claims: pass claims=[reduces_to(...), param_formula(...), ...]"
            )
        for d in self.declarations:
            if not isinstance(d, Declaration):
                raise VariantError(
                    f"Variant {name!r}: claims contains {d!r}; expected declarations made with reduces_to, "
                    "embeds, param_formula, complexity, lipschitz_bound or property"
                )

    def __repr__(self) -> str:
        return f"Variant({self.name!r}, claims={[d.name for d in self.declarations]})"

    @builtins.property
    def adapter_class(self) -> type | None:
        return self.build if isinstance(self.build, type) else None

    @builtins.property
    def where(self) -> str:
        return self.source or "(in memory)"

    def _check_shape_keys(self, shapes: dict[str, Any], complete: bool) -> None:
        cls = self.config_class
        if cls is None or not dataclasses.is_dataclass(cls):
            return
        names, required = _config_fields(cls)
        unknown = sorted(set(shapes) - names)
        if unknown:
            raise VariantError(
                f"Variant {self.name!r}: shapes names {unknown}, not fields of {cls.__name__} {sorted(names)}"
            )
        missing = sorted(required - set(shapes)) if complete else []
        if missing:
            raise VariantError(
                f"Variant {self.name!r}: shapes gives no value for {cls.__name__}'s required field(s) {missing}"
            )

    # ----- instances -----------------------------------------------------------------------------------
    def config_strategy(
        self,
        shapes: Mapping[str, Any] | None = None,
        configs: SearchStrategy[Any] | None = None,
        where: Callable[[Any], bool] | None = None,
    ) -> SearchStrategy[Any]:
        """The variant's configs, with per-claim overrides (fixed/ranged fields, a strategy, a filter)."""
        out: SearchStrategy[Any]
        if configs is not None:
            out = configs
        elif shapes and self.shapes is not None:
            assert self.config_class is not None
            self._check_shape_keys(dict(shapes), complete=False)
            out = _configs_from_shapes(self.config_class, {**self.shapes, **shapes}, self._why)
        elif shapes:
            out = _override(self.configs, shapes, self._why)
        else:
            out = self.configs
        return out.filter(where) if where is not None else out

    def cases(
        self,
        shapes: Mapping[str, Any] | None = None,
        configs: SearchStrategy[Any] | None = None,
        where: Callable[[Any], bool] | None = None,
    ) -> SearchStrategy[VariantCase]:
        return st.builds(
            VariantCase,
            config=self.config_strategy(shapes, configs, where),
            seed=seeds,
            input_seed=seeds,
            batch=self.batches,
            variant=st.just(self),
        )

    def instance(self, config: Any, seed: int) -> Adapter:
        """The float64 adapter for `config` with every parameter redrawn by `seed`."""
        with _default_dtype(DTYPE):  # built in float64 directly: no float32 round trip
            a = self.build(config)
        if not isinstance(a, Adapter):
            raise VariantError(
                f"{self.where}: variant {self.name!r}: build({config!r}) returned "
                f"{type(a).__name__}; expected a moelora_core.adapter.Adapter subclass"
            )
        a = a.to(DTYPE)
        if self.init is not None:
            self.init(a, seed)
        else:
            a.randomize_(seed)
        return a

    def inputs(self, adapter: Adapter, input_seed: int, batch: tuple[int, ...] = (3,)) -> Tensor:
        gen = torch.Generator().manual_seed(input_seed)
        return self.input_scale * torch.randn(
            *batch, adapter.in_features, generator=gen, dtype=DTYPE
        )

    def rebuild(
        self, config: Any, seed: int = 0, input_seed: int = 0, batch: tuple[int, ...] = (3,)
    ) -> tuple[Adapter, Tensor]:
        """The adapter and inputs of a reported counterexample."""
        a = self.instance(config, seed)
        return a, self.inputs(a, input_seed, batch)

    def describe(self, case: VariantCase, show_inputs: bool = True) -> str:
        """A counterexample as text: config, seeds, inputs (when small and used) and the line that
        rebuilds it."""
        head = (
            f"{case.config!r}, seed={case.seed}, input_seed={case.input_seed}, batch={case.batch}"
        )
        lines = [head]
        try:
            _, x = self.rebuild(case.config, case.seed, case.input_seed, case.batch)
            if show_inputs and x.numel() <= 24:
                lines.append(f"x = {_fmt(x)}")
        except Exception as e:  # describe must never raise: the failure is reported by the claim
            lines.append(f"(building it raises {type(e).__name__}: {e})")
        src = self.source or "<variant file or module>"
        lines.append(
            f"rebuild: adapter, x = load_variant({src!r}, {self.name!r}).rebuild({case.config!r}, "
            f"seed={case.seed}, input_seed={case.input_seed}, batch={case.batch})"
        )
        return "\n".join(lines)

    def preflight(self) -> None:
        """Build and run the smallest drawn instance; VariantError with a one-line reason if that fails."""
        quiet = settings(
            database=None,
            max_examples=200,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        try:
            config = find(self.configs, lambda _: True, settings=quiet)
        except HypothesisException:
            raise VariantError(
                f"{self.where}: variant {self.name!r}: no valid config could be drawn; last rejection: "
                f"{self._why.last or 'none recorded'}"
            ) from None
        where = f"{self.where}: variant {self.name!r}"
        try:
            a, x = self.rebuild(config, 0, 0, (2,))
            out, g = a(x), a.routing(x)
        except VariantError:
            raise
        except Exception as e:
            raise VariantError(
                f"{where}: building or running {config!r} raised {type(e).__name__}: {e}"
            ) from None
        if not isinstance(out, Tensor) or tuple(out.shape) != (2, a.out_features):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise VariantError(
                f"{where} on {config!r}: Δ(x) has shape {shape} for x of shape {tuple(x.shape)}; "
                f"expected (2, {a.out_features}) (out_features)"
            )
        if g is not None and (g.dim() != 2 or g.shape[0] != 2):
            raise VariantError(
                f"{where} on {config!r}: routing(x) has shape {tuple(g.shape)}; expected (2, E)"
            )

    # ----- claims --------------------------------------------------------------------------------------
    def claims(self) -> list[Claim[Any]]:
        out: list[Claim[Any]] = []
        seen: dict[str, int] = {}
        for d in self.declarations:
            seen[d.name] = seen.get(d.name, 0) + 1
            suffix = "" if seen[d.name] == 1 else f"_{seen[d.name]}"
            out.append(d.make(self, f"{self.name}.{d.name}{suffix}"))
        return out


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _fmt(t: Tensor) -> str:
    """A small tensor as nested lists of 6-significant-digit numbers."""
    if t.dim() == 0:
        return f"{float(t):.6g}"
    return "[" + ", ".join(_fmt(s) for s in t) + "]"


# ----- declarations ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Draw:
    shapes: Mapping[str, Any] | None
    configs: SearchStrategy[Any] | None
    where: Callable[[Any], bool] | None
    max_examples: int | None


def _instance_declaration(
    kind: str,
    name: str,
    statement: str,
    expect: str,
    draw: _Draw,
    case: Callable[[Variant, VariantCase], Outcome],
    uses_inputs: bool = True,
) -> Declaration:
    exp = _check_expect(expect)

    def make(v: Variant, full: str) -> Claim[Any]:
        return Claim(
            full,
            statement.replace("{variant}", v.name),
            v.cases(draw.shapes, draw.configs, draw.where),
            lambda c: case(v, c),
            exp,
            spec=f"variant {v.name} ({v.source or 'in memory'})",
            max_examples=draw.max_examples,
            describe=lambda c: v.describe(c, show_inputs=uses_inputs),
        )

    return Declaration(kind, name, statement, exp, make)


def _target_class(target: str | type) -> tuple[str, type[Adapter]]:
    if isinstance(target, str):
        key = target.lower()
        if key not in ARCHITECTURES:
            raise VariantError(
                f"architecture {target!r} is not registered; expected one of {sorted(ARCHITECTURES)}"
            )
        return key, ARCHITECTURES[key][0]
    if isinstance(target, type) and issubclass(target, Adapter):
        return target.__name__, target
    raise VariantError(
        f"target={target!r}: expected a registered architecture name {sorted(ARCHITECTURES)} or an "
        "Adapter subclass"
    )


def _named(fn: Callable[..., Any] | None) -> str:
    return getattr(fn, "__name__", "<callable>") if fn is not None else ""


def _check_embedded(out: object, cls: type | None, what: str) -> str | None:
    """Why the result of an embedding is unusable, or None."""
    if not isinstance(out, Adapter):
        return f"{what} returned {type(out).__name__}; expected an Adapter"
    if cls is not None and not isinstance(out, cls):
        return f"{what} returned a {type(out).__name__}; expected a {cls.__name__}"
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
    key, cls = _target_class(target)
    if not callable(embed):
        raise VariantError(
            f"reduces_to({key!r}): embed={embed!r}: expected a callable adapter -> {cls.__name__}"
        )
    cond = " with " + ", ".join(f"{k}={v!r}" for k, v in shapes.items()) if shapes else ""
    cond += f" after {_named(when)}" if when is not None else ""
    text = (
        statement or f"{{variant}}{cond} equals {cls.__name__} via {_named(embed)} (Δ and routing)"
    )

    def case(v: Variant, c: VariantCase) -> Outcome:
        a = c.build()
        if when is not None:
            with torch.no_grad():
                when(a)
        with torch.no_grad():
            t = embed(a)
        why = _check_embedded(t, cls, f"embed {_named(embed)}")
        if why is not None:
            return Outcome(math.inf, tol, why)
        with torch.no_grad():
            return reduction_outcome(a, t, c.inputs(a), tol)

    draw = _Draw(shapes, configs, where, max_examples)
    return _instance_declaration(
        "reduces_to", name or f"reduces_to_{key.lower()}", text, expect, draw, case
    )


def _describe_source_case(c: Case[Any]) -> str:
    return (
        f"{c!r}\nrebuild: from proofs_numeric.strategies import Case; "
        f"source = {c!r}.build(); x = {c!r}.inputs()"
    )


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
    key, cls = _target_class(source)
    if source_configs is None:
        if key not in _SOURCE_CONFIGS:
            raise VariantError(
                f"embeds({key!r}): give source_configs=<strategy of {cls.__name__} configs>"
            )
        source_configs = _SOURCE_CONFIGS[key]()
    text = (
        statement
        or f"every {cls.__name__} embeds into {{variant}} via {_named(embed)} (Δ and routing)"
    )
    exp = _check_expect(expect)
    strategy = cases(source_configs)

    def make(v: Variant, full: str) -> Claim[Any]:
        def case(c: Case[Any]) -> Outcome:
            src = (
                build_random(c.config, c.seed)
                if key in ARCHITECTURES
                else cls(c.config).to(DTYPE).randomize_(c.seed)
            )
            if when is not None:
                with torch.no_grad():
                    when(src)
            with torch.no_grad():
                out = embed(src)
            why = _check_embedded(out, v.adapter_class, f"embed {_named(embed)}")
            if why is not None:
                return Outcome(math.inf, tol, why)
            with torch.no_grad():
                return reduction_outcome(src, out, c.inputs(), tol)

        return Claim(
            full, text.replace("{variant}", v.name), strategy, case, exp,
            spec=f"variant {v.name} ({v.source or 'in memory'})", max_examples=max_examples,
            describe=_describe_source_case,
        )  # fmt: skip

    return Declaration("embeds", name or f"embeds_{key.lower()}", text, exp, make)


# ----- formulas --------------------------------------------------------------------------------------


def _canonical(expr: sp.Expr | str | int, what: str) -> sp.Expr:
    """A formula in `moelora_core.symbols` (n, m, r, r_e, E, N, L); other names become positive symbols."""
    if isinstance(expr, str):
        try:
            out = sp.sympify(expr, locals=dict(S.ALL))
        except (sp.SympifyError, SyntaxError, TypeError) as e:
            raise VariantError(f"{what}={expr!r}: not a formula sympy can read ({e})") from None
    else:
        out = sp.sympify(expr)
    if not isinstance(out, sp.Expr):
        raise VariantError(f"{what}={expr!r}: expected an expression, got {type(out).__name__}")
    subs = {s: S.ALL.get(s.name, sp.Symbol(s.name, positive=True)) for s in out.free_symbols}
    result: sp.Expr = out.xreplace(subs)
    return result


@lru_cache(maxsize=256)
def _sstr(expr: sp.Expr) -> str:
    """str(expr), memoised: sympy's printer costs more than the check it reports on."""
    return str(expr)


def _symbols(variables: Sequence[sp.Symbol | str] | str | None, *exprs: sp.Expr) -> list[sp.Symbol]:
    if variables is None:
        found: set[sp.Symbol] = set()
        for e in exprs:
            found |= {s for s in e.free_symbols if isinstance(s, sp.Symbol)}
        return sorted(found, key=lambda s: s.name)
    names = (
        re.split(r"[\s,]+", variables.strip()) if isinstance(variables, str) else list(variables)
    )
    out: list[sp.Symbol] = []
    for v in names:
        nm = v if isinstance(v, str) else v.name
        out.append(S.ALL.get(nm, sp.Symbol(nm, positive=True)))
    return out


def _instance_values(a: Adapter, subs: Callable[[Any], Mapping[Any, int]] | None) -> dict[str, int]:
    """Values of formula symbols for one instance: n, m, E, then param_subs(), then the user's subs."""
    vals: dict[str, int] = {"n": a.in_features, "m": a.out_features, "E": a.num_experts}
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
    max_examples: int | None = None,
) -> Declaration:
    """Counted trainable parameters (`num_trainable_params()`) == `expr` on every drawn instance.

    `expr` is a sympy expression or a string in n, m, r, r_e, E, N, L (None: the adapter's own
    `param_formula()`). Symbol values: n = in_features, m = out_features, E = num_experts, then the
    adapter's `param_subs()`, then `subs(config)`."""
    formula = _canonical(expr, "param_formula") if expr is not None else None
    text = (
        statement
        or f"counted trainable parameters of {{variant}} = {formula if formula is not None else 'param_formula()'}"
    )

    def case(v: Variant, c: VariantCase) -> Outcome:
        a = c.build()
        f = formula if formula is not None else _canonical(a.param_formula(), "param_formula()")
        vals = _instance_values(a, subs)
        missing = sorted(s.name for s in f.free_symbols if s.name not in vals)
        if missing:
            return Outcome(
                math.inf, 0.0, f"no value for symbol(s) {missing}; known {vals}: pass subs="
            )
        value = f.xreplace({s: vals[s.name] for s in f.free_symbols})
        counted = a.num_trainable_params()
        at = ", ".join(
            f"{s.name}={vals[s.name]}" for s in sorted(f.free_symbols, key=lambda s: s.name)
        )
        return Outcome(
            float(abs(counted - value)),
            0.0,
            f"counted {counted}, formula {_sstr(f)} = {value} at {at}",
        )

    return _instance_declaration(
        "param_formula", name, text, expect, _Draw(shapes, None, None, max_examples), case, False
    )


def _theta_witness(f: sp.Expr, g: sp.Expr, vs: list[sp.Symbol]) -> str:
    """The first growth path v = t^a (a in {1, 2}) along which f/g does not tend to a positive constant."""
    t = sp.Symbol("t", positive=True)
    for exps in itertools.product((1, 2), repeat=len(vs)):
        lim = sp.limit(
            sp.cancel((f / g).subs({v: t**a for v, a in zip(vs, exps, strict=True)})), t, sp.oo
        )
        if lim in (0, sp.oo, -sp.oo, sp.zoo, sp.nan) or not lim.is_finite or lim <= 0:
            path = ", ".join(f"{v.name}=t^{a}" for v, a in zip(vs, exps, strict=True))
            return f"along {path}: lim f/g = {lim}"
    return "every path gives a positive finite limit"


def complexity(
    expr: sp.Expr | str | None,
    theta: sp.Expr | str,
    variables: Sequence[sp.Symbol | str] | str | None = None,
    *,
    name: str = "complexity",
    statement: str | None = None,
    expect: str = "holds",
    max_examples: int | None = None,
) -> Declaration:
    """`expr` = Θ(`theta`) as `variables` (default: every symbol of both) grow, each at its own rate
    (`complexity.same_theta`). `expr=None` checks the adapter's own `param_formula()` on drawn instances."""
    g = _canonical(theta, "theta")
    f = _canonical(expr, "complexity") if expr is not None else None
    text = statement or f"{f if f is not None else 'param_formula()'} = Θ({g})"
    exp = _check_expect(expect)
    memo: dict[str, tuple[bool, str]] = {}

    def verdict(fx: sp.Expr) -> Outcome:
        key = sp.srepr(fx)
        if key not in memo:
            vs = _symbols(variables, fx, g)
            ok = same_theta(fx, g, vs)
            why = "" if ok else "; " + _theta_witness(fx, g, vs)
            memo[key] = ok, f"f = {fx}, g = {g}, variables {[v.name for v in vs]}{why}"
        ok, detail = memo[key]
        return Outcome(0.0 if ok else 1.0, 0.5, detail)

    def make(v: Variant, full: str) -> Claim[Any]:
        spec = f"variant {v.name} ({v.source or 'in memory'})"
        if f is not None:
            return Claim(full, text, st.just(None), lambda _: verdict(f), exp, spec=spec, max_examples=1,
                         describe=lambda _: f"symbolic: {f} vs Θ({g})")  # fmt: skip

        def case(c: VariantCase) -> Outcome:
            return verdict(_canonical(c.build().param_formula(), "param_formula()"))

        return Claim(
            full,
            text,
            v.cases(),
            case,
            exp,
            spec=spec,
            max_examples=max_examples,
            describe=lambda c: v.describe(c, show_inputs=False),
        )

    return Declaration("complexity", name, text, exp, make)


# ----- Lipschitz -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LipschitzWitness:
    """The largest ratio ‖f(a) - f(b)‖ / ‖a - b‖ found (minus a rounding margin): a lower bound on Lip(f)."""

    ratio: float
    a: Tensor  # (n,)
    b: Tensor  # (n,)
    evaluations: int


def _ratios(A: Tensor, B: Tensor, FA: Tensor, FB: Tensor, nA: Tensor, nB: Tensor) -> Tensor:
    """Sound per-row ratios (‖FA − FB‖ − margin) / ‖A − B‖ with margin = 1e-12 (1 + max(‖FA‖, ‖FB‖))
    (nA, nB: the row norms of FA, FB), so that rounding in f never counts as a measured slope."""
    num = torch.linalg.vector_norm(FA - FB, dim=1) - 1e-12 * (1 + torch.maximum(nA, nB))
    den = torch.linalg.vector_norm(A - B, dim=1)
    return torch.where(den > 0, num.clamp_min(0) / den.clamp_min(1e-300), torch.zeros_like(den))


def empirical_lipschitz(
    f: Callable[[Tensor], Tensor],
    n: int,
    *,
    seed: int = 0,
    starts: int = 24,
    power_steps: int = 5,
    bisections: int = 34,
    patience: int = 4,
    stop_above: float = math.inf,
) -> LipschitzWitness:
    """An adversarially searched lower bound on the Lipschitz constant of `f: (P, n) -> (P, ...)`.

    1. `starts` points at scales 0.1, 1, 10, 100. Power iteration on the Jacobian J(x) (J v by central
       differences, Jᵀu by autograd) finds the worst direction v at each point, and each step moves the
       point along the gradient of ‖J(x) v‖² (ascent towards the steepest place).
    2. Bisection of segments between points, keeping the half with the larger ratio: a segment closes in
       on a jump (the ratio doubles each step) or on a steep point; it stops after `patience` steps
       without a 1 % gain.
    Every ratio is that of two evaluated points less a rounding margin, so the result is a sound lower
    bound and (a, b) its witness. Stops early once a ratio exceeds `stop_above`.
    """
    gen = torch.Generator().manual_seed(seed)
    scales = torch.tensor([0.1, 1.0, 10.0, 100.0], dtype=DTYPE).repeat((starts + 3) // 4)[
        :starts, None
    ]
    X = torch.randn(starts, n, generator=gen, dtype=DTYPE) * scales  # (P, n)
    found: list[tuple[Tensor, Tensor, Tensor]] = []  # (ratios (P,), A (P, n), B (P, n))
    evals = 0

    def F(Z: Tensor) -> tuple[Tensor, Tensor]:  # (P, n) -> values (P, K), row norms (P,)
        nonlocal evals
        evals += 1
        out = f(Z).reshape(Z.shape[0], -1)
        return out, torch.linalg.vector_norm(out.detach(), dim=1)

    def keep(r: Tensor, A: Tensor, B: Tensor) -> bool:
        found.append((r, A.detach(), B.detach()))
        return bool(r.max() > stop_above)

    def unit(V: Tensor) -> Tensor:
        out: Tensor = V / torch.linalg.vector_norm(V, dim=1, keepdim=True).clamp_min(1e-300)
        return out

    with input_checks(False):
        V = unit(torch.randn(starts, n, generator=gen, dtype=DTYPE))
        step = 0.25 * scales
        stopped = False
        for _ in range(power_steps):  # power iteration on J(x) and ascent on ‖J(x) v‖
            h = 1e-5 * (1 + torch.linalg.vector_norm(X, dim=1, keepdim=True))
            Xr = X.clone().requires_grad_(True)
            (Fp, np_), (Fm, nm) = F(Xr + h * V), F(Xr - h * V)
            if stopped := keep(
                _ratios(X + h * V, X - h * V, Fp.detach(), Fm.detach(), np_, nm),
                X + h * V,
                X - h * V,
            ):
                break
            D = Fp - Fm  # (P, K) ≈ 2h J v
            if not D.requires_grad:  # not differentiable by autograd: random directions only
                V = unit(torch.randn(starts, n, generator=gen, dtype=DTYPE))
                continue
            (ascent,) = torch.autograd.grad((D * D).sum(), Xr, retain_graph=True, allow_unused=True)
            (JtU,) = torch.autograd.grad(((Fp + Fm) * D.detach()).sum(), Xr, allow_unused=True)
            if JtU is not None:  # v <- Jᵀ J v / ‖·‖
                V = torch.where(
                    torch.linalg.vector_norm(JtU, dim=1, keepdim=True) > 0, unit(JtU), V
                ).detach()
            if ascent is not None:
                X = (X + step * unit(ascent)).detach()
            step = step * 0.6
        if not stopped:  # bisection towards the steepest point of each segment
            with torch.no_grad():
                B = X[torch.randperm(starts, generator=gen)]
                B = B + torch.randn(starts, n, generator=gen, dtype=DTYPE) * scales
                A, (FA, nA), (FB, nB) = X, F(X), F(B)
                best, still = 0.0, 0
                for _ in range(bisections):
                    M = (A + B) / 2
                    FM, nM = F(M)
                    left, right = _ratios(A, M, FA, FM, nA, nM), _ratios(M, B, FM, FB, nM, nB)
                    go_left = left >= right  # (P,)
                    r = torch.where(go_left, left, right)
                    if keep(
                        r, torch.where(go_left[:, None], A, M), torch.where(go_left[:, None], M, B)
                    ):
                        break
                    now = float(r.max())
                    still = still + 1 if now <= best * 1.01 else 0
                    best = max(best, now)
                    if still >= patience:
                        break
                    L = go_left[:, None]
                    A, FA, nA = (
                        torch.where(L, A, M),
                        torch.where(L, FA, FM),
                        torch.where(go_left, nA, nM),
                    )
                    B, FB, nB = (
                        torch.where(L, M, B),
                        torch.where(L, FM, FB),
                        torch.where(go_left, nM, nB),
                    )
    ratios = torch.stack([r for r, _, _ in found])  # (steps, P)
    flat = int(ratios.argmax())
    k, i = divmod(flat, starts)
    return LipschitzWitness(float(ratios[k, i]), found[k][1][i], found[k][2][i], evals)


def _closing_ratio(f: Callable[[Tensor], Tensor], w: LipschitzWitness, halvings: int = 20) -> float:
    """The witness pair bisected `halvings` more times (keeping the steeper half): a ratio that keeps
    doubling marks a jump, one that settles marks a steep but continuous map."""
    A, B = w.a[None], w.b[None]
    with torch.no_grad(), input_checks(False):
        FA, FB = f(A).reshape(1, -1), f(B).reshape(1, -1)
        nA, nB = torch.linalg.vector_norm(FA, dim=1), torch.linalg.vector_norm(FB, dim=1)
        r = w.ratio
        for _ in range(halvings):
            M = (A + B) / 2
            FM = f(M).reshape(1, -1)
            nM = torch.linalg.vector_norm(FM, dim=1)
            left, right = _ratios(A, M, FA, FM, nA, nM), _ratios(M, B, FM, FB, nM, nB)
            if bool(left >= right):
                B, FB, nB, r = M, FM, nM, float(left)
            else:
                A, FA, nA, r = M, FM, nM, float(right)
    return r


def _map_of(of: MapOf | str | None) -> tuple[MapOf, str]:
    if of is None or of == "routing":

        def routing(a: Adapter, x: Tensor) -> Tensor:
            g = a.routing(x)
            if g is None:
                raise VariantError(
                    f"{type(a).__name__} has no router (routing(x) is None): pass of="
                )
            return g

        return routing, "g"
    if isinstance(of, str):
        method = of

        def by_name(a: Adapter, x: Tensor) -> Tensor:
            fn = getattr(a, method, None)
            if not callable(fn):
                raise VariantError(f"of={method!r}: {type(a).__name__} has no method {method!r}")
            out = fn(x)
            if not isinstance(out, Tensor):
                raise VariantError(
                    f"of={method!r}: {type(a).__name__}.{method}(x) returned {type(out).__name__}"
                )
            return out

        return by_name, method
    return of, _named(of)


def bounds_search(
    f: Callable[[Tensor], Tensor], n: int, *, seed: int = 0
) -> LipschitzWitness | None:
    """The Jacobian search of `proofs_numeric.bounds` (screening, power iteration, Danskin ascent,
    pair ascent) on f, turned into a witness pair (x ± h v at its best point and direction, with the
    same rounding margin). None if f cannot go through torch.func (e.g. data-dependent Python)."""
    from .bounds.empirical import Probe, Region, search

    gen = torch.Generator().manual_seed(seed)
    scales = torch.tensor([0.1, 1.0, 10.0, 100.0], dtype=DTYPE).repeat(4)[:, None]  # (16, 1)
    X = torch.randn(16, n, generator=gen, dtype=DTYPE) * scales
    probe = Probe(f, batched=True)
    try:
        with input_checks(False):
            res = search(probe, probe, X, Region(None, None, 0.0), iterations=4, ascent=6,
                         pair_steps=4, keep=8, seed=seed)  # fmt: skip
            x, v = res.best_point.to(DTYPE), res.best_direction.to(DTYPE)
            h = 1e-6 * (1 + float(torch.linalg.vector_norm(x)))
            A, B = (x - h * v)[None], (x + h * v)[None]
            FA, FB = f(A).reshape(1, -1).detach(), f(B).reshape(1, -1).detach()
    except Exception:
        return None
    nA, nB = torch.linalg.vector_norm(FA, dim=1), torch.linalg.vector_norm(FB, dim=1)
    ratio = float(_ratios(A, B, FA, FB, nA, nB)[0])
    return LipschitzWitness(ratio, A[0], B[0], 0)


Effort = Literal["auto", "fast", "thorough"]


def lipschitz_bound(
    bound: Callable[[Adapter], float],
    *,
    of: MapOf | str | None = None,
    effort: Effort = "auto",
    name: str | None = None,
    statement: str | None = None,
    expect: str = "holds",
    shapes: Mapping[str, Any] | None = None,
    configs: SearchStrategy[Any] | None = None,
    max_examples: int | None = None,
) -> Declaration:
    """x -> of(adapter, x) is `bound(adapter)`-Lipschitz (ℓ2 -> ℓ2) on every drawn instance: the claimed
    bound must be >= the adversarially searched lower bound.

    `of`: None or "routing" (the routing weights g(x)), the name of an adapter method x -> tensor, or a
    callable (adapter, x) -> tensor. `effort`: "fast" runs `empirical_lipschitz`; "thorough" also runs
    the Jacobian search of `proofs_numeric.bounds` (`bounds_search`, ~3-5x the time, stronger on steep
    continuous maps) and keeps the larger; "auto" is "thorough" under the thorough Hypothesis profile.
    The reported error is measured / claimed (tolerance 1 + 1e-9)."""
    fn, label = _map_of(of)
    if effort not in ("auto", "fast", "thorough"):
        raise VariantError(f"effort={effort!r}: expected 'auto', 'fast' or 'thorough'")
    text = statement or f"x -> {label}(x) of {{variant}} is {_named(bound)}(adapter)-Lipschitz"

    def case(v: Variant, c: VariantCase) -> Outcome:
        a = c.build().requires_grad_(False)  # the search differentiates in x only
        claimed = float(bound(a))
        if not math.isfinite(claimed) or claimed < 0:
            return Outcome(
                math.inf, 1.0, f"claimed bound {claimed!r}: expected a finite number >= 0"
            )
        f = lambda X: fn(a, X)  # noqa: E731
        stop = claimed * (1 + LIPSCHITZ_RTOL)
        w = empirical_lipschitz(f, a.in_features, seed=c.input_seed, stop_above=stop)
        how = f"empirical_lipschitz(seed={c.input_seed})"
        thorough = effort == "thorough" or (
            effort == "auto" and settings.get_current_profile_name() == "thorough"
        )
        if thorough and w.ratio <= stop:
            j = bounds_search(f, a.in_features, seed=c.input_seed)
            if j is not None and j.ratio > w.ratio:
                w, how = j, f"bounds_search(seed={c.input_seed})"
        err = w.ratio / claimed if claimed > 0 else (0.0 if w.ratio == 0 else math.inf)
        detail = (
            f"measured ‖{label}(a) - {label}(b)‖/‖a - b‖ >= {w.ratio:.6g} vs claimed {claimed:.6g}"
        )
        if err > 1 + LIPSCHITZ_RTOL:
            detail += f" at a = {_fmt(w.a)}, b - a = {[f'{d:.3g}' for d in (w.b - w.a).tolist()]}"
            detail += f" ({how} finds it again)"
            closer = _closing_ratio(f, w)
            if closer > 100 * w.ratio:
                detail += (
                    f"; 20 more halvings of the pair give {closer:.3g}: {label}(x) jumps between a "
                    "and b, so no finite bound holds"
                )
        return Outcome(err, 1 + LIPSCHITZ_RTOL, detail)

    draw = _Draw(shapes, configs, None, max_examples)
    return _instance_declaration(
        "lipschitz_bound", name or f"lipschitz_{label}", text, expect, draw, case, False
    )


# ----- free-form properties --------------------------------------------------------------------------


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
    """`predicate(adapter, x)` holds on every drawn instance: it returns True, a float <= `tol`, or an
    `Outcome`. It runs under `torch.no_grad()`, on a fresh instance, so it may modify the parameters
    (e.g. zero the router to test balanced routing). Also available as `property` (not exported by
    `import *`, which would shadow the builtin)."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise VariantError(
            f"property name={name!r}: expected an identifier (letters, digits, _ or -)"
        )
    if not callable(predicate):
        raise VariantError(
            f"property {name!r}: predicate={predicate!r}: expected a callable (adapter, x)"
        )
    doc = (predicate.__doc__ or "").strip().splitlines()
    text = statement or (doc[0] if doc else f"{name} holds for {{variant}}")

    def case(v: Variant, c: VariantCase) -> Outcome:
        a = c.build()
        with torch.no_grad():
            res = predicate(a, c.inputs(a))
        if isinstance(res, Outcome):
            return res
        if isinstance(res, Tensor) and res.numel() == 1:
            res = res.item()
        if isinstance(res, bool) or type(res).__name__ == "bool_":  # numpy's bool too
            return Outcome(0.0 if bool(res) else 1.0, 0.5, f"predicate returned {bool(res)}")
        if not isinstance(res, int | float):
            return Outcome(
                math.inf,
                tol,
                f"predicate returned {type(res).__name__}; expected bool, float or Outcome",
            )
        value = float(res)
        return Outcome(value, tol, f"predicate returned {value:.6g} (tolerance {tol:g})")

    return _instance_declaration(
        "property", name, text, expect, _Draw(shapes, configs, where, max_examples), case
    )


# ----- loading ---------------------------------------------------------------------------------------


def _line_in(exc: BaseException, path: Path) -> str:
    """':LINE' of the last traceback frame inside `path` ('' if none)."""
    line = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename).resolve() == path:
            line = f":{frame.lineno}"
    return line


def _import_message(exc: BaseException, where: str, path: Path | None) -> str:
    if isinstance(exc, SyntaxError):
        loc = f"{exc.filename}:{exc.lineno}" if exc.filename else where
        return f"{loc}: syntax error: {exc.msg}"
    line = _line_in(exc, path) if path is not None else ""
    if isinstance(exc, ImportError):
        return f"{where}{line}: import failed: {exc}"
    if isinstance(exc, MoELoRAError):
        return f"{where}{line}: {exc}"
    return f"{where}{line}: {type(exc).__name__} while loading the variant: {exc}"


@contextmanager
def _on_path(directory: Path) -> Iterator[None]:
    """Let a variant file import the modules beside it."""
    entry = str(directory)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        if entry in sys.path:
            sys.path.remove(entry)


def _load_file(path: Path) -> ModuleType:
    path = path.resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", path.stem)
    modname = f"_moelora_variant_{stem}_{digest}"
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise VariantError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module  # dataclasses and pickling look the module up here
    try:
        with _on_path(path.parent):
            spec.loader.exec_module(module)
    except BaseException as e:
        del sys.modules[modname]
        if not isinstance(e, Exception):
            raise
        raise VariantError(_import_message(e, str(path), path)) from None
    return module


def _variants_of(module: ModuleType, where: str) -> list[Variant]:
    single, many = getattr(module, "VARIANT", None), getattr(module, "VARIANTS", None)
    if single is None and many is None:
        raise VariantError(f"{where}: no module-level VARIANT = Variant(...) or VARIANTS = [...]")
    found: list[Any] = ([single] if single is not None else []) + (
        list(many) if many is not None else []
    )
    if not found:
        raise VariantError(f"{where}: VARIANTS is empty; expected at least one Variant(...)")
    for v in found:
        if not isinstance(v, Variant):
            raise VariantError(
                f"{where}: VARIANT(S) holds {type(v).__name__}; expected proofs_numeric.variants.Variant"
            )
        if v.source is None:
            v.source = where
    return found


def load_variants(target: str | os.PathLike[str]) -> list[Variant]:
    """The variants declared by a .py file, by the `*_variant.py`/`moelora_variant_*.py` files of a
    directory, or by a dotted module name. Raises VariantError with a one-line reason."""
    text = os.fspath(target)
    p = Path(text)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and is_variant_file(f))
        if not files:
            raise VariantError(
                f"{text}: no variant file (named *_variant.py or moelora_variant_*.py) in this directory"
            )
        return [v for f in files for v in load_variants(f)]
    if p.suffix == ".py" or os.sep in text or "/" in text:
        if not p.is_file():
            raise VariantError(f"{text}: no such file")
        return _variants_of(_load_file(p), text)
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", text):
        raise VariantError(f"{text!r}: expected a .py file, a directory or a dotted module name")
    try:
        module = importlib.import_module(text)
    except ModuleNotFoundError as e:
        if e.name is not None and (text == e.name or text.startswith(e.name + ".")):
            raise VariantError(f"{text}: no such file, directory or importable module") from None
        raise VariantError(_import_message(e, text, None)) from None
    except Exception as e:
        origin = getattr(e, "__traceback__", None)
        path = Path(traceback.extract_tb(origin)[-1].filename).resolve() if origin else None
        raise VariantError(_import_message(e, text, path)) from None
    return _variants_of(module, text)


def load_variant(target: str | os.PathLike[str], name: str | None = None) -> Variant:
    """One variant of `load_variants(target)`: the one called `name`, or the only one."""
    vs = load_variants(target)
    if name is None:
        if len(vs) != 1:
            raise VariantError(
                f"{os.fspath(target)}: {len(vs)} variants {[v.name for v in vs]}; pass name="
            )
        return vs[0]
    for v in vs:
        if v.name == name:
            return v
    raise VariantError(f"{os.fspath(target)}: no variant {name!r}; found {[v.name for v in vs]}")


# ----- running ---------------------------------------------------------------------------------------


@dataclass
class VariantReport:
    """The claim reports of one variant."""

    name: str
    source: str
    reports: list[ClaimReport]
    seconds: float

    @builtins.property
    def ok(self) -> bool:
        return all(r.as_expected for r in self.reports)

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.name,
            "source": self.source,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "reports": [r.to_dict() for r in self.reports],
        }


def check_variant_claim(
    variant: Variant, claim: Claim[Any], *, max_examples: int | None = None
) -> ClaimReport:
    """`check_claim`, plus a readable report when no instance could be drawn or drawing raised."""
    start = time.perf_counter()
    try:
        report = check_claim(claim, max_examples=max_examples)
    except (
        Exception
    ) as e:  # raised while drawing (a config's where= or a strategy), not by the claim
        return ClaimReport(
            claim.name, claim.statement, claim.expect, False, 0, math.inf, math.nan,
            time.perf_counter() - start, detail=f"drawing an instance raised {type(e).__name__}: {e}",
        )  # fmt: skip
    if not report.holds and report.cases == 0 and not report.detail:
        report.detail = (
            "no instance could be drawn: every config was rejected; last rejection: "
            f"{variant._why.last or 'none recorded'}"
        )
    return report


def run_variant(
    variant: Variant,
    *,
    max_examples: int | None = None,
    only: Sequence[str] | None = None,
    on_report: Callable[[ClaimReport], object] | None = None,
) -> VariantReport:
    """Preflight (VariantError if the smallest instance cannot be built or run), then every claim under
    the active Hypothesis profile. `only`: claim names, with or without the `variant.` prefix."""
    start = time.perf_counter()
    variant.preflight()
    claims = variant.claims()
    if only:
        wanted = set(only)
        known = {c.name for c in claims} | {c.name.split(".", 1)[1] for c in claims}
        unknown = sorted(wanted - known)
        if unknown:
            raise VariantError(
                f"{variant.where}: no claim(s) {unknown}; known {sorted(c.name for c in claims)}"
            )
        claims = [c for c in claims if c.name in wanted or c.name.split(".", 1)[1] in wanted]
    reports = []
    for c in claims:
        rep = check_variant_claim(variant, c, max_examples=max_examples)
        reports.append(rep)
        if on_report is not None:
            on_report(rep)
    return VariantReport(variant.name, variant.where, reports, time.perf_counter() - start)


def format_report(rep: ClaimReport) -> list[str]:
    """The claim's line and, when refuted, its counterexample and the measured error."""
    lines = [rep.line()]
    if not rep.holds:
        if rep.counterexample:
            lines.append("      counterexample: " + rep.counterexample.replace("\n", "\n        "))
        err = (
            f"error {rep.counterexample_error:.3g} > tolerance {rep.tolerance:.3g}: "
            if rep.counterexample_error is not None
            else ""
        )
        if rep.detail or err:
            lines.append(f"      {err}{rep.detail}")
    return lines


property = satisfies  # the documented name of the declaration (shadows the builtin here only)
