"""Routing statistics of a batch of routing weights g (tokens x E).

load_i          = mean_t g_t,i                          (per-expert mean load; Σ_i load_i = 1)
entropy         = mean_t H(g_t),  H(p) = −Σ_i p_i log p_i   (nats; 0 log 0 = 0)
entropy_norm    = entropy / log E                       (in [0, 1]; 0 when E = 1)
load_cv         = std(load) / mean(load)                (population std; 0 = perfectly balanced)
max_load_share  = max_i load_i / Σ_i load_i             (dominance; 1/E when balanced)
top1_dominance  = #{t : argmax_i g_t,i = i*} / tokens,  i* = the most frequent top-1 expert
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from moelora_core.errors import NonFiniteError, ShapeError
from moelora_core.validate import require_tensor

from .domain import RoutingWeightsError

SIMPLEX_ATOL = 1e-4  # rows must sum to 1 within this (float32 softmax rounding is ~1e-7 per entry)


@dataclass(frozen=True)
class RoutingStats:
    tokens: int
    num_experts: int
    load: list[float]
    entropy: float
    entropy_normalised: float
    load_cv: float
    max_load_share: float
    top1_counts: list[int]
    top1_dominance: float

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        loads = " ".join(f"{v:.3f}" for v in self.load)
        return (
            f"routing over {self.tokens} tokens, E={self.num_experts}: load [{loads}]  "
            f"entropy {self.entropy:.4f} nats ({self.entropy_normalised:.3f} of log E)  "
            f"CV {self.load_cv:.3f}  max share {self.max_load_share:.3f}  "
            f"top-1 dominance {self.top1_dominance:.3f}"
        )


def routing_stats(g: Tensor) -> RoutingStats:
    """Statistics of routing weights g of shape (tokens, E) (leading dims are flattened)."""
    if not isinstance(g, Tensor):
        raise ShapeError(f"g: expected a torch.Tensor of shape (tokens, E), got {type(g).__name__}")
    if g.dim() < 2 or g.shape[-1] < 1 or g.numel() == 0:
        raise ShapeError(f"g.shape={tuple(g.shape)}: expected (tokens, E) with tokens, E >= 1")
    if not (g.dtype.is_floating_point):
        raise ShapeError(f"g.dtype={g.dtype}: expected a floating-point tensor")
    require_tensor("g", g)
    x = g.detach().reshape(-1, g.shape[-1]).to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError("g: non-finite routing weights (NaN or inf); expected finite")
    if float(x.min()) < -SIMPLEX_ATOL:
        raise RoutingWeightsError(f"g: min entry {float(x.min()):.3e}; expected weights >= 0")
    dev = float((x.sum(-1) - 1).abs().max())
    if dev > SIMPLEX_ATOL:
        raise RoutingWeightsError(
            f"g: a row sums to 1 ± {dev:.3e}; expected rows on the simplex (tolerance {SIMPLEX_ATOL})"
        )
    T, E = x.shape
    load = x.mean(0)  # (E,)
    ent = -torch.xlogy(x, x).sum(-1).mean()
    top1 = torch.bincount(x.argmax(-1), minlength=E)
    mean = float(load.mean())
    return RoutingStats(
        tokens=T,
        num_experts=E,
        load=[float(v) for v in load],
        entropy=float(ent),
        entropy_normalised=float(ent) / math.log(E) if E > 1 else 0.0,
        load_cv=float(load.std(unbiased=False)) / mean if mean > 0 else 0.0,
        max_load_share=float(load.max() / load.sum()),
        top1_counts=[int(v) for v in top1],
        top1_dominance=float(top1.max()) / T,
    )
