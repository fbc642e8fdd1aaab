"""Spectral norms (exact and certified interval), the softmax Jacobian and its constant ½."""

from __future__ import annotations

import pytest
import torch

from moelora_core.errors import NonFiniteError, ShapeError
from proofs_numeric.bounds.spectral import (
    CERT_RTOL,
    SOFTMAX_LIP,
    centring,
    exact_norm,
    gram_pair_norm,
    psd_sqrt,
    softmax_jacobian,
    spectral_norm,
    subspace_norm,
)

D = torch.float64
GEN = torch.Generator().manual_seed(0)


def test_exact_norm_matches_matrix_norm() -> None:
    M = torch.randn(7, 40, generator=GEN, dtype=D)
    s = spectral_norm(M)
    assert s.method == "svd"
    assert s.lower == pytest.approx(float(torch.linalg.matrix_norm(M, ord=2)), rel=1e-14)
    assert s.upper == pytest.approx(s.lower * (1 + CERT_RTOL), rel=1e-15) and s.upper > s.lower
    assert exact_norm(torch.zeros(0, 3, dtype=D)) == 0.0


@pytest.mark.parametrize("rank", [3, 30, 200])
def test_subspace_interval_contains_the_norm(rank: int) -> None:
    U = torch.randn(300, rank, generator=GEN, dtype=D)
    V = torch.randn(rank, 250, generator=GEN, dtype=D)
    M = U @ V
    true = float(torch.linalg.matrix_norm(M, ord=2))
    s = subspace_norm(M, k=16, iterations=4)
    assert s.method == "subspace" and s.lower <= true * (1 + 1e-12) and true <= s.upper
    if rank <= 16:  # the residual is rounding noise: the interval is tight
        assert s.upper <= true * (1 + 1e-9)


def test_subspace_bound_holds_for_a_flat_spectrum() -> None:
    """No spectral decay (an orthogonal matrix): the residual term keeps the upper end sound."""
    Q = torch.linalg.qr(torch.randn(120, 120, generator=GEN, dtype=D)).Q
    s = subspace_norm(Q, k=4, iterations=2)
    assert s.lower <= 1.0 + 1e-12 <= s.upper + 1e-12 and s.upper > 1.5


def test_large_matrix_uses_the_certified_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    import proofs_numeric.bounds.spectral as sp

    monkeypatch.setattr(sp, "EXACT_MAX_DIM", 8)
    M = torch.randn(20, 30, generator=GEN, dtype=D)
    s = sp.spectral_norm(M)
    assert s.method == "subspace"
    assert s.lower <= float(torch.linalg.matrix_norm(M, ord=2)) <= s.upper


def test_bad_matrices() -> None:
    with pytest.raises(ShapeError, match="2-D"):
        spectral_norm(torch.ones(3, dtype=D))
    with pytest.raises(NonFiniteError):
        spectral_norm(torch.tensor([[1.0, float("nan")]], dtype=D))


def test_softmax_jacobian_and_its_constant() -> None:
    z = torch.randn(5, 4, generator=GEN, dtype=D, requires_grad=True)
    p = torch.softmax(z, -1)
    J = torch.autograd.functional.jacobian(lambda t: torch.softmax(t, -1), z[0].detach())
    assert torch.allclose(softmax_jacobian(p[0].detach()), J, atol=1e-15)
    half = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=D)
    assert float(torch.linalg.matrix_norm(softmax_jacobian(half), ord=2)) == SOFTMAX_LIP
    # J(p) = J(p) Π: softmax ignores the mean logit
    Jb = softmax_jacobian(p.detach())
    assert torch.allclose(Jb @ centring(4), Jb, atol=1e-15)


def test_psd_sqrt_and_gram_pair_norm() -> None:
    X = torch.randn(6, 4, generator=GEN, dtype=D)
    C = X @ X.T  # rank 4 PSD
    S = psd_sqrt(C)
    assert torch.allclose(S @ S, C, atol=1e-12)
    U = torch.randn(9, 6, generator=GEN, dtype=D)
    got = float(gram_pair_norm(U.T @ U, C))
    assert got == pytest.approx(float(torch.linalg.matrix_norm(U @ X, ord=2)), rel=1e-12)
