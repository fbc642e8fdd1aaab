"""PEFT configs generated for registered architectures that have no hand-written one in `peft_config`.

The generated class is a `RoutedPeftConfig` (LoRA's vocabulary: `r`, `lora_alpha`, `target_modules`, ...)
plus `shared` and one field per other field of the architecture's core config dataclass, with that
field's default:

    core config field                    PEFT config field        AdapterSpec
    in_features, out_features            (the layer's)            (the layer's)
    rank / num_experts, num_cores / top_k / scale
                                         r / num_experts / top_k / lora_alpha = scale * r (generic)
    share_*                              shared                   shared
    expert_rank, router, core_router     the same name            the same name
    anything else (e.g. balance_weight)  the same name            options[name]

so `get_peft_model(base, MoLAPeftConfig(target_modules=["q_proj"], r=8, balance_weight=0.01))` works
for an architecture registered in `moelora_core.registry` and nowhere else.
"""

from __future__ import annotations

import copy
import dataclasses
from functools import partial
from typing import Any

from .peft_config import RoutedPeftConfig

__all__ = ["generated_config"]

# core config fields that the generic PEFT fields (or the layer) already carry
GENERIC = frozenset(
    {"in_features", "out_features", "rank", "num_experts", "num_cores", "top_k", "scale"}
)
SPEC_NAMED = ("expert_rank", "router", "core_router")  # AdapterSpec fields of the same name


def _field_like(f: dataclasses.Field[Any]) -> Any:
    """A dataclass field with `f`'s default (None where `f` has none: the core config then says
    what is missing)."""
    if f.default is not dataclasses.MISSING:
        return dataclasses.field(default_factory=partial(copy.deepcopy, f.default))
    if f.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=f.default_factory)
    return dataclasses.field(default=None)


def own_fields(config_class: type) -> tuple[list[str], list[str]]:
    """(AdapterSpec fields of the same name, option fields) of a core config dataclass."""
    named: list[str] = []
    options: list[str] = []
    for f in dataclasses.fields(config_class):
        if f.name in GENERIC or f.name.startswith("share"):
            continue
        (named if f.name in SPEC_NAMED else options).append(f.name)
    return named, options


def generated_config(arch: str) -> type[RoutedPeftConfig]:
    """The PEFT config class of registered architecture `arch`, from its core config's fields."""
    from moelora_core.registry import ARCHITECTURES

    adapter_class = ARCHITECTURES[arch]
    config_class: type = adapter_class.config_class
    named, option_names = own_fields(config_class)
    by_name = {f.name: f for f in dataclasses.fields(config_class)}
    new_fields: list[tuple[str, Any, Any]] = [
        ("shared", bool, dataclasses.field(default=False)),
        *((name, Any, _field_like(by_name[name])) for name in (*named, *option_names)),
    ]

    namespace = {
        "arch": arch,
        "spec_names": {"shared": "shared", **{n: n for n in named}},
        "option_names": tuple(option_names),
        "__doc__": f"{adapter_class.__name__} (generated from {config_class.__name__}'s fields).",
        "__module__": __name__,
    }
    made: type[RoutedPeftConfig] = dataclasses.make_dataclass(
        f"{adapter_class.__name__}PeftConfig",
        new_fields,
        bases=(RoutedPeftConfig,),
        namespace=namespace,
    )
    return made
