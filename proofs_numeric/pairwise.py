"""Pairwise squared distances of the rows of a matrix, from its Gram matrix (one matmul, no (E, E, n)
difference tensor):

    ‖m_i − m_j‖² = ‖m_i‖² + ‖m_j‖² − 2 m_i·m_j,    D2 = diag(G) 1ᵀ + 1 diag(G)ᵀ − 2 G,  G = M Mᵀ.

Floating-point: an entry may round slightly below 0 for (nearly) equal rows; callers that take a
square root clamp it (`clamp_min(0)`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from moelora_core.validate import require_tensor


def pairwise_sq_distances(M: Tensor) -> Tensor:
    """(E, n) -> (E, E): ‖m_i − m_j‖² for every pair of rows (symmetric, 0 on the diagonal up to
    rounding), in M's dtype and on its device."""
    require_tensor("M", M, ndim=2)
    G = M @ M.T  # (E, E)
    d = G.diagonal()
    out: Tensor = d.unsqueeze(0) + d.unsqueeze(1) - 2 * G
    return out


def farthest_pair(M: Tensor) -> tuple[int, int, Tensor]:
    """(i, j, D2) with i < j the rows of M (E >= 2, n) farthest apart and D2 the upper triangle
    (above the diagonal) of `pairwise_sq_distances(M)`, zeros elsewhere."""
    D2 = pairwise_sq_distances(M).triu(1)
    i, j = divmod(int(torch.argmax(D2)), M.shape[0])
    return i, j, D2
