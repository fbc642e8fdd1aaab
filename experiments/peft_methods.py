"""Every registered routed architecture as a PEFT method (registered with `peft.utils.register_peft_method`).

MoELoRA, HydraLoRA, TalkLoRA and CoMoL have hand-written configs (`peft_config`); any other architecture of
`moelora_core.registry` (except LoRA, which is PEFT's own `LoraConfig`) gets one generated from its core
config's fields (`peft_generated`).

    from peft import get_peft_model, PeftModel
    from moelora_experiments.peft_methods import TalkLoRAPeftConfig  # the import registers every method

    model = get_peft_model(base, TalkLoRAPeftConfig(target_modules=["q_proj", "v_proj"], r=8))
    model.save_pretrained("out")            # adapter-only: adapter_model.safetensors + adapter_config.json
    PeftModel.from_pretrained(base2, "out")  # "peft_type": "TALKLORA" names the method

Layer-shared parameters (TalkLoRA `share_b`, CoMoL `share_ab`) live once per module type in the tuner,
`base_model.<prefix>shared[adapter][<leaf>_<n>x<m>]`; every layer of that type (same leaf name and shape)
holds the same tensors. The checkpoint stores each shared tensor once, under the tuner's key, and loading
fills the layers' aliases from it. LoRA itself is PEFT's own `LoraConfig` (ours equals it: tests).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import torch
from peft import PeftConfig
from peft.tuners.tuners_utils import BaseTuner
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, register_peft_method
from torch import nn

from moelora_core.errors import ConfigError

from .peft_config import (
    CoMoLPeftConfig,
    HydraLoRAPeftConfig,
    MoELoRAPeftConfig,
    RoutedPeftConfig,
    TalkLoRAPeftConfig,
)
from .peft_layer import NotMergeableError, RoutedLayer, RoutedLinear, not_mergeable

__all__ = [
    "PEFT_CONFIGS",
    "PEFT_NATIVE",
    "CoMoLPeftConfig",
    "HydraLoRAPeftConfig",
    "MoELoRAPeftConfig",
    "NotMergeableError",
    "RoutedPeftConfig",
    "RoutedTuner",
    "TalkLoRAPeftConfig",
    "peft_method",
    "routed_layers",
]


# PEFT's LoRA defaults per model type ("all-linear" aside), as the list-valued dict BaseTuner declares
LORA_TARGETS = {k: list(v) for k, v in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.items()}


class RoutedTuner(BaseTuner):
    """The BaseTuner of one routed architecture; subclasses fix prefix and layer class."""

    prefix: str = ""
    tuner_layer_cls: type[RoutedLayer] = RoutedLayer
    layer_cls: ClassVar[type[RoutedLinear]] = RoutedLinear
    target_module_mapping = LORA_TARGETS
    uses_shared_state = True

    @property
    def shared_store(self) -> nn.ModuleDict:
        name = self.prefix + "shared"
        if name not in self._modules:
            self.add_module(name, nn.ModuleDict())
        store = self._modules[name]
        assert store is not None  # added just above
        return _module_dict(store)

    def _create_and_replace(
        self,
        peft_config: PeftConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        parameter_name: str | None = None,
    ) -> None:
        config = peft_config
        if not isinstance(config, RoutedPeftConfig):
            raise ConfigError(f"config={type(config).__name__}: expected a RoutedPeftConfig")
        layer = target if isinstance(target, RoutedLayer) else None
        feats = (layer.in_features, layer.out_features) if layer else _features(target)
        mtype = f"{target_name}_{feats[0]}x{feats[1]}"
        store = self.shared_store
        if adapter_name not in store:
            store[adapter_name] = nn.ModuleDict()
        types = _module_dict(store[adapter_name])
        shared = dict(types.items()).get(mtype)  # nn.ModuleDict has no get()
        if layer is not None:
            adapter = layer.update_layer(adapter_name, config, shared, config.inference_mode)
        else:
            new = self.layer_cls(target, adapter_name, config, shared)
            if adapter_name not in self.active_adapters:
                new.requires_grad_(False)  # an added adapter is not trainable until set_adapter
            self._replace_module(parent, target_name, new, target)
            adapter = new.adapter(adapter_name)
        part = adapter.shared_part()
        if shared is None and part is not None:
            types[mtype] = part

    def _check_merge_allowed(self) -> None:
        raise not_mergeable(self.prefix.rstrip("_"))

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        if adapter_name in self.shared_store:
            del self.shared_store[adapter_name]

    # ----- checkpoint keys: the adapter name removed, each shared tensor stored once ---------------
    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        pattern = rf"(^|\.)({re.escape(cls.prefix)}(?:adapter|shared|dropout))\.{re.escape(adapter_name)}(\.|$)"
        return re.sub(pattern, r"\1\2\3", key)

    @classmethod
    def _get_adapter_state_dict(
        cls,
        model: nn.Module,
        config: Any,
        adapter_name: str,
        state_dict: dict[str, torch.Tensor],
        unwanted_adapter_names: list[str],
    ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = super()._get_adapter_state_dict(
            model, config, adapter_name, state_dict, unwanted_adapter_names
        )
        for alias in aliases(model, adapter_name):
            out.pop(alias, None)
        return out

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: Any, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = super()._remap_adapter_state_dict_for_load(
            model, config, adapter_name, state_dict
        )
        for alias, owner in aliases(model, adapter_name).items():
            if owner in out:
                out.setdefault(alias, out[owner])
        return out


def _features(module: nn.Module) -> tuple[int, int]:
    from .inject import linear_features

    feats = linear_features(module)
    if feats is None:
        raise TypeError(
            f"target {type(module).__name__}: expected an nn.Linear or a transformers Conv1D "
            "(routed adapters wrap linear layers only)"
        )
    return feats


def _module_dict(module: nn.Module) -> nn.ModuleDict:
    if not isinstance(module, nn.ModuleDict):
        raise ConfigError(f"{type(module).__name__}: expected the tuner's nn.ModuleDict store")
    return module


def _strip(name: str) -> str:
    return name.removeprefix("_fsdp_wrapped_module.")


def aliases(model: nn.Module, adapter_name: str) -> dict[str, str]:
    """{layer key of a shared tensor: the tuner's key of it} for `adapter_name` (state-dict keys)."""
    owners: dict[int, str] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, RoutedTuner) and (mod.prefix + "shared") in mod._modules:
            store = mod.shared_store
            if adapter_name in store:
                head = f"{_strip(name)}." if name else ""
                for pname, p in store[adapter_name].named_parameters():
                    owners[id(p)] = f"{head}{mod.prefix}shared.{adapter_name}.{pname}"
    out: dict[str, str] = {}
    if not owners:
        return out
    for name, mod in model.named_modules():
        if isinstance(mod, RoutedLayer) and adapter_name in mod.adapters:
            head = f"{_strip(name)}." if name else ""
            for pname, p in mod.adapters[adapter_name].named_parameters(remove_duplicate=False):
                if id(p) in owners:
                    out[f"{head}{mod.prefix}adapter.{adapter_name}.{pname}"] = owners[id(p)]
    return out


def routed_layers(model: nn.Module) -> dict[str, RoutedLayer]:
    """{qualified name: routed tuner layer} of a PEFT model, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, RoutedLayer)}


def _make(arch: str, config_cls: type[RoutedPeftConfig]) -> type[RoutedTuner]:
    prefix = f"{arch}_"
    layer_base = type(
        f"{arch.capitalize()}Layer",
        (RoutedLayer,),
        {
            "prefix": prefix,
            "adapter_layer_names": (prefix + "adapter",),
            "other_param_names": (prefix + "dropout",),
        },
    )
    layer = type(f"{arch.capitalize()}Linear", (RoutedLinear, layer_base), {"prefix": prefix})
    tuner = type(
        f"{arch.capitalize()}Tuner",
        (RoutedTuner,),
        {"prefix": prefix, "tuner_layer_cls": layer_base, "layer_cls": layer},
    )
    register_peft_method(name=arch, config_cls=config_cls, model_cls=tuner, prefix=prefix)
    return tuner


HAND_WRITTEN: dict[str, type[RoutedPeftConfig]] = {
    "moelora": MoELoRAPeftConfig,
    "hydralora": HydraLoRAPeftConfig,
    "talklora": TalkLoRAPeftConfig,
    "comol": CoMoLPeftConfig,
}
PEFT_NATIVE = ("lora",)  # registered architectures that are PEFT's own methods (LoraConfig)


PEFT_CONFIGS: dict[str, type[RoutedPeftConfig]] = {}  # arch -> config class, once registered
TUNERS: dict[str, type[RoutedTuner]] = {}


def peft_method(arch: str) -> type[RoutedPeftConfig]:
    """The PEFT config class of the registered architecture `arch` (hand-written, else generated
    from its core config), registered with PEFT on first use."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    from .peft_generated import generated_config
    from .peft_types import peft_type

    if arch in PEFT_NATIVE:
        raise ConfigError(f"arch={arch!r}: PEFT's own method (LoraConfig), not registered here")
    if arch not in PEFT_CONFIGS:
        cfg = HAND_WRITTEN.get(arch) or generated_config(arch)
        existing = PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type(arch))
        if existing is not None and not issubclass(existing, RoutedTuner):
            raise ConfigError(f"PEFT type {arch.upper()}: already taken by {existing.__name__}")
        TUNERS[arch] = existing if existing is not None else _make(arch, cfg)
        PEFT_CONFIGS[arch] = cfg
    return PEFT_CONFIGS[arch]


def _register_all() -> None:
    """Every architecture registered in `moelora_core.registry` (PEFT's own aside)."""
    from moelora_core.registry import ARCHITECTURES

    for arch in ARCHITECTURES:
        if arch not in PEFT_NATIVE:
            peft_method(arch)


_register_all()
