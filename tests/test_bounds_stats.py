"""Routing statistics and their input checks."""

from __future__ import annotations

import json
import math

import pytest
import torch

from moelora_core.errors import NonFiniteError, ShapeError
from proofs_numeric.bounds import RoutingWeightsError, routing_stats

D = torch.float64


def test_uniform_routing() -> None:
    s = routing_stats(torch.full((10, 4), 0.25, dtype=D))
    assert s.load == pytest.approx([0.25] * 4)
    assert s.entropy == pytest.approx(math.log(4)) and s.entropy_normalised == pytest.approx(1.0)
    assert s.load_cv == pytest.approx(0.0, abs=1e-12) and s.max_load_share == pytest.approx(0.25)
    assert s.tokens == 10 and s.num_experts == 4


def test_one_hot_routing_to_one_expert() -> None:
    g = torch.zeros(6, 3, dtype=D)
    g[:, 1] = 1
    s = routing_stats(g)
    assert s.entropy == 0.0 and s.max_load_share == 1.0 and s.top1_dominance == 1.0
    assert s.top1_counts == [0, 6, 0]
    assert s.load_cv == pytest.approx(math.sqrt(2))  # loads (0, 1, 0): std √2/3, mean 1/3


def test_mixed_routing_by_hand() -> None:
    g = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4], [1.0, 0.0]])
    s = routing_stats(g)
    assert s.load == pytest.approx([0.625, 0.375])
    H = lambda p: -sum(x * math.log(x) for x in p if x > 0)  # noqa: E731
    expect = (H([0.7, 0.3]) + H([0.2, 0.8]) + H([0.6, 0.4]) + 0.0) / 4
    assert s.entropy == pytest.approx(expect) and s.entropy_normalised == pytest.approx(
        expect / math.log(2)
    )
    assert s.load_cv == pytest.approx(0.125 / 0.5) and s.max_load_share == pytest.approx(0.625)
    assert s.top1_counts == [3, 1] and s.top1_dominance == pytest.approx(0.75)
    json.dumps(s.to_dict())
    assert "entropy" in str(s)


def test_single_expert_and_leading_dims() -> None:
    s = routing_stats(torch.ones(2, 3, 1))
    assert s.tokens == 6 and s.entropy_normalised == 0.0 and s.max_load_share == 1.0


@pytest.mark.parametrize(
    ("g", "err"),
    [
        (torch.ones(4), ShapeError),
        (torch.ones(0, 3), ShapeError),
        ([[0.5, 0.5]], ShapeError),
        (torch.ones(2, 2, dtype=torch.long), ShapeError),
        (torch.tensor([[0.5, float("nan")]]), NonFiniteError),
        (torch.tensor([[1.5, -0.5]]), RoutingWeightsError),
        (torch.tensor([[0.5, 0.6]]), RoutingWeightsError),
    ],
)
def test_bad_routing_weights(g: object, err: type[Exception]) -> None:
    with pytest.raises(err):
        routing_stats(g)  # type: ignore[arg-type]
