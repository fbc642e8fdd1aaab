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
from typing import Any

import torch
from torch import Tensor, nn

from moelora_core.adapter import Adapter
from moelora_core.errors import ConfigError
from moelora_core.lora import LoRA, LoRAConfig

from .inject import AdapterSpec, adapted_layers

PEFT_CONFIG = "adapter_config.json"


def peft_config_for(spec: AdapterSpec, **extra: Any) -> Any:
    """The PEFT config that builds `spec`'s adapters (targets: suffixes, a regex or 'all-linear')."""
    from peft import LoraConfig

    from .peft_methods import PEFT_CONFIGS

    if spec.targets == ("all-linear",):
        targets: Any = "all-linear"
    else:
        targets = list(spec.targets) if spec.targets else spec.target_regex
    alpha = spec.scale * spec.rank  # s = lora_alpha / r
    if spec.arch == "lora":
        return LoraConfig(r=spec.rank, lora_alpha=alpha, target_modules=targets, **extra)
    common: dict[str, Any] = {
        "target_modules": targets,
        "r": spec.rank,
        "lora_alpha": alpha,
        "num_experts": spec.experts,
        "top_k": spec.top_k,
    }
    own = {
        "moelora": {"expert_rank": spec.expert_rank, "router": spec.router},
        "hydralora": {"expert_rank": spec.expert_rank},
        "talklora": {"share_b": spec.shared_b},
        "comol": {"core_router": spec.core_router, "share_ab": spec.shared_ab},
    }[spec.arch]
    return PEFT_CONFIGS[spec.arch](**common, **own, **extra)


@dataclass
class PeftLayerView:
    """A PEFT tuner layer seen as the toolkit sees an AdaptedLinear: `.adapter` and the hookable layer."""

    layer: nn.Module
    adapter: Adapter

    def register_forward_hook(self, hook: Any) -> Any:
        return self.layer.register_forward_hook(hook)


def _lora_view(layer: nn.Module, name: str) -> Adapter:
    """Our LoRA carrying PEFT's A, B and s (float copies; equal to PEFT's LoRA: tests)."""
    A: Tensor = layer.lora_A[name].weight
    B: Tensor = layer.lora_B[name].weight
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


def measurable_layers(model: nn.Module) -> dict[str, Any]:
    """{layer name: object with `.adapter` and `register_forward_hook`} for toolkit or PEFT models."""
    ours = adapted_layers(model)
    if ours:
        return dict(ours)
    from peft.tuners.lora import LoraLayer

    from .peft_methods import RoutedLayer

    out: dict[str, Any] = {}
    for name, mod in model.named_modules():
        short = name.removeprefix("base_model.model.")
        if isinstance(mod, RoutedLayer):
            active = [a for a in mod.active_adapters if a in mod.adapters]
            if active:
                out[short] = PeftLayerView(mod, mod.adapters[active[0]])
        elif isinstance(mod, LoraLayer):
            active = [a for a in mod.active_adapters if a in mod.lora_A]
            if active:
                out[short] = PeftLayerView(mod, _lora_view(mod, active[0]))
    if not out:
        raise ConfigError(
            f"model {type(model).__name__}: no adapted layer (neither toolkit adapters nor a PEFT "
            "LoRA/MoELoRA/HydraLoRA/TalkLoRA/CoMoL adapter); expected an adapted model"
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
