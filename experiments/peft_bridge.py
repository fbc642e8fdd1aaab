"""Between the toolkit's `AdapterSpec` / `AdaptedLinear` and PEFT models.

* `peft_config_for(spec)`: the PEFT config of a spec (LoRA: PEFT's `LoraConfig` with lora_alpha = s·r;
  the routed architectures: the configs of `peft_methods`).
* `measurable_layers(model)`: {name: layer with `.adapter`} for a toolkit model (AdaptedLinear) or a PEFT
  model (the active adapter of each routed layer; LoRA layers as our `LoRA` carrying PEFT's A, B), so that
  `measure.capture_inputs` / `measure_model` and `layer_report` run on either.
* `load_peft_dir(directory, placement)`: base model (named in adapter_config.json) + PEFT adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from moelora_core.adapter import Adapter
from moelora_core.errors import ConfigError
from moelora_core.lora import LoRA, LoRAConfig

from .inject import AdapterSpec, adapted_layers

if TYPE_CHECKING:
    from peft.tuners.lora import LoraLayer

PEFT_CONFIG = "adapter_config.json"


def peft_config_for(spec: AdapterSpec, **extra: Any) -> Any:
    """The PEFT config that builds `spec`'s adapters (targets: suffixes, a regex or 'all-linear')."""
    from .peft_methods import PEFT_NATIVE, peft_method

    if spec.targets == ("all-linear",):
        targets: Any = "all-linear"
    else:
        targets = list(spec.targets) if spec.targets else spec.target_regex
    if spec.arch in PEFT_NATIVE:
        return _lora_config(spec, targets, **extra)
    return peft_method(spec.arch).from_spec(spec, targets, **extra)


def _lora_config(spec: AdapterSpec, targets: Any, **extra: Any) -> Any:
    """PEFT's own LoraConfig, s = lora_alpha / r (equal to our LoRA: tests/test_peft_parity.py)."""
    from peft import LoraConfig

    if spec.options:
        raise ConfigError(
            f"options={spec.options!r} with arch='lora': expected none (PEFT's LoraConfig is "
            "built from rank and scale alone)"
        )
    alpha = spec.scale * spec.rank
    # PEFT annotates lora_alpha as int, but computes scaling = lora_alpha / r with any real value
    return LoraConfig(r=spec.rank, lora_alpha=alpha, target_modules=targets, **extra)  # type: ignore[arg-type]


@dataclass
class PeftLayerView:
    """A PEFT tuner layer seen as the toolkit sees an AdaptedLinear: `.adapter` and the hookable layer."""

    layer: nn.Module
    adapter: Adapter

    def register_forward_hook(self, hook: Any) -> Any:
        return self.layer.register_forward_hook(hook)


def _lora_view(layer: LoraLayer, name: str) -> Adapter:
    """Our LoRA carrying PEFT's A, B and s (float copies; equal to PEFT's LoRA: tests)."""
    A = _weight(layer.lora_A[name])  # (r, n)
    B = _weight(layer.lora_B[name])  # (m, r)
    cfg = LoRAConfig(
        in_features=int(A.shape[1]),
        out_features=int(B.shape[0]),
        rank=int(A.shape[0]),
        scale=float(layer.scaling[name]),
    )
    out = LoRA(cfg, dtype=A.dtype, device=A.device)
    with torch.no_grad():
        out.A.weight.copy_(A)
        out.B.weight.copy_(B)
    return out


def _weight(module: nn.Module) -> Tensor:
    w = module.weight
    if not isinstance(w, Tensor):
        raise ConfigError(f"{type(module).__name__}.weight: expected a tensor")
    return w


def measurable_layers(model: nn.Module) -> dict[str, Any]:
    """{layer name: object with `.adapter` and `register_forward_hook`} for toolkit or PEFT models."""
    ours = adapted_layers(model)
    if ours:
        return dict(ours)
    from peft.tuners.lora import LoraLayer

    from .peft_layer import RoutedLayer

    out: dict[str, Any] = {}
    for name, mod in model.named_modules():
        short = name.removeprefix("base_model.model.")
        layer: nn.Module = mod  # the hookable module, whatever its PEFT layer type
        if isinstance(mod, RoutedLayer):
            active = [a for a in mod.active_adapters if a in mod.adapters]
            if active:
                out[short] = PeftLayerView(layer, mod.adapter(active[0]))
        elif isinstance(mod, LoraLayer):
            active = [a for a in mod.active_adapters if a in mod.lora_A]
            if active:
                out[short] = PeftLayerView(layer, _lora_view(mod, active[0]))
    if not out:
        raise ConfigError(
            f"model {type(model).__name__}: no adapted layer (neither toolkit adapters nor a PEFT "
            "LoRA or routed adapter); expected an adapted model"
        )
    return out


def is_peft_dir(directory: str | Path) -> bool:
    """A directory written by PEFT's save_pretrained (adapter_config.json with a peft_type)."""
    import json

    path = Path(directory) / PEFT_CONFIG
    if not path.is_file():
        return False
    try:
        return "peft_type" in json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return False
