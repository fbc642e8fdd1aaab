"""The global bound of a non-linear adapter (`linear_experts = False`, e.g. DenseLoRA) from its
`LipschitzChain`: Δ = φ_k ∘ L_k ∘ ⋯ ∘ φ_1 ∘ L_1 with each φ_j c_j-Lipschitz and each L_j linear, so

    ‖Δ(x) − Δ(y)‖ ≤ s ∏_j c_j ∏_j ‖L_j‖₂ ‖x − y‖    for all x, y ∈ R^n

(a composition of Lipschitz maps is Lipschitz with the product of the constants). The ‖L_j‖₂ are
certified upper ends (`spectral.spectral_norm`), the product is rounded upwards and raised by the
certification margin; c_j and s are the adapter's exact upper bounds. The report also searches a
lower bound (largest Jacobian norm / pair ratio of Δ over the domain), as for the router.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from moelora_core.adapter import Adapter, LipschitzChain
from moelora_core.errors import ConfigError, ShapeError

from ..search import Probe, Region, search
from .domain import Domain
from .rigorous import up
from .searches import delta_fn, random_in_balls
from .spectral import F64, certify, spectral_norm


@dataclass
class ChainBounds:
    """Certified global Lipschitz bound of Δ from its chain, and the searched lower bound."""

    upper: float  # s ∏ c_j ∏ ‖L_j‖₂, certified
    map_norms: list[float]  # certified ‖L_j‖₂, first applied first
    constants: list[float]  # c_j
    scale: float  # s
    lower: float | None = None
    gap_ratio: float | None = None
    samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def require_chain(adapter: Adapter) -> LipschitzChain:
    """The adapter's chain, checked: maps 2-D, composable, from n to m; constants and scale finite
    and >= 0; one constant per map. ConfigError / ShapeError otherwise."""
    chain = adapter.lipschitz_chain()
    name = type(adapter).__name__
    if chain is None:
        raise ConfigError(
            f"adapter={name}: linear_experts=False but lipschitz_chain() is None; expected the "
            "chain Δ = φ_k ∘ L_k ∘ ⋯ ∘ φ_1 ∘ L_1 for its bound"
        )
    if len(chain.maps) == 0 or len(chain.constants) != len(chain.maps):
        raise ConfigError(
            f"{name}.lipschitz_chain(): {len(chain.maps)} maps, {len(chain.constants)} constants; "
            "expected one constant per map, at least one map"
        )
    dims = adapter.in_features
    for j, M in enumerate(chain.maps, 1):
        if not isinstance(M, Tensor) or M.dim() != 2 or M.shape[1] != dims:
            shape = tuple(M.shape) if isinstance(M, Tensor) else type(M).__name__
            raise ShapeError(f"{name}.lipschitz_chain(): L_{j}.shape={shape}; expected (·, {dims})")
        dims = int(M.shape[0])
    if dims != adapter.out_features:
        raise ShapeError(
            f"{name}.lipschitz_chain(): the last map has {dims} rows; expected "
            f"out_features={adapter.out_features}"
        )
    for what, v in [
        *((f"c_{j}", c) for j, c in enumerate(chain.constants, 1)),
        ("scale", chain.scale),
    ]:
        if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
            raise ConfigError(
                f"{name}.lipschitz_chain(): {what}={v!r}; expected a finite real >= 0"
            )
    return chain


def chain_bounds(chain: LipschitzChain) -> ChainBounds:
    """The certified product bound (module docstring)."""
    norms = [
        spectral_norm(M.detach().to("cpu", F64), f"L_{j}").upper
        for j, M in enumerate(chain.maps, 1)
    ]
    total = float(chain.scale)
    for v in (*chain.constants, *norms):
        total = up(total * float(v))
    return ChainBounds(
        certify(total), norms, [float(c) for c in chain.constants], float(chain.scale)
    )


def chain_lower(
    work: Adapter, w64: Adapter, domain: Domain, centres: Tensor | None, R: float | None,
    samples: int, iterations: int, ascent: int, pairs: int, seed: int,
) -> tuple[float, int]:  # fmt: skip
    """The searched lower bound on Lip(Δ) over the domain (value, points screened): random points at
    scales 0.1-10 (all of R^n), the given points, or points in the balls."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ref = work.reference
    n = work.in_features
    if centres is None:
        levels = torch.tensor([0.1, 1.0, 10.0], dtype=F64).repeat(samples // 3 + 1)[:samples, None]
        starts, region = (
            levels * torch.randn(samples, n, generator=gen, dtype=F64),
            Region(None, None, 0.0),
        )
    elif domain.kind == "points":
        starts, region, ascent, pairs = centres.to(F64).cpu(), Region(None, None, 0.0), 0, 0
    else:
        radius = R or 0.0
        rnd, ridx = random_in_balls(centres, radius, samples, gen)
        starts = torch.cat([centres.to(F64).cpu(), rnd])
        idx = torch.cat([torch.arange(centres.shape[0]), ridx]).to(ref.device)
        region = Region(centres.to(ref.dtype), idx, radius)
    res = search(
        Probe(delta_fn(work), True), Probe(delta_fn(w64), True),
        starts.to(dtype=ref.dtype, device=ref.device), region, iterations=iterations, ascent=ascent,
        pair_steps=pairs, keep=samples, seed=seed,
    )  # fmt: skip
    return res.value, res.points
