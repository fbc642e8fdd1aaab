"""Loading a base model the way the user asks: device, dtype, a device map, or a 4-bit (QLoRA) base.

    --device auto|cpu|cuda|cuda:N    where the model runs (auto: cuda when available)
    --dtype auto|float32|bfloat16|float16
                                     the base's dtype (auto: bfloat16 on a bf16 GPU, else float32);
                                     adapters are always created in float32
    --device-map auto|balanced|...   passed to `from_pretrained` (accelerate's big-model placement)
    --load-in-4bit                   bitsandbytes NF4 base (the `qlora` extra; on the CPU too with
                                     bitsandbytes >= 0.49, for layer widths that are multiples of 64)

Every user mistake (a missing model, an unknown dtype, 4-bit without bitsandbytes) is a ConfigError with one
line that says what was given and what is expected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from moelora_core.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Placement:
    """Where and how to load the base model."""

    device: str = "auto"
    dtype: str = "auto"
    device_map: str | None = None
    load_in_4bit: bool = False

    def __post_init__(self) -> None:
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ConfigError(f"dtype={self.dtype!r}: expected auto, {', '.join(DTYPES)}")
        dev = self.device
        if dev not in ("auto", "cpu") and not (dev == "cuda" or dev.startswith("cuda:")):
            raise ConfigError(f"device={dev!r}: expected auto, cpu, cuda or cuda:N")
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device={dev!r}: no CUDA device is available here; use --device cpu")
        if self.load_in_4bit:
            _require_bitsandbytes()

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype != "auto":
            return DTYPES[self.dtype]
        cuda = self.torch_device.type == "cuda"
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32


def _require_bitsandbytes() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--load-in-4bit: the bitsandbytes package is not installed "
            "(pip install 'moelora-verify[qlora]', or pip install bitsandbytes)"
        ) from None


def check_model_ref(name: str) -> str:
    """A local directory with config.json, or a hub name (hub names cannot be checked offline)."""
    from .tasks import resolve_model

    path = resolve_model(name)
    looks_local = os.path.sep in name or name.startswith(".") or os.path.exists(name)
    if looks_local and not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(
            f"model={name!r}: no config.json there; expected a model directory "
            "(save_pretrained output) or a hub name"
        )
    return path


def from_pretrained(cls: Any, name: str, placement: Placement, **kwargs: Any) -> Any:
    """`cls.from_pretrained(name, ...)` with the placement; OSError/ValueError become ConfigError."""
    path = check_model_ref(name)
    kw: dict[str, Any] = {"dtype": placement.torch_dtype, **kwargs}
    if placement.device_map is not None:
        kw["device_map"] = placement.device_map
    if placement.load_in_4bit:
        kw.setdefault("device_map", {"": str(placement.torch_device)})
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=placement.torch_dtype
            if placement.torch_dtype != torch.float32
            else torch.bfloat16,
        )
    try:
        model = cls.from_pretrained(path, **kw)
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:240]
        raise ConfigError(
            f"model={name!r}: cannot be loaded ({type(e).__name__}: {first}); expected a local model "
            "directory or a hub name reachable from here"
        ) from None
    if placement.device_map is None and not placement.load_in_4bit:
        model = model.to(placement.torch_device)
    return model


def load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    path = check_model_ref(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:240]
        raise ConfigError(f"model={name!r}: no usable tokenizer ({first})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
