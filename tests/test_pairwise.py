"""pairwise_sq_distances equals the squared distances of the rows; farthest_pair picks the largest."""

from __future__ import annotations

import pytest
import torch

from moelora_core.errors import MoELoRAError
from proofs_numeric.pairwise import farthest_pair, pairwise_sq_distances


def test_matches_the_differences() -> None:
    M = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    D2 = pairwise_sq_distances(M)
    direct = ((M.unsqueeze(1) - M.unsqueeze(0)) ** 2).sum(-1)
    assert torch.allclose(D2, direct, rtol=0, atol=1e-12)
    assert torch.equal(D2, D2.T)


def test_farthest_pair() -> None:
    M = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.5, 0.5]], dtype=torch.float64)
    i, j, D2 = farthest_pair(M)
    assert (i, j) == (1, 2) and float(D2[i, j]) == pytest.approx(10.0)
    assert float(D2.tril().abs().max()) == 0.0  # only i < j


def test_bad_input() -> None:
    with pytest.raises(MoELoRAError, match="M"):
        pairwise_sq_distances(torch.zeros(3, dtype=torch.float64))
