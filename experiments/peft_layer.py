"""The PEFT tuner layer of the routed architectures: a frozen linear layer plus named `moelora_core` adapters.

    y = W0 x + b0 + Σ_{a active} Δ_a(dropout(x))        (Δ_a any registered architecture)

The adapters live in `layer.<prefix>adapter[name]` (one `nn.ModuleDict` per layer, keyed by adapter name,
as PEFT's LoRA keeps `lora_A[name]`), so PEFT's named adapters, `set_adapter`, `disable_adapter()`,
`delete_adapter` and dtype casting work unchanged. A routed update is not a fixed matrix,
Δ(x) = Σ_i g_i(x) P_i x with g depending on x, so it cannot be merged into W0: `merge` raises.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn

from moelora_core.adapter import Adapter
from moelora_core.errors import ConfigError

from .inject import build_adapter, linear_features

__all__ = ["NotMergeableError", "RoutedLayer", "RoutedLinear"]


class NotMergeableError(ConfigError):
    """A routed adapter was asked to merge into a static weight."""


def not_mergeable(arch: str) -> NotMergeableError:
    return NotMergeableError(
        f"arch={arch!r}: this adapter cannot be merged into a static weight; its update changes "
        "with the input (Δ(x) = Σ_i g_i(x) P_i x through the routing weights g(x), or a "
        "non-linearity). Keep the adapter unmerged (or use unload() to drop it); only LoRA "
        "(PEFT's LoraConfig) merges"
    )


class RoutedLayer(BaseTunerLayer):
    """Adapter bookkeeping shared by every routed layer; subclasses fix `prefix` (e.g. 'talklora_')."""

    prefix: ClassVar[str] = ""
    adapter_layer_names: tuple[str, ...] = ()
    other_param_names: tuple[str, ...] = ()

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        setattr(self, self.prefix + "adapter", nn.ModuleDict())
        setattr(self, self.prefix + "dropout", nn.ModuleDict())
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.kwargs = kwargs
        feats = linear_features(self.get_base_layer())
        if feats is None:
            raise ConfigError(
                f"base layer {type(self.get_base_layer()).__name__}: expected an nn.Linear, a "
                "transformers Conv1D or a bitsandbytes Linear4bit/Linear8bitLt"
            )
        self.in_features, self.out_features = feats

    @property
    def adapters(self) -> nn.ModuleDict:
        out: nn.ModuleDict = getattr(self, self.prefix + "adapter")
        return out

    def adapter(self, name: str) -> Adapter:
        """The `moelora_core` adapter called `name` in this layer."""
        found = self.adapters[name]
        if not isinstance(found, Adapter):
            raise ConfigError(f"adapter {name!r}: a {type(found).__name__}, expected an Adapter")
        return found

    def _adapter_dtype_device(self) -> tuple[torch.dtype, torch.device]:
        device, dtype = BaseTunerLayer._get_base_layer_device_and_dtype(self, self.get_base_layer())
        if dtype is None or not dtype.is_floating_point:  # a quantised (uint8) base: fp32 adapters
            dtype = torch.float32
        return dtype, device if device is not None else torch.device("cpu")

    def update_layer(
        self, adapter_name: str, config: Any, shared: nn.Module | None, inference_mode: bool = False
    ) -> Adapter:
        """Build the adapter `adapter_name` (the toolkit's build_adapter), add it, return it."""
        dtype, device = self._adapter_dtype_device()
        adapter = build_adapter(
            config.to_spec(),
            self.in_features,
            self.out_features,
            shared=shared,
            dtype=dtype,
            device=device,
        )
        self.adapters[adapter_name] = adapter
        drop = config.lora_dropout
        getattr(self, self.prefix + "dropout")[adapter_name] = (
            nn.Dropout(drop) if drop > 0 else nn.Identity()
        )
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)
        return adapter

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise not_mergeable(self.prefix.rstrip("_"))

    def unmerge(self) -> None:
        return None  # nothing is ever merged

    def get_delta_weight(self, adapter_name: str) -> Tensor:
        raise not_mergeable(self.prefix.rstrip("_"))


class RoutedLinear(nn.Module, RoutedLayer):
    """A frozen linear layer (nn.Linear, Conv1D, bitsandbytes) plus routed adapters."""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: Any,
        shared: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        RoutedLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, shared, inference_mode=config.inference_mode)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        result: Tensor = self.base_layer(x, *args, **kwargs)  # (..., m)
        if self.disable_adapters:
            return result
        drops = getattr(self, self.prefix + "dropout")
        for name in self.active_adapters:
            if name not in self.adapters:
                continue
            adapter = self.adapters[name]
            w = adapter.reference
            delta = adapter(drops[name](x).to(dtype=w.dtype, device=w.device))  # (..., m)
            result = result + delta.to(result.dtype)
        return result

    def __repr__(self) -> str:
        return self.prefix.rstrip("_") + "." + super().__repr__()
