"""`Layer`: what every section of a layer report shares (the checked adapter, its frozen copies, the
domain and the options), and `RouterCertificate`: the certified router bounds the sections start from.

    layer = open_layer(adapter, inputs, radius, options)    # validates everything once
    cert = certify_router(layer)                             # CertificateError if none can be made
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from moelora_core.adapter import Adapter, HasTalking
from moelora_core.maps import LinearMap

from .certified import (
    RouterBounds,
    TalkBounds,
    bounds_for,
    effective_matrix,
    is_latent,
    logit_factors,
    talk_bounds,
)
from .domain import (
    Domain,
    make_domain,
    require_adapter,
    require_inputs,
    require_radius,
    require_routed,
)
from .local import Centres
from .options import ReportOptions
from .spectral import F64


@dataclass
class Layer:
    """One adapter layer under measurement. `work` is a frozen copy in the adapter's dtype, `w64` a
    frozen float64 copy (`work` itself for a float64 adapter); `centres` are the inputs (or the origin
    for balls without inputs, None for all of R^n) on the adapter's device."""

    adapter: Adapter
    work: Adapter
    w64: Adapter
    inputs: Tensor | None  # (N, n)
    radius: float | None
    domain: Domain
    centres: Tensor | None  # (C, n)
    options: ReportOptions
    prepared: Centres | None = None  # `centres` in float64 with their norms, shared across layers
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @property
    def dtype(self) -> torch.dtype:
        return self.work.reference.dtype

    @property
    def device(self) -> torch.device:
        return self.work.reference.device

    @contextmanager
    def timed(self, part: str) -> Iterator[None]:
        """Adds the wall time of the block to `timings[part]`."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[part] = self.timings.get(part, 0.0) + time.perf_counter() - t


def frozen_copy(adapter: Adapter, dtype: torch.dtype | None) -> Adapter:
    """A deep copy without gradients (in `dtype` if given): the report never touches the original."""
    work = copy.deepcopy(adapter)
    if dtype is not None:
        work = work.to(dtype)
    work.requires_grad_(False)
    return work


def open_layer(
    adapter: Adapter,
    inputs: Tensor | None,
    radius: float | None,
    options: ReportOptions,
    *,
    routed: bool = True,
) -> Layer:
    """Check the adapter (with a router when `routed`), inputs and radius; make the frozen copies
    and the domain."""
    started = time.perf_counter()
    a = require_routed(adapter) if routed else require_adapter(adapter)
    X = require_inputs(a, inputs)
    R = require_radius(radius, a.reference.dtype)
    ref = a.reference
    work = frozen_copy(a, None)
    w64 = work if ref.dtype == F64 else frozen_copy(a, F64)
    centres = X
    if X is None and R is not None:
        centres = torch.zeros(1, a.in_features, dtype=ref.dtype)
    if centres is not None:
        centres = centres.to(ref.device)
    return Layer(a, work, w64, X, R, make_domain(X, R), centres, options, started=started)


@dataclass(frozen=True)
class RouterCertificate:
    """The router's logit factors, the certified forms for x ↦ g (and h ↦ g for a latent router),
    TalkLoRA's per-head bounds when the adapter has a talking module, and L (E, n) in float64."""

    factors: list[LinearMap]
    latent: bool
    router: RouterBounds
    head: RouterBounds | None
    talk: TalkBounds | None
    L: Tensor
    top_k: int | None

    @property
    def num_experts(self) -> int:
        return self.router.num_experts

    @property
    def dense(self) -> bool:
        """Softmax over all experts (no top-k cut): only then is g Lipschitz."""
        return self.top_k is None or self.top_k >= self.num_experts


def talk_of(adapter: Adapter) -> TalkBounds | None:
    """The per-head bounds of a talking module (TalkLoRA's T), None for adapters without one."""
    return talk_bounds(adapter) if isinstance(adapter, HasTalking) else None


def certify_router(layer: Layer) -> RouterCertificate:
    """The certified router bounds (CertificateError when no certificate can be made)."""
    work = layer.work
    factors = logit_factors(work)
    latent = is_latent(factors)
    rb = bounds_for(factors)
    hb = bounds_for(factors[1:]) if latent else None
    tb = talk_of(work)
    router = work.router
    assert router is not None  # require_routed
    return RouterCertificate(factors, latent, rb, hb, tb, effective_matrix(factors), router.top_k)
