"""The project's exception types and the input checks that raise them.

Every message names the parameter, the value received and what was expected, so that bad input never
surfaces as a raw broadcasting error or as a silently wrong answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class MoELoRAError(Exception):
    """Base class of every error this toolkit raises on purpose."""


class ConfigError(MoELoRAError, ValueError):
    """A configuration value is out of its domain (E < 1, k > E, rank not divisible by E, ...)."""


class NotLinearError(ConfigError):
    """The adapter is not linear in x for fixed routing (Δ(x) ≠ Σ_i g_i(x) P_i x with fixed P_i, e.g.
    DenseLoRA): it has no expert matrices and no per-token ΔW(x); the bounds use its Lipschitz chain."""


class ShapeError(MoELoRAError, ValueError):
    """A tensor has the wrong shape for the map it is given to."""


class ArgumentTypeError(ConfigError, TypeError):
    """An argument has the wrong type (a string where an int is expected, a LoRA where a TalkLoRA is)."""


class DTypeDeviceError(MoELoRAError, TypeError):
    """Tensors that must share a dtype or a device do not."""


class NonFiniteError(MoELoRAError, ValueError):
    """A tensor holds NaN or infinite values."""


class ReductionError(MoELoRAError):
    """A reduction's precondition does not hold (e.g. 'all cores equal' when they differ)."""


_CHECKS_ENABLED = True


@contextmanager
def input_checks(enabled: bool) -> Iterator[None]:
    """Turn the per-call input checks (shape, dtype, device, finiteness) on or off inside a block.

    Checks are on by default. Finiteness needs a device sync, so hot training loops may turn them off.
    """
    global _CHECKS_ENABLED
    previous = _CHECKS_ENABLED
    _CHECKS_ENABLED = enabled
    try:
        yield
    finally:
        _CHECKS_ENABLED = previous


def checks_enabled() -> bool:
    return _CHECKS_ENABLED


def require_positive_int(name: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{name}={value!r}: expected an integer >= {minimum}")
    if value < minimum:
        raise ConfigError(f"{name}={value!r}: expected an integer >= {minimum}")


def require_top_k(top_k: object, num_experts: int, experts_name: str = "num_experts") -> None:
    """None (soft routing) or an integer 1 <= top_k <= num_experts."""
    if top_k is None:
        return
    require_positive_int("top_k", top_k)
    assert isinstance(top_k, int)
    if top_k > num_experts:
        raise ConfigError(f"top_k={top_k}: expected 1 <= top_k <= {experts_name}={num_experts}")


def require_finite_float(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ArgumentTypeError(f"{name}={value!r}: expected a finite real number")
    if not math.isfinite(value):
        raise ConfigError(f"{name}={value!r}: expected a finite real number")


def check_input(x: object, features: int, reference: torch.Tensor, name: str = "x") -> torch.Tensor:
    """Validate an input of shape (..., features) against a parameter tensor `reference`.

    Raises ShapeError, DTypeDeviceError or NonFiniteError with a message naming `name`.
    """
    if not isinstance(x, torch.Tensor):
        raise ShapeError(
            f"{name}: expected a torch.Tensor of shape (..., {features}), got {type(x).__name__}"
        )
    if not _CHECKS_ENABLED:
        return x
    if x.dim() < 1 or x.shape[-1] != features:
        raise ShapeError(
            f"{name}.shape={tuple(x.shape)}: expected (..., {features}) (last dimension = in_features)"
        )
    if not x.dtype.is_floating_point:  # integer, bool, complex: say so, not just "not float32"
        raise DTypeDeviceError(
            f"{name}.dtype={x.dtype}: expected {reference.dtype}, a real floating dtype like the "
            "adapter's parameters"
        )
    if x.dtype != reference.dtype:
        raise DTypeDeviceError(
            f"{name}.dtype={x.dtype}: expected {reference.dtype}, the dtype of the adapter's parameters"
        )
    if x.device != reference.device:
        raise DTypeDeviceError(
            f"{name}.device={x.device}: expected {reference.device}, the device of the adapter's parameters"
        )
    if x.device.type == "meta":  # no values to check (shape-only runs, e.g. parameter counting)
        return x
    # Fast path: a NaN or inf makes the sum non-finite, so a finite sum proves every entry finite
    # (one reduction, no (..., n) temporary). A non-finite sum may be an overflow: check exactly.
    if not bool(torch.isfinite(x.detach().sum())) and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise NonFiniteError(
            f"{name}: {bad} non-finite value(s) (NaN or inf); expected finite values"
        )
    return x
