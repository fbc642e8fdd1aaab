"""The lower-bound search: batched and vmapped probes agree; every number is a lower bound."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from moelora_core.errors import input_checks
from proofs_numeric.bounds.certified import effective_matrix, logit_factors
from proofs_numeric.bounds.instances import build, randomized
from proofs_numeric.bounds.searches import pair_targets, routing_fn
from proofs_numeric.bounds.spectral import softmax_jacobian
from proofs_numeric.search import (
    Probe,
    Region,
    exact_small,
    jacobian_power,
    pair_ratio,
    screen,
    search,
)

D = torch.float64
GEN = torch.Generator().manual_seed(0)


def _closed_form(L: Tensor, X: Tensor) -> Tensor:
    """‖J(p(x)) L‖₂ per row: the router's Jacobian norm in closed form."""
    p = torch.softmax(X @ L.T, -1)
    return torch.linalg.matrix_norm(softmax_jacobian(p) @ L, ord=2)


@pytest.fixture()
def talk() -> tuple[Probe, Probe, Tensor]:
    t = randomized(build("talklora", 7, 3, 3, 2), 4, 2.0).requires_grad_(False)
    f = routing_fn(t)
    return Probe(f, True), Probe(f, False), effective_matrix(logit_factors(t))


def test_batched_and_vmapped_probes_agree(talk: tuple[Probe, Probe, Tensor]) -> None:
    pb, pv, _ = talk
    X = torch.randn(5, 7, generator=GEN, dtype=D)
    V = torch.randn(5, 7, generator=GEN, dtype=D)
    U = torch.randn(5, 3, generator=GEN, dtype=D)
    with input_checks(False):
        assert torch.allclose(pb.jvp(X, V), pv.jvp(X, V), atol=1e-14)
        assert torch.allclose(pb.vjp(X, U), pv.vjp(X, U), atol=1e-14)
        assert torch.allclose(pb.jacobians(X), pv.jacobians(X), atol=1e-14)
        assert torch.allclose(pb.sigma_grad(X, V), pv.sigma_grad(X, V), atol=1e-12)


def test_power_and_exact_jacobians_are_lower_bounds(talk: tuple[Probe, Probe, Tensor]) -> None:
    pb, _, L = talk
    X = 2 * torch.randn(20, 7, generator=GEN, dtype=D)
    exact = _closed_form(L, X)
    with input_checks(False):
        s_exact, _ = exact_small(pb, X)
        s_screen, _ = screen(pb, X)
        s_power, _ = jacobian_power(pb, X, 30)
    assert torch.allclose(s_exact, exact, rtol=1e-12)
    assert bool((s_screen <= exact * (1 + 1e-9) + 1e-14).all())
    assert bool((s_power <= exact * (1 + 1e-9) + 1e-14).all())
    assert torch.allclose(s_power, exact, rtol=1e-6, atol=1e-14)  # converged


def test_search_on_a_ball_stays_inside_and_below_the_sup() -> None:
    L = torch.randn(3, 4, generator=GEN, dtype=D)

    def f(x: Tensor) -> Tensor:
        return torch.softmax(x @ L.T, -1)

    centre = torch.zeros(1, 4, dtype=D)
    region = Region(centre, torch.zeros(6, dtype=torch.long), 0.5)
    starts = 0.3 * torch.randn(6, 4, generator=GEN, dtype=D)
    res = search(
        Probe(f, True), Probe(f, True), starts, region, iterations=4, ascent=5, pair_steps=5, keep=6
    )
    assert float(res.best_point.norm()) <= 0.5 + 1e-12
    grid = 0.5 * torch.nn.functional.normalize(torch.randn(4000, 4, generator=GEN, dtype=D), dim=-1)
    grid = grid * torch.rand(4000, 1, generator=GEN, dtype=D)
    assert (
        res.jacobian
        <= float(_closed_form(L, torch.cat([grid, res.best_point[None]])).max()) + 1e-12
    )
    assert res.pairs <= 0.5 * float(torch.linalg.matrix_norm(L, ord=2))


def test_pair_targets_reach_half() -> None:
    L = torch.eye(4, dtype=D)
    X = pair_targets(L, 6)
    assert X.shape == (6, 4)
    assert float(_closed_form(L, X).min()) > 0.4999


def test_pair_ratio_skips_coincident_points() -> None:
    def f(x: Tensor) -> Tensor:
        return torch.softmax(x, -1)

    A = torch.randn(3, 4, generator=GEN, dtype=D)
    r = pair_ratio(Probe(f, True), A, A.clone())
    assert torch.equal(r, torch.zeros(3, dtype=D))


def test_top_singular_survives_overflow_and_float32() -> None:
    """Rows with non-finite entries score 0; float32 Grams are diagonalised in float64."""
    from proofs_numeric.search import top_singular

    J = torch.randn(3, 4, 6, generator=GEN).float()
    J[1, 0, 0] = float("nan")
    J[2] = 1e-30 * torch.ones(4, 6)  # nearly repeated (all-equal) singular structure
    s, v = top_singular(J)
    assert s.dtype == torch.float32 and bool(torch.isfinite(s).all()) and float(s[1]) == 0.0
    exact = torch.linalg.matrix_norm(J[0].double(), ord=2)
    assert float(s[0]) == pytest.approx(float(exact), rel=1e-6)
    assert float(torch.linalg.vector_norm(J[0].double() @ v[0].double())) == pytest.approx(
        float(exact), rel=1e-5
    )
