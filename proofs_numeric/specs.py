"""A plain generic layer spec (`moelora_core.adapter.AdapterSpecLike`), so that the benchmarks (and any
tool) build any registered architecture through its own `config_from_spec` instead of a table of
per-architecture constructors.

    LayerSpec(rank=r, experts=E, expert_rank=r_e, top_k=k, scale=s, shared=True)
    config_for("comol", spec, in_features=n, out_features=m)  # -> CoMoLConfig(...)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from moelora_core.registry import architecture


@dataclass(frozen=True, kw_only=True)
class LayerSpec:
    """The generic hyper-parameters every `config_from_spec` reads (see `AdapterSpecLike`)."""

    rank: int = 8  # total rank r (LoRA, TalkLoRA, CoMoL)
    experts: int = 4  # E, or N for CoMoL
    expert_rank: int | None = None  # r_e; None: rank // experts
    top_k: int | None = None
    scale: float = 1.0
    router: str = "input"  # MoELoRA: "input" | "latent"
    core_router: bool = True  # CoMoL
    shared: bool = False  # the architecture's cross-layer sharing
    options: Mapping[str, Any] = field(default_factory=dict)  # other config fields, by name


def config_for(family: str, spec: LayerSpec, *, in_features: int, out_features: int) -> Any:
    """The config of a registered architecture for an `in_features -> out_features` layer."""
    return architecture(family).config_from_spec(spec, in_features, out_features)
