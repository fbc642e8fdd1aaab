"""The talking module's amplification under the reference initialisation (numbers in docs)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from proofs_numeric.bounds import averaging_talk, reference_init_amplification
from proofs_numeric.bounds.talk import reference_init_talk, sharpening_talk, wilson

DOCS = Path(__file__).resolve().parents[1] / "docs" / "bounds.md"


def test_reference_init_is_kaiming_uniform() -> None:
    gen = torch.Generator().manual_seed(9)
    expect = []
    for _ in range(5):
        t = torch.empty(4, 4)
        torch.nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=gen)
        expect.append(t)
    assert torch.equal(reference_init_talk(4, 5, 9), torch.stack(expect))


@pytest.mark.parametrize("E", [4, 8])
def test_amplification_is_measurable_and_documented(E: int) -> None:
    amp = reference_init_amplification(E, draws=20000, seed=0)
    assert 0.05 < amp.low <= amp.fraction <= amp.high < 0.95
    text = DOCS.read_text(encoding="utf-8")
    assert f"| {E} | 20000 | {amp.fraction:.4f} | [{amp.low:.4f}, {amp.high:.4f}]" in text


def test_averaging_and_sharpening_matrices() -> None:
    for E, a in ((2, 0.3), (5, 1.0), (8, 0.01)):
        T = averaging_talk(E, a)
        assert float(torch.linalg.matrix_norm(T, ord=2)) == pytest.approx(1.0, abs=1e-12)
        assert float(T.norm(dim=0).max()) < 1
        assert float(torch.linalg.matrix_norm(sharpening_talk(E, a), ord=2)) == pytest.approx(1 + a)


def test_wilson_interval() -> None:
    lo, hi = wilson(50, 100)
    assert lo < 0.5 < hi and wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
