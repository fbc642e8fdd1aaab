"""The adapters' auxiliary training losses, added by both trainers (`train.train`, `hf_train`):

    L = L_task + w · Σ_a ℓ_a,        ℓ_a = a.auxiliary_loss() of the last forward (adapters returning one)

e.g. MoLA's Switch-style load-balancing term. w is `--aux-loss-weight` (default 0.01, the Switch
Transformer's α), recorded with the run's config.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from moelora_core.adapter import Adapter
from moelora_core.errors import ConfigError

__all__ = ["AUX_LOSS_WEIGHT", "adapters_of", "auxiliary_loss", "check_weight", "with_auxiliary"]

AUX_LOSS_WEIGHT = 0.01  # Switch Transformers' load-balancing coefficient α


def check_weight(weight: float) -> float:
    """`weight` as a float; ConfigError unless it is a finite real >= 0."""
    ok = isinstance(weight, int | float) and not isinstance(weight, bool)
    if not (ok and math.isfinite(weight) and weight >= 0):
        raise ConfigError(f"aux_loss_weight={weight!r}: expected a finite float >= 0")
    return float(weight)


def adapters_of(model: nn.Module) -> list[Adapter]:
    """Every adapter module of `model` (toolkit layers, PEFT layers, wrapped by DDP or not)."""
    return [m for m in model.modules() if isinstance(m, Adapter)]


def auxiliary_loss(adapters: list[Adapter]) -> Tensor | None:
    """Σ a.auxiliary_loss() over the adapters that return one; None when none does."""
    terms = [t for t in (a.auxiliary_loss() for a in adapters) if t is not None]
    if not terms:
        return None
    total = terms[0]
    for t in terms[1:]:
        total = total + t.to(total.device)
    return total


def with_auxiliary(loss: Tensor, adapters: list[Adapter], weight: float) -> Tensor:
    """`loss + weight · Σ ℓ_a` (the loss itself when no adapter has a term or the weight is 0)."""
    aux = auxiliary_loss(adapters) if weight else None
    return loss if aux is None else loss + weight * aux.to(loss.device, loss.dtype)
