"""Names of the architectures, their classes and their configs."""

from __future__ import annotations

from typing import Any

from .adapter import Adapter
from .comol import CoMoL, CoMoLConfig
from .errors import ArgumentTypeError, ConfigError
from .hydralora import HydraLoRA, HydraLoRAConfig
from .lora import LoRA, LoRAConfig
from .moelora import MoELoRA, MoELoRAConfig
from .talklora import TalkLoRA, TalkLoRAConfig

ARCHITECTURES: dict[str, tuple[type[Adapter], type[Any]]] = {
    "lora": (LoRA, LoRAConfig),
    "moelora": (MoELoRA, MoELoRAConfig),
    "hydralora": (HydraLoRA, HydraLoRAConfig),
    "talklora": (TalkLoRA, TalkLoRAConfig),
    "comol": (CoMoL, CoMoLConfig),
}


def architecture(name: str) -> tuple[type[Adapter], type[Any]]:
    """(class, config class) for a registered name; ConfigError naming the known ones otherwise."""
    if not isinstance(name, str):
        raise ArgumentTypeError(f"architecture={name!r}: expected one of {sorted(ARCHITECTURES)}")
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ConfigError(
            f"architecture={name!r}: expected one of {sorted(ARCHITECTURES)}"
        ) from None


def build(name: str, **config: Any) -> Adapter:
    """`build("comol", in_features=64, out_features=64, rank=8, num_cores=4)`."""
    cls, cfg_cls = architecture(name)
    try:
        cfg = cfg_cls(**config)
    except TypeError as e:
        raise ConfigError(f"config for {name!r}: {e}") from None
    return cls(cfg)
