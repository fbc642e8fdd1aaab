"""The faster enclosure paths enclose the same exact quantities as the general ones.

`matmul_floats` is `matmul` on exact operands without zero radii; `row_norms_upper` is `frob_upper`
without the radius term; the CoMoL Gram from the r x r cores (U_i = s B M_i) and the one from the
m x Ek stack both enclose the exact Gram, so their enclosures must overlap, and each must contain
the exact value computed in rational arithmetic on a small case.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import pytest
import torch

from moelora_core import CoMoL, CoMoLConfig
from proofs_numeric.bounds.factors import expert_factors
from proofs_numeric.bounds.norms import centred_response_norms, stack_norms
from proofs_numeric.bounds.rigorous import (
    Enclosure,
    exact_t,
    frob_upper,
    matmul,
    matmul_floats,
    row_norms_upper,
)

F64 = torch.float64


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_matmul_floats_is_matmul_of_exact_operands() -> None:
    A, B = _rand(7, 5, seed=0), _rand(5, 3, seed=1)
    A[2] = 0.0  # a zero row: its products are exactly 0, radius 0
    ref, got = matmul(exact_t(A), exact_t(B)), matmul_floats(A, B)
    assert torch.equal(ref.mid, got.mid) and torch.equal(ref.rad, got.rad)
    assert bool((got.rad[2] == 0).all())
    Be = Enclosure(B, 1e-9 * B.abs())
    ref, got = matmul(exact_t(A), Be), matmul_floats(A, Be)
    assert torch.equal(ref.mid, got.mid) and torch.equal(ref.rad, got.rad)


def test_matmul_floats_contains_the_exact_product() -> None:
    A, B = _rand(4, 6, seed=2), _rand(6, 3, seed=3)
    got = matmul_floats(A, B)
    for i in range(4):
        for j in range(3):
            exact = sum(Fraction(float(A[i, t])) * Fraction(float(B[t, j])) for t in range(6))
            assert abs(exact - Fraction(float(got.mid[i, j]))) <= Fraction(float(got.rad[i, j]))


def test_row_norms_upper_bounds_the_exact_norm_and_matches_frob() -> None:
    X = _rand(5, 9, seed=4) * torch.logspace(-3, 3, 5, dtype=F64).unsqueeze(-1)
    got = row_norms_upper(X)
    for i in range(5):
        sq = sum(Fraction(float(v)) ** 2 for v in X[i])
        assert Fraction(float(got[i])) ** 2 >= sq
    frob = frob_upper(exact_t(X.unsqueeze(-2)))
    assert bool((got <= frob).all()) and got == pytest.approx(frob.tolist(), rel=1e-14)


def _comol(seed: int) -> CoMoL:
    torch.manual_seed(seed)
    a = CoMoL(CoMoLConfig(in_features=12, out_features=10, rank=3, num_cores=4, scale=0.7))
    with torch.no_grad():
        a.B.weight.normal_(0, 0.5)
        a.cores.normal_(0, 1.0)
    return a


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_comol_core_gram_and_stack_gram_enclose_the_same_values(seed: int) -> None:
    f = expert_factors(_comol(seed))
    assert f.core is not None
    plain = dataclasses.replace(f, core=None)
    for got, ref in ((f.grams[0], plain.grams[0]), (f.centred_gram, plain.centred_gram)):
        assert got.mid.shape == ref.mid.shape
        assert bool(((got.mid - ref.mid).abs() <= got.rad + ref.rad).all())
        assert bool((got.rad <= 1e-12 * (1 + got.mid.abs().max())).all())  # still tight


@pytest.mark.parametrize("seed", [0, 1])
def test_comol_centred_responses_agree_with_the_stack_path(seed: int) -> None:
    f = expert_factors(_comol(seed))
    X = _rand(6, 12, seed=seed + 10)
    got = centred_response_norms(f, X)
    ref = centred_response_norms(dataclasses.replace(f, core=None), X)
    assert got.tolist() == pytest.approx(ref.tolist(), rel=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_comol_stack_norms_through_the_cores_match_the_stack_path(seed: int) -> None:
    f = expert_factors(_comol(seed))
    got, ref = stack_norms(f), stack_norms(dataclasses.replace(f, core=None))
    dense = f.dense()  # (N, m, n), exact enough for a 1e-9 comparison
    assert got.experts == pytest.approx(ref.experts, rel=1e-9)
    assert got.stack == pytest.approx(ref.stack, rel=1e-9)
    assert got.stack_centred == pytest.approx(ref.stack_centred, rel=1e-9)
    true = torch.linalg.matrix_norm(dense, ord=2)
    assert all(g >= float(t) for g, t in zip(got.experts, true, strict=True))
    stack_true = float(torch.linalg.matrix_norm(torch.cat(list(dense), dim=1), ord=2))
    assert got.stack >= stack_true
