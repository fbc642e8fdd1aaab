"""Every architecture by name: one line each. A new architecture is its module plus one line here.

`architecture(name)` is its class, `config_class(name)` its config, `build(name, **config)` an instance
from keyword arguments, `create(config, ...)` an instance from a config of any registered type.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .adamole import AdaMoLE
from .adapter import Adapter
from .comol import CoMoL
from .denselora import DenseLoRA
from .errors import ArgumentTypeError, ConfigError
from .flylora import FlyLoRA
from .hydralora import HydraLoRA
from .lora import LoRA
from .moelora import MoELoRA
from .mola import MoLA
from .talklora import TalkLoRA

ARCHITECTURES: dict[str, type[Adapter]] = {
    "lora": LoRA,
    "moelora": MoELoRA,
    "hydralora": HydraLoRA,
    "talklora": TalkLoRA,
    "comol": CoMoL,
    "flylora": FlyLoRA,
    "denselora": DenseLoRA,
    "mola": MoLA,
    "adamole": AdaMoLE,
}


def architecture(name: str) -> type[Adapter]:
    """The class registered as `name`; ConfigError naming the known ones otherwise."""
    if not isinstance(name, str):
        raise ArgumentTypeError(f"architecture={name!r}: expected one of {sorted(ARCHITECTURES)}")
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ConfigError(
            f"architecture={name!r}: expected one of {sorted(ARCHITECTURES)}"
        ) from None


def config_class(name: str) -> type:
    """The config class of the architecture registered as `name`."""
    return architecture(name).config_class


def build(name: str, **config: Any) -> Adapter:
    """`build("comol", in_features=64, out_features=64, rank=8, num_cores=4)`."""
    cls = architecture(name)
    try:
        cfg = cls.config_class(**config)
    except TypeError as e:
        raise ConfigError(f"config for {name!r}: {e}") from None
    return cls.create(cfg)


def architecture_of(config: object) -> type[Adapter]:
    """The registered class whose `config_class` `config` is an instance of."""
    for cls in ARCHITECTURES.values():
        if type(config) is cls.config_class:
            return cls
    for cls in ARCHITECTURES.values():  # a subclass of a registered config
        if isinstance(config, cls.config_class):
            return cls
    names = sorted(cls.config_class.__name__ for cls in ARCHITECTURES.values())
    raise ArgumentTypeError(
        f"config={type(config).__name__}: expected a config of a registered architecture ({names})"
    )


def create(
    config: object,
    *,
    shared: nn.Module | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Adapter:
    """The adapter of `config` (any registered config type); `shared` from its class's `make_shared`."""
    return architecture_of(config).create(config, shared=shared, dtype=dtype, device=device)
