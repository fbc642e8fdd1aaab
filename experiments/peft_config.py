"""PEFT configs for the routed architectures: LoRA-compatible fields plus each architecture's own.

Every config speaks PEFT's LoRA vocabulary (`r`, `lora_alpha` with s = lora_alpha / r, `lora_dropout`,
`target_modules` as names, a regex or "all-linear", `exclude_modules`, `layers_to_transform`,
`layers_pattern`, `modules_to_save`, `bias="none"`) and adds its architecture's hyper-parameters:

    MoELoRAPeftConfig     num_experts E, expert_rank r_e (default r // E), router "input" | "latent", top_k
    HydraLoRAPeftConfig   num_experts E, expert_rank r_e (default r // E), top_k
    TalkLoRAPeftConfig    num_experts E (r divisible by E), top_k, share_b, talk_init
    CoMoLPeftConfig       num_experts = the number of cores N, core_router, top_k, share_ab

Every config also has `options` (the architecture's other config fields, by name, as `AdapterSpec.options`).
`to_spec()` turns a config into the toolkit's `AdapterSpec` and `from_spec(spec)` back, so a PEFT layer
builds its adapter with the same `build_adapter` as `inject_adapters`: one implementation of each
architecture (`moelora_core`). A registered architecture without a config here gets one generated from
its core config's fields (`peft_generated`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from peft import PeftConfig

from moelora_core.errors import ConfigError

from .inject import AdapterSpec
from .peft_types import peft_type

__all__ = [
    "CoMoLPeftConfig",
    "HydraLoRAPeftConfig",
    "MoELoRAPeftConfig",
    "RoutedPeftConfig",
    "TalkLoRAPeftConfig",
]


@dataclass
class RoutedPeftConfig(PeftConfig):
    """Fields common to every routed architecture (PEFT's LoRA names and meanings)."""

    arch: ClassVar[str] = ""
    # this config's fields that set AdapterSpec fields ({field: spec field}), and those that are
    # passed on as AdapterSpec.options (the generated configs' own fields)
    spec_names: ClassVar[dict[str, str]] = {}
    option_names: ClassVar[tuple[str, ...]] = ()
    r: int = field(default=8, metadata={"help": "Total rank r (split into E heads where needed)."})
    lora_alpha: float = field(default=8.0, metadata={"help": "Scale s = lora_alpha / r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter's input x."})
    num_experts: int = field(default=4, metadata={"help": "Experts E (CoMoL: cores N)."})
    top_k: int | None = field(
        default=None, metadata={"help": "Keep the k largest routing weights."}
    )
    target_modules: list[str] | set[str] | str | None = field(
        default=None,
        metadata={"help": "Module names, a regex (full match) or 'all-linear'."},
    )
    exclude_modules: list[str] | set[str] | str | None = field(
        default=None, metadata={"help": "Module names or a regex to leave out."}
    )
    layers_to_transform: list[int] | int | None = field(
        default=None, metadata={"help": "Only these layer indexes."}
    )
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "Name of the layer list, with layers_to_transform."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Other modules trained and saved in full (e.g. a head)."}
    )
    bias: str = field(default="none", metadata={"help": "Only 'none' is supported."})
    options: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Other config fields of the architecture, by name."}
    )

    def __post_init__(self) -> None:
        PeftConfig.__post_init__(self)  # = super(): PEFT leaves it unannotated
        self.peft_type = peft_type(self.arch)
        if isinstance(self.target_modules, list | tuple | set):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list | tuple | set):
            self.exclude_modules = set(self.exclude_modules)
        if self.bias != "none":
            raise ConfigError(
                f"bias={self.bias!r}: expected 'none' (routed adapters train no base bias)"
            )
        if isinstance(self.lora_dropout, bool) or not 0.0 <= float(self.lora_dropout) < 1.0:
            raise ConfigError(f"lora_dropout={self.lora_dropout!r}: expected a float in [0, 1)")
        self.to_spec()  # validates r, E, top_k, ... with the toolkit's own checks

    @property
    def scale(self) -> float:
        return float(self.lora_alpha) / float(self.r)

    def spec_fields(self) -> dict[str, Any]:
        """The architecture's own AdapterSpec fields (`spec_names`) and its `options`."""
        out = {spec: getattr(self, mine) for mine, spec in self.spec_names.items()}
        out["options"] = {**self.options, **{n: getattr(self, n) for n in self.option_names}}
        return out

    @classmethod
    def fields_of_spec(cls, spec: AdapterSpec) -> dict[str, Any]:
        """The inverse of `spec_fields`: this config's own fields and options from a spec."""
        out = {mine: getattr(spec, name) for mine, name in cls.spec_names.items()}
        out.update({n: spec.options[n] for n in cls.option_names if n in spec.options})
        out["options"] = {k: v for k, v in spec.options.items() if k not in cls.option_names}
        return out

    @classmethod
    def from_spec(cls, spec: AdapterSpec, targets: Any, **extra: Any) -> RoutedPeftConfig:
        """The config that builds `spec`'s adapters on `targets` (names, a regex or 'all-linear')."""
        return cls(
            target_modules=targets,
            r=spec.rank,
            lora_alpha=spec.scale * spec.rank,  # s = lora_alpha / r
            num_experts=spec.experts,
            top_k=spec.top_k,
            **cls.fields_of_spec(spec),
            **extra,
        )

    def to_spec(self) -> AdapterSpec:
        """The toolkit's AdapterSpec with these hyper-parameters (targets: every module PEFT picked)."""
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"r={self.r!r}: expected an integer >= 1")
        return AdapterSpec(
            arch=self.arch,
            target_regex=".*",
            rank=self.r,
            experts=self.num_experts,
            top_k=self.top_k,
            scale=self.scale,
            **self.spec_fields(),
        )


@dataclass
class MoELoRAPeftConfig(RoutedPeftConfig):
    """MoELoRA (MoLoRA): E LoRA experts of rank r_e, an input or latent softmax router."""

    arch: ClassVar[str] = "moelora"
    spec_names: ClassVar[dict[str, str]] = {"expert_rank": "expert_rank", "router": "router"}
    expert_rank: int | None = field(default=None, metadata={"help": "r_e (default r // E)."})
    router: Literal["input", "latent"] = field(
        default="input", metadata={"help": "Router reads x ('input') or A x ('latent')."}
    )


@dataclass
class HydraLoRAPeftConfig(RoutedPeftConfig):
    """HydraLoRA: one shared A of rank r_e, E heads B_i, an input router."""

    arch: ClassVar[str] = "hydralora"
    spec_names: ClassVar[dict[str, str]] = {"expert_rank": "expert_rank"}
    expert_rank: int | None = field(default=None, metadata={"help": "r_e (default r // E)."})


@dataclass
class TalkLoRAPeftConfig(RoutedPeftConfig):
    """TalkLoRA: heads of A x mixed by a talking module T for the router; optional layer-shared B."""

    arch: ClassVar[str] = "talklora"
    spec_names: ClassVar[dict[str, str]] = {"share_b": "shared"}
    share_b: bool = field(
        default=False, metadata={"help": "Share B by the layers of one module type."}
    )


@dataclass
class CoMoLPeftConfig(RoutedPeftConfig):
    """CoMoL: shared A, B and N cores mixed in the r x r core space; optional layer-shared A, B."""

    arch: ClassVar[str] = "comol"
    spec_names: ClassVar[dict[str, str]] = {"core_router": "core_router", "share_ab": "shared"}
    core_router: bool = field(default=True, metadata={"help": "Route on A x (else on x)."})
    share_ab: bool = field(
        default=False, metadata={"help": "Share A, B by the layers of one module type."}
    )
