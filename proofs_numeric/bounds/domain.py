"""The domain a lower bound is searched over, the errors of the bounds package, and input checks.

Domains (what `layer_report` was given):
  * "unconstrained": all of R^n (no inputs, no radius);
  * "ball":   the union of the balls B(c_k, R) around centres c_k (the inputs, or the origin);
  * "points": the given inputs themselves (radius None): Jacobian norms at those points.
The certified router bounds hold on all of R^n whatever the domain; the local bound on Δ holds on each
ball B(c_k, R) (R = 0: for the Jacobian at c_k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from moelora_core.adapter import Adapter
from moelora_core.errors import (
    ArgumentTypeError,
    ConfigError,
    DTypeDeviceError,
    MoELoRAError,
    NonFiniteError,
    ShapeError,
    require_positive_int,
)
from moelora_core.validate import require_real

from .rigorous import all_finite

DomainKind = Literal["unconstrained", "ball", "points"]


class NoRouterError(ConfigError):
    """The adapter has no router (e.g. plain LoRA): router bounds are undefined."""


class RoutingWeightsError(MoELoRAError, ValueError):
    """Routing weights are not rows of a probability simplex (negative, or not summing to 1)."""


@dataclass(frozen=True)
class Domain:
    kind: DomainKind
    radius: float  # 0 for "points" and "unconstrained"
    num_points: int  # centres (ball) or points; 0 when unconstrained

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "radius": self.radius, "num_points": self.num_points}

    def __str__(self) -> str:
        if self.kind == "unconstrained":
            return "all of R^n"
        if self.kind == "points":
            return f"{self.num_points} given points"
        return f"balls of radius {self.radius:g} around {self.num_points} centre(s)"


def require_adapter(adapter: object) -> Adapter:
    """A moelora_core Adapter whose parameters hold finite values (not on the meta device)."""
    if not isinstance(adapter, Adapter):
        raise ArgumentTypeError(
            f"adapter={type(adapter).__name__}: expected a moelora_core.adapter.Adapter instance"
        )
    for name, p in adapter.named_parameters():
        if p.device.type == "meta":
            raise DTypeDeviceError(
                f"adapter parameter {name}: on the meta device; expected parameters with values"
            )
        if not all_finite(p):
            raise NonFiniteError(f"adapter parameter {name}: non-finite values; expected finite")
    return adapter


def require_routed(adapter: object) -> Adapter:
    """The adapter, if it is a moelora_core Adapter with a router; project errors otherwise."""
    adapter = require_adapter(adapter)
    if getattr(adapter, "router", None) is None or adapter.router_logit_map() is None:
        raise NoRouterError(
            f"adapter={type(adapter).__name__}: has no router; router bounds need a routed adapter "
            "(MoELoRA, HydraLoRA, TalkLoRA, CoMoL)"
        )
    return adapter


def require_radius(radius: object, dtype: torch.dtype | None = None) -> float | None:
    """None or a finite real R >= 0; with the adapter's dtype, also R <= sqrt(largest value), so
    that points of the balls and their logits stay representable."""
    if radius is None:
        return None
    R = require_real("radius", radius, minimum=0.0)
    if dtype is not None and math.sqrt(torch.finfo(dtype).max) < R:
        raise ConfigError(
            f"radius={radius!r}: expected <= {math.sqrt(torch.finfo(dtype).max):.3g} = "
            f"sqrt(largest {dtype}) for an adapter in {dtype}"
        )
    return R


def require_positive(name: str, value: object) -> float:
    return require_real(name, value, positive=True)


def require_inputs(adapter: Adapter, inputs: object) -> Tensor | None:
    """Inputs of shape (N, n) (or (..., n), flattened) with the adapter's dtype and device."""
    if inputs is None:
        return None
    if not isinstance(inputs, Tensor):
        raise ShapeError(
            f"inputs: expected a torch.Tensor of shape (N, {adapter.in_features}), "
            f"got {type(inputs).__name__}"
        )
    x = inputs
    if x.dim() < 1 or x.shape[-1] != adapter.in_features:
        raise ShapeError(
            f"inputs.shape={tuple(x.shape)}: expected (N, {adapter.in_features}) "
            "(last dimension = in_features)"
        )
    ref = adapter.reference
    if x.dtype != ref.dtype or x.device != ref.device:
        raise DTypeDeviceError(
            f"inputs: dtype={x.dtype}, device={x.device}; expected {ref.dtype} on {ref.device}, "
            "those of the adapter's parameters"
        )
    if not all_finite(x):  # checked even when per-call input checks are off
        bad = int((~torch.isfinite(x)).sum())
        raise NonFiniteError(f"inputs: {bad} non-finite value(s) (NaN or inf); expected finite")
    flat = x.detach().reshape(-1, adapter.in_features)
    if flat.shape[0] == 0:
        raise ShapeError(f"inputs.shape={tuple(x.shape)}: expected at least one input row")
    return flat


def make_domain(inputs: Tensor | None, radius: float | None) -> Domain:
    if inputs is None:
        if radius is None:
            return Domain("unconstrained", 0.0, 0)
        return Domain("ball", radius, 1)
    if radius is None:
        return Domain("points", 0.0, int(inputs.shape[0]))
    return Domain("ball", radius, int(inputs.shape[0]))


def require_count(name: str, value: object, minimum: int = 1) -> int:
    require_positive_int(name, value, minimum)
    assert isinstance(value, int)
    return value
