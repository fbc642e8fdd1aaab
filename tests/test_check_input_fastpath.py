"""check_input's finiteness test: a finite sum proves every entry finite; a non-finite sum falls back to
the exact check, so finite inputs whose sum overflows are still accepted."""

from __future__ import annotations

import math

import pytest
import torch

from moelora_core import LoRA, LoRAConfig, NonFiniteError
from moelora_core.errors import check_input


def _overflowing() -> torch.Tensor:
    x = torch.full((4, 6), 3.0e38)  # finite in float32, but the sum overflows to inf
    assert bool(torch.isfinite(x).all())
    return x


def test_finite_input_whose_sum_overflows_is_accepted() -> None:
    x = _overflowing()
    assert check_input(x, 6, torch.empty(0)) is x
    LoRA(LoRAConfig(in_features=6, out_features=5, rank=2))(x)  # no NonFiniteError


def test_sum_alone_would_reject_it() -> None:
    """Mutated twin: a check that trusted the sum alone refutes the finite input above."""
    assert not bool(torch.isfinite(_overflowing().sum()))


@pytest.mark.parametrize("values", [[math.nan], [math.inf], [-math.inf], [math.inf, -math.inf]])
def test_non_finite_entries_are_rejected(values: list[float]) -> None:
    x = torch.randn(4, 6)
    for i, v in enumerate(values):
        x[i, 2] = v
    with pytest.raises(NonFiniteError, match=f"{len(values)} non-finite value"):
        check_input(x, 6, x)
