"""Validators for the public boundary: each check written once, each message in the form
`f"{name}={value!r}: expected ..."`, each failure one of the project's exception types.

What is accepted (docs/robustness.md):
  * integers: `int`, never `bool`; sizes >= 1, and one adapter layer at most MAX_LAYER_PARAMS parameters;
  * bools: exactly `True` or `False` (not 0/1, not "yes");
  * reals: `int` or `float`, never `bool`, finite, with the stated sign;
  * dtypes: torch.float32, torch.float64, torch.bfloat16, torch.float16 (torch.dtype objects, not
    strings: the annotation says torch.dtype, and "float" would be ambiguous);
  * devices: a torch.device or a string torch parses ("cpu", "cuda:0", "meta", ...) of a kind this
    machine has; ints are refused (torch reads 0 as "cuda:0", a silent surprise on a CPU machine);
  * tensors: real floating point (not integer, bool or complex), with data (not meta) where values
    are read, finite where the maths needs it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

from .errors import ArgumentTypeError, ConfigError, DTypeDeviceError, NonFiniteError, ShapeError

T = TypeVar("T")

FLOAT_DTYPES: tuple[torch.dtype, ...] = (
    torch.float32,
    torch.float64,
    torch.bfloat16,
    torch.float16,
)
MAX_LAYER_PARAMS = 2**31  # 8 GiB of float32 for one adapter layer: far beyond any real model's
MAX_ELEMENTS = 2**31  # elements of one tensor a size argument may ask for
SEED_LIMIT = 2**64  # torch.Generator.manual_seed accepts 0 <= seed < 2**64
_DTYPE_NAMES = "torch.float32, torch.float64, torch.bfloat16 or torch.float16"


def require_int(name: str, value: object, minimum: int = 1, maximum: int | None = None) -> int:
    """An `int` (not a bool) in [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{name}={value!r}: expected an integer >= {minimum}")
    if value < minimum or (maximum is not None and value > maximum):
        top = f" and <= {maximum}" if maximum is not None else ""
        raise ConfigError(f"{name}={value!r}: expected an integer >= {minimum}{top}")
    return value


def require_bool(name: str, value: object) -> bool:
    """Exactly True or False: 1, "yes" or "False" are refused, not read by their truthiness."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name}={value!r}: expected True or False (a bool)")
    return value


def require_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{name}={value!r}: expected one of {', '.join(map(repr, choices))}")
    return value


def require_real(
    name: str, value: object, *, minimum: float | None = None, positive: bool = False
) -> float:
    """A finite real number (int or float, not bool), >= minimum or > 0 if `positive`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ArgumentTypeError(f"{name}={value!r}: expected a finite real number")
    try:
        v = float(value)
    except OverflowError:  # an int beyond float range
        raise ConfigError(f"{name}={value!r}: expected a finite real number") from None
    if not math.isfinite(v):
        raise ConfigError(f"{name}={value!r}: expected a finite real number")
    if positive and v <= 0:
        raise ConfigError(f"{name}={value!r}: expected a finite real number > 0")
    if minimum is not None and v < minimum:
        raise ConfigError(f"{name}={value!r}: expected a finite real number >= {minimum:g}")
    return v


def require_seed(name: str, value: object) -> int:
    """A seed for torch.Generator.manual_seed: an int in [0, 2**64)."""
    return require_int(name, value, 0, SEED_LIMIT - 1)


def require_layer_size(what: str, count: int, limit: int = MAX_LAYER_PARAMS) -> None:
    """One layer's parameter count (or one tensor's element count) at most `limit`."""
    if count > limit:
        raise ConfigError(
            f"{what}: {count:,} parameters: expected at most {limit:,} (2**{limit.bit_length() - 1}); "
            "a layer this large would not fit in memory"
        )


def require_instance(name: str, value: object, cls: type[T] | tuple[type, ...]) -> T:
    if not isinstance(value, cls):
        names = cls.__name__ if isinstance(cls, type) else " or ".join(c.__name__ for c in cls)
        raise ArgumentTypeError(f"{name}={_short(value)}: expected a {names}")
    return value  # type: ignore[return-value]


def _short(value: object) -> str:
    text = repr(value) if not isinstance(value, Tensor | torch.nn.Module) else type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."


# ----- dtypes and devices ------------------------------------------------------------------------


def require_dtype(name: str, dtype: object) -> torch.dtype | None:
    """None (torch's default dtype) or one of FLOAT_DTYPES."""
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype):
        hint = (
            f" (torch.{dtype.removeprefix('torch.')}, not a string)"
            if isinstance(dtype, str)
            else ""
        )
        raise DTypeDeviceError(f"{name}={dtype!r}: expected {_DTYPE_NAMES}{hint}")
    if dtype not in FLOAT_DTYPES:
        raise DTypeDeviceError(f"{name}={dtype}: expected a floating dtype, {_DTYPE_NAMES}")
    return dtype


def require_device(name: str, device: object) -> torch.device | None:
    """None (torch's default device), or a torch.device / device string this machine has."""
    if device is None:
        return None
    if isinstance(device, bool) or not isinstance(device, str | torch.device):
        raise DTypeDeviceError(
            f"{name}={device!r}: expected a torch.device or a string such as 'cpu' or 'cuda:0'"
        )
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise DTypeDeviceError(f"{name}={device!r}: expected a device torch knows ({e})") from None
    if dev.type in ("cpu", "meta"):
        return dev
    backend = getattr(torch, dev.type, None)
    available = getattr(backend, "is_available", None)
    if dev.type == "mps":
        available = torch.backends.mps.is_available
    if available is None or not available():
        raise DTypeDeviceError(
            f"{name}={device!r}: expected a device this machine has ({dev.type} is not available)"
        )
    count = getattr(backend, "device_count", None)
    if dev.index is not None and count is not None and dev.index >= count():
        raise DTypeDeviceError(
            f"{name}={device!r}: expected an index < {count()} ({dev.type} devices here)"
        )
    return dev


def resolved(
    dtype: torch.dtype | None, device: torch.device | None
) -> tuple[torch.dtype, torch.device]:
    """The dtype and device a tensor created with these arguments gets (defaults filled in)."""
    dt = dtype if dtype is not None else torch.get_default_dtype()
    dev = device if device is not None else torch.get_default_device()
    return dt, _canonical(dev)


def _canonical(dev: torch.device) -> torch.device:
    if dev.type in ("cpu", "meta"):
        return torch.device(dev.type)
    index: int | None = dev.index  # None for "cuda" without an index (torch's stubs say int)
    if index is None:
        backend: Any = getattr(torch, dev.type, None)
        current = getattr(backend, "current_device", None)
        if current is not None:
            return torch.device(dev.type, current())
    return dev


def require_like(name: str, t: Tensor, dtype: torch.dtype, device: torch.device) -> None:
    """`t` (a shared parameter) has exactly this dtype and device."""
    if t.dtype != dtype or _canonical(t.device) != device:
        raise DTypeDeviceError(
            f"{name}: dtype={t.dtype}, device={t.device}; expected {dtype} on {device}, those of "
            "the adapter being built (pass the same dtype= and device= to both)"
        )


# ----- tensors -----------------------------------------------------------------------------------


def require_tensor(
    name: str, x: object, *, ndim: int | None = None, min_ndim: int = 0, data: bool = True
) -> Tensor:
    """A real floating-point tensor (any of FLOAT_DTYPES), with data unless `data=False`."""
    if not isinstance(x, Tensor):
        raise ArgumentTypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ShapeError(f"{name}.shape={tuple(x.shape)}: expected a {ndim}-D tensor")
    if x.dim() < min_ndim:
        raise ShapeError(
            f"{name}.shape={tuple(x.shape)}: expected at least {min_ndim} dimension(s)"
        )
    if x.dtype not in FLOAT_DTYPES:
        raise DTypeDeviceError(
            f"{name}.dtype={x.dtype}: expected a real floating dtype, {_DTYPE_NAMES}"
        )
    if data and x.device.type == "meta":
        raise DTypeDeviceError(
            f"{name}.device=meta: expected a tensor with data (its values are read)"
        )
    return x


def require_finite(name: str, x: Tensor) -> Tensor:
    """No NaN or inf in x (a tensor with data)."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise NonFiniteError(
            f"{name}: {bad} non-finite value(s) (NaN or inf); expected finite values"
        )
    return x


def require_finite_output(name: str, y: Tensor, inputs: str = "x") -> Tensor:
    """An output computed from finite inputs and weights: non-finite means it overflowed."""
    if y.device.type != "meta" and not bool(torch.isfinite(y.detach()).all()):
        raise NonFiniteError(
            f"{name}: non-finite values for finite {inputs} (overflow in {y.dtype}); expected inputs "
            "and weights of a magnitude the dtype can represent"
        )
    return y


def checked_construction(
    config: object, config_cls: type, dtype: object, device: object
) -> tuple[torch.dtype | None, torch.device | None]:
    """An adapter constructor's arguments: the config of its own class, a float dtype, a device."""
    require_instance("config", config, config_cls)
    return require_dtype("dtype", dtype), require_device("device", device)


def require_shared(
    name: str,
    module: object,
    shape: tuple[int, int],
    dtype: torch.dtype | None,
    device: torch.device | None,
) -> None:
    """A shared Dense module (TalkLoRA's b, CoMoL's A and B): its class, shape, dtype and device."""
    from .maps import Dense  # maps imports this module

    m = require_instance(name, module, Dense)
    if m.shape != shape:
        raise ShapeError(f"{name}.shape={m.shape}: expected {shape}")
    require_like(name, m.weight, *resolved(dtype, device))


def require_simplex(name: str, p: object, atol: float | None = None) -> Tensor:
    """Rows (..., E) of probabilities: finite, >= 0, summing to 1 within atol (default
    max(1e-5, 2 eps of the dtype): softmax rounding)."""
    t = require_tensor(name, p, min_ndim=1)
    require_finite(name, t)
    tol = atol if atol is not None else max(1e-5, 2 * torch.finfo(t.dtype).eps)
    if t.numel() and (float(t.min()) < 0 or float((t.double().sum(-1) - 1).abs().max()) > tol):
        raise ShapeError(
            f"{name}: rows with min {float(t.min()):.3g}, sums up to 1 ± "
            f"{float((t.double().sum(-1) - 1).abs().max()):.3g}; expected probability rows "
            f"(entries >= 0 summing to 1 within {tol:.1e})"
        )
    return t


def require_tolerance(name: str, value: object) -> float:
    """A tolerance: a real >= 0, or +inf (no check at all, as the refuted twins ask); never NaN,
    which would make every `diff > atol` false and every check pass."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ArgumentTypeError(f"{name}={value!r}: expected a real number >= 0 (or math.inf)")
    v = float(value) if not isinstance(value, int) or value.bit_length() < 1024 else math.inf
    if math.isnan(v) or v < 0:
        raise ConfigError(f"{name}={value!r}: expected a real number >= 0 (or math.inf)")
    return v
