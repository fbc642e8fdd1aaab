"""Helpers for `Adapter.config_from_spec`: reading a generic spec (`declared.AdapterSpecLike`) into an
architecture's own config. Errors name the spec's parameter, its value and what was expected."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from .declared import AdapterSpecLike
from .errors import ArgumentTypeError, ConfigError, require_positive_int

LAYER_FIELDS = ("in_features", "out_features")


def spec_expert_rank(spec: AdapterSpecLike) -> int:
    """r_e: `spec.expert_rank` if given, else rank // experts (>= 1)."""
    if spec.expert_rank is not None:
        require_positive_int("expert_rank", spec.expert_rank)
        return int(spec.expert_rank)
    require_positive_int("rank", spec.rank)
    require_positive_int("experts", spec.experts)
    r_e = spec.rank // spec.experts
    if r_e < 1:
        raise ConfigError(
            f"expert_rank=None (rank={spec.rank}, experts={spec.experts}): expected a per-expert "
            "rank >= 1 (set expert_rank, or rank >= experts)"
        )
    return r_e


def refuse_shared(family: str, spec: AdapterSpecLike) -> None:
    """ConfigError unless `spec.shared` is False: `family` shares nothing across layers."""
    if spec.shared is not False:
        raise ConfigError(
            f"shared={spec.shared!r} with {family!r}: expected False ({family} has no part shared "
            "by the layers of one module type)"
        )


def spec_options(config_class: type, spec: AdapterSpecLike, taken: set[str]) -> dict[str, Any]:
    """`spec.options` as config keyword arguments: each key must name a field of `config_class`
    that the spec's generic parameters (`taken`) and the layer's sizes do not already set."""
    options = spec.options
    if not isinstance(options, Mapping):
        raise ArgumentTypeError(f"options={options!r}: expected a mapping of config field names")
    free = sorted({f.name for f in fields(config_class)} - taken - set(LAYER_FIELDS))
    unknown = sorted(str(k) for k in options if k not in free)
    if unknown:
        raise ConfigError(
            f"options={dict(options)!r}: keys {unknown} are not free fields of "
            f"{config_class.__name__}; expected a subset of {free}"
        )
    return dict(options)
