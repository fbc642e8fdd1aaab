"""`Variant`: a user-defined architecture, how its instances are drawn, and the claims made about it."""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from hypothesis import HealthCheck, find, reject, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisException
from hypothesis.strategies import SearchStrategy
from torch import Tensor

from moelora_core.adapter import Adapter
from moelora_core.errors import ConfigError

from ..checking import EXACT_TOL, Claim, Outcome, rel_error, summarise
from ..strategies import DTYPE, seeds
from .base import (
    Declaration,
    Draw,
    VariantCase,
    VariantError,
    check_name,
    default_dtype,
)
from .search import INPUT_SCALE, Tweak, apply_structure, init_parameters, tweaks
from .shapes import (
    Redraw,
    Rejections,
    batch_strategy,
    config_class_of,
    config_fields,
    configs_from_shapes,
    construct,
    extreme_values,
    field_strategy,
    override,
)
from .snippet import describe_case

BATCHES = st.sampled_from([(3,), (2, 3), (1,), (2, 1, 2)])
PREFLIGHT_BATCHES = [(2,), (2, 3), (1, 2, 2)]


class Variant:
    """A user-defined architecture and the claims made about it.

    name: short identifier (claim names are `name.claim`).
    build: config -> Adapter (usually the Adapter subclass itself).
    configs: a Hypothesis strategy of configs; or `shapes` (with `config`, the frozen dataclass; inferred
        from `build`'s annotation when omitted): per field an inclusive `(lo, hi)` range, a `[list]` of
        choices, a strategy or a constant.
    redraw: exception types that mark a drawn config as invalid (redrawn, like a `MoELoRAError` raised
        by the config's constructor or a `ConfigError` raised by `build`); any other exception is an
        error of the variant's code (verdict error, with its file and line).
    claims: declarations made with `reduces_to`, `embeds`, `param_formula`, `complexity`,
        `lipschitz_bound`, `property`.
    init: `init(adapter, seed)` to redraw the parameters (default: every parameter N(0, 1/fan_in) from
        its own stream seeded by (seed, name), so no zero-initialised B makes a claim trivially true).
    input_scale: inputs are `input_scale * N(0, I)`.
    batches: the leading shapes of the inputs drawn (default (3,), (2, 3), (1,), (2, 1, 2)).
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
        redraw: Sequence[type[BaseException]] = (),
        init: Callable[[Adapter, int], object] | None = None,
        input_scale: float = 1.0,
        batches: Sequence[tuple[int, ...]] | None = None,
        description: str = "",
    ) -> None:
        check_name("Variant name", name)
        if not callable(build):
            raise VariantError(
                f"Variant {name!r}: build={build!r}: expected a callable config -> Adapter"
            )
        self.name, self.build, self.init, self.description = name, build, init, description
        self.redraw: Redraw = tuple(redraw)
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in self.redraw):
            raise VariantError(f"Variant {name!r}: redraw={redraw!r}: expected exception types")
        self.input_scale = float(input_scale)
        self.batches = BATCHES if batches is None else batch_strategy(name, batches)
        self.source: str | None = None  # set by the loader: the file or module as given
        self.origin: str | None = None  # set by the loader: absolute path or dotted module name
        self.module: Any = None  # set by the loader: the module the variant was declared in
        self.why = Rejections()
        self.shapes: dict[str, Any] | None = dict(shapes) if shapes is not None else None
        self.config_class = config
        self.configs = self._config_source(configs, shapes)
        self.declarations = list(claims)
        self._check_declarations()

    def _config_source(
        self, configs: SearchStrategy[Any] | None, shapes: Mapping[str, Any] | None
    ) -> SearchStrategy[Any]:
        name = self.name
        if configs is None and shapes is None:
            raise VariantError(
                f"Variant {name!r}: give configs=<hypothesis strategy> or shapes={{field: range}}"
            )
        if configs is not None and shapes is not None:
            raise VariantError(f"Variant {name!r}: give either configs= or shapes=, not both")
        if shapes is not None:
            self.config_class = self.config_class or config_class_of(self.build)
            if self.config_class is None:
                raise VariantError(
                    f"Variant {name!r}: shapes= needs the config dataclass: pass config=MyConfig"
                )
            self._check_shape_keys(dict(shapes), complete=True)
            return configs_from_shapes(self.config_class, dict(shapes), self.why, self.redraw)
        if not isinstance(configs, SearchStrategy):
            raise VariantError(
                f"Variant {name!r}: configs={configs!r}: expected a Hypothesis strategy"
            )
        return configs

    def _check_declarations(self) -> None:
        if not self.declarations:
            raise VariantError(
                f"Variant {self.name!r} declares no claims: pass claims=[reduces_to(...), param_formula(...), ...]"
            )
        for d in self.declarations:
            if not isinstance(d, Declaration):
                raise VariantError(
                    f"Variant {self.name!r}: claims contains {d!r}; expected declarations made with "
                    "reduces_to, embeds, param_formula, complexity, lipschitz_bound or property"
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
        names, required = config_fields(cls)
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

    # ----- drawn instances -------------------------------------------------------------------------
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
        elif shapes and self.shapes is not None and self.config_class is not None:
            self._check_shape_keys(dict(shapes), complete=False)
            merged = {**self.shapes, **shapes}
            out = configs_from_shapes(self.config_class, merged, self.why, self.redraw)
        elif shapes:
            out = override(self.configs, shapes, self.why, self.redraw)
        else:
            out = self.configs
        return out.filter(where) if where is not None else out

    def extreme_configs(self, draw: Draw) -> SearchStrategy[Any] | None:
        """Configs at the ends of every integer range and far beyond (x16, x256), for counting."""
        if self.shapes is None or self.config_class is None or draw.configs is not None:
            return None
        merged = {**self.shapes, **(draw.shapes or {})}
        fields = {
            k: st.sampled_from(ends) if (ends := extreme_values(v)) else field_strategy(k, v)
            for k, v in merged.items()
        }
        cls = self.config_class
        out = st.fixed_dictionaries(fields).map(
            lambda kw: construct(cls, kw, self.why, self.redraw)
        )
        return out.filter(draw.where) if draw.where is not None else out

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

    def search_cases(self, draw: Draw) -> SearchStrategy[VariantCase] | None:
        """The adversarial phase's cases: tweaked instances, or (for counting) extreme sizes."""
        if draw.search == "sizes":
            extreme = self.extreme_configs(draw)
            if extreme is None:
                return None
            return st.builds(
                VariantCase, config=extreme, seed=st.just(0), input_seed=st.just(0),
                batch=st.just((1,)), variant=st.just(self), tweak=st.just(Tweak(meta=True)),
            )  # fmt: skip
        return st.builds(
            VariantCase,
            config=self.config_strategy(draw.shapes, draw.configs, draw.where),
            seed=seeds,
            input_seed=seeds,
            batch=self.batches,
            variant=st.just(self),
            tweak=tweaks(),
        )

    def _built(self, config: Any, meta: bool) -> Adapter:
        """build(config) in float64 (on the meta device if `meta`); a redraw-type exception rejects."""
        invalid: Redraw = (ConfigError, *self.redraw)
        try:
            with default_dtype(DTYPE):  # built in float64 directly: no float32 round trip
                if meta:
                    with torch.device("meta"):
                        a = self.build(config)
                else:
                    a = self.build(config)
        except invalid as e:
            self.why.last = f"build({config!r}): {e}"
            reject()
        if not isinstance(a, Adapter):
            raise VariantError(
                f"{self.where}: variant {self.name!r}: build({config!r}) returned "
                f"{type(a).__name__}; expected a moelora_core.adapter.Adapter subclass"
            )
        return a

    def instance(self, config: Any, seed: int, tweak: Tweak | None = None) -> Adapter:
        """The float64 adapter for `config` with every parameter redrawn by `seed`, then `tweak`'s
        structure applied (a `meta` tweak: built on the meta device, for counting only)."""
        if tweak is not None and tweak.meta:
            return self._built(config, meta=True)
        a = self._built(config, meta=False).to(DTYPE)
        if self.init is not None:
            self.init(a, seed)
        else:
            init_parameters(a, seed)
        if tweak is not None and (tweak.structure != "plain" or tweak.eps > 0):
            apply_structure(a, seed, tweak)
        return a

    def inputs(
        self,
        adapter: Adapter,
        input_seed: int,
        batch: tuple[int, ...] = (3,),
        tweak: Tweak | None = None,
    ) -> Tensor:
        gen = torch.Generator().manual_seed(input_seed)
        scale = self.input_scale * INPUT_SCALE.get(tweak.structure if tweak else "", 1.0)
        return scale * torch.randn(*batch, adapter.in_features, generator=gen, dtype=DTYPE)

    def rebuild(
        self,
        config: Any,
        seed: int = 0,
        input_seed: int = 0,
        batch: tuple[int, ...] = (3,),
        tweak: Tweak | None = None,
    ) -> tuple[Adapter, Tensor]:
        """The adapter and inputs of a reported counterexample (before any ascent steps)."""
        a = self.instance(config, seed, tweak)
        return a, self.inputs(a, input_seed, tuple(batch), tweak)

    def recheck(
        self,
        claim: str,
        config: Any,
        seed: int = 0,
        input_seed: int = 0,
        batch: tuple[int, ...] = (3,),
        tweak: Tweak | None = None,
    ) -> Outcome:
        """Check one claim (name with or without the `variant.` prefix) on one instance: the values a
        counterexample reports, computed again."""
        decls = self.declared()
        d = decls.get(claim) or decls.get(f"{self.name}.{claim}")
        if d is None:
            raise VariantError(f"{self.where}: no claim {claim!r}; known {sorted(decls)}")
        if d.case is None:
            raise VariantError(f"claim {claim!r} is not checked on instances of {self.name!r}")
        return d.case(self, VariantCase(config, seed, input_seed, tuple(batch), self, tweak))

    def describe(self, case: VariantCase, claim: str, show_inputs: bool = True) -> str:
        """A counterexample as text, ending with a snippet that rebuilds it and re-checks the claim."""
        return describe_case(self, case, claim, show_inputs)

    # ----- preflight and claims --------------------------------------------------------------------
    def _buildable(self, config: Any) -> bool:
        try:
            self._built(config, meta=False)
        except HypothesisException:
            return False
        except Exception:
            return True  # the preflight run reports it, with the config
        return True

    def preflight(self) -> None:
        """Build and run the smallest drawn instance on several batch shapes; VariantError with a
        one-line reason if that fails."""
        quiet = settings(database=None, max_examples=200, deadline=None, derandomize=True,
                         suppress_health_check=list(HealthCheck))  # fmt: skip
        where = f"{self.where}: variant {self.name!r}"
        try:
            config = find(self.configs, self._buildable, settings=quiet)
        except HypothesisException:
            raise VariantError(
                f"{where}: no valid config could be drawn; last rejection: "
                f"{self.why.last or 'none recorded'}"
            ) from None
        except VariantError as e:  # a config constructor raised something else than a redraw type
            raise VariantError(f"{where}: {e}") from None
        for batch in PREFLIGHT_BATCHES:
            try:
                a, x = self.rebuild(config, 0, 0, batch)
                out, g = a(x), a.routing(x)
                flat = a(x.reshape(-1, x.shape[-1]))
            except VariantError:
                raise
            except Exception as e:
                raise VariantError(
                    f"{where}: building or running {config!r} raised {summarise(e)} "
                    f"(inputs of batch shape {batch})"
                ) from None
            self._check_outputs(where, config, a, x, out, g, flat)

    def _check_outputs(
        self, where: str, config: Any, a: Adapter, x: Tensor, out: object, g: object, flat: Tensor
    ) -> None:
        lead, shape = tuple(x.shape[:-1]), tuple(x.shape)
        if not isinstance(out, Tensor) or tuple(out.shape) != (*lead, a.out_features):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise VariantError(
                f"{where} on {config!r}: Δ(x) has shape {got} for x of shape {shape}; "
                f"expected {(*lead, a.out_features)} (the batch axes, then out_features)"
            )
        if g is not None and (not isinstance(g, Tensor) or tuple(g.shape[:-1]) != lead):
            got = tuple(g.shape) if isinstance(g, Tensor) else type(g).__name__
            raise VariantError(
                f"{where} on {config!r}: routing(x) has shape {got} for x of shape {shape}; "
                f"expected {(*lead, 'E')}"
            )
        if rel_error(flat, out.reshape(flat.shape)) > EXACT_TOL:
            raise VariantError(
                f"{where} on {config!r}: Δ(x) for x of shape {shape} differs from Δ of its rows "
                "flattened to (N, n): forward must act on each row (token) on its own"
            )

    def declared(self) -> dict[str, Declaration]:
        """Full claim names (`variant.claim`, `_2`, `_3` for repeated names) -> declarations."""
        out: dict[str, Declaration] = {}
        seen: dict[str, int] = {}
        for d in self.declarations:
            seen[d.name] = seen.get(d.name, 0) + 1
            suffix = "" if seen[d.name] == 1 else f"_{seen[d.name]}"
            out[f"{self.name}.{d.name}{suffix}"] = d
        return out

    def claims(self) -> list[Claim[Any]]:
        return [d.make(self, full) for full, d in self.declared().items()]
