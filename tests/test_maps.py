"""The linear-map algebra: shapes, dense matrices, parameter counts and spectral norms agree."""

from __future__ import annotations

import pytest
import torch

from moelora_core import (
    BlockDiagonal,
    Compose,
    Dense,
    HeadLayout,
    Identity,
    KronIdentity,
    SoftmaxRouter,
    chain,
)

D = torch.float64


def _x(n: int) -> torch.Tensor:
    return torch.randn(2, 3, n, dtype=D, generator=torch.Generator().manual_seed(n))


def test_dense_compose_chain() -> None:
    A, B = Dense(3, 5, dtype=D, name="A"), Dense(4, 3, dtype=D, name="B")
    BA = B @ A
    assert isinstance(BA, Compose) and BA.shape == (4, 5)
    x = _x(5)
    torch.testing.assert_close(BA(x), x @ BA.dense().T)
    assert BA.num_params() == 3 * 5 + 4 * 3
    assert [f.name for f in BA.factors()] == ["A", "B"]  # type: ignore[attr-defined]
    assert chain(A, B).dense().shape == (4, 5)
    torch.testing.assert_close(chain(A, B).dense(), BA.dense())
    s = torch.linalg.svdvals(BA.dense())[0].item()
    assert BA.spectral_norm() == pytest.approx(s)


def test_block_diagonal_and_kron() -> None:
    K = BlockDiagonal(3, 2, 2, dtype=D)
    x = _x(6)
    torch.testing.assert_close(K(x), x @ K.dense().T)
    assert K.num_params() == 3 * 2 * 2
    assert K.spectral_norm() == pytest.approx(torch.linalg.svdvals(K.dense())[0].item())
    T = Dense(3, 3, dtype=D)
    TI = KronIdentity(T, 2)
    torch.testing.assert_close(TI(x), x @ TI.dense().T)
    # head i of the output is Σ_j T_ij h_j
    heads = HeadLayout(3, 2)
    h = heads.split(x)
    torch.testing.assert_close(
        heads.split(TI(x))[..., 1, :], sum(T.weight[1, j] * h[..., j, :] for j in range(3))
    )
    assert TI.spectral_norm() == pytest.approx(torch.linalg.svdvals(TI.dense())[0].item())
    assert TI.num_params() == 9


def test_identity_and_heads() -> None:
    Id = Identity(4).to(torch.float64)
    assert Id.dense().dtype == D and Id.num_params() == 0 and Id.spectral_norm() == 1.0
    heads = HeadLayout(2, 3)
    h = _x(6)
    assert torch.equal(heads.concat(heads.split(h)), h)
    W = torch.arange(12.0).reshape(6, 2)
    assert torch.equal(heads.rows(W, 1), W[3:])


def test_softmax_router_topk_renormalises() -> None:
    W = Dense(4, 3, dtype=D)
    z = _x(3)
    p = SoftmaxRouter(W)(z)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 3, dtype=D))
    g = SoftmaxRouter(W, top_k=2)(z)
    assert int((g > 0).sum(-1).max()) == 2
    kept = torch.topk(p, 2, dim=-1)
    renorm = kept.values / kept.values.sum(-1, keepdim=True)
    torch.testing.assert_close(g.gather(-1, kept.indices), renorm)
    torch.testing.assert_close(SoftmaxRouter(W, top_k=4)(z), p)  # k = E is soft routing
