"""SPEC claims 1–4 as properties (`pytest -m theorems`), each beside its refuted mutated twin."""

from __future__ import annotations

from typing import Any

import pytest

from proofs_numeric.catalogue import CORE_CLAIMS, DECLARED_CLAIMS, all_claims
from proofs_numeric.checking import Claim, check_claim

HOLDS = [c for c in CORE_CLAIMS if c.expect == "holds"]
REFUTED = [c for c in CORE_CLAIMS if c.expect == "refuted"]


@pytest.mark.theorems
@pytest.mark.parametrize("claim", HOLDS, ids=lambda c: c.name)
def test_claim_holds(claim: Claim[Any]) -> None:
    report = check_claim(claim)
    assert report.holds, f"{claim.name} refuted: {report.counterexample} ({report.detail})"
    # properties over drawn instances run on at least the profile's cases (symbolic claims: one)
    assert report.cases >= (claim.max_examples or 200) or claim.max_examples == 1


@pytest.mark.theorems
@pytest.mark.parametrize("claim", REFUTED, ids=lambda c: c.name)
def test_claim_refuted_with_counterexample(claim: Claim[Any]) -> None:
    report = check_claim(claim)
    assert not report.holds, f"{claim.name} should be refuted but held on {report.cases} cases"
    assert report.counterexample is not None and report.detail


@pytest.mark.theorems
def test_every_twin_names_a_registered_claim() -> None:
    everything = all_claims()
    names = {c.name for c in everything}
    assert len(names) == len(everything), "claim names must be unique"
    for c in everything:
        if c.twin_of is not None:
            assert c.twin_of in names and c.expect == "refuted", c.name
    spec = {c.spec for c in CORE_CLAIMS}
    for n in ("SPEC claim 1", "SPEC claim 2", "SPEC claim 3", "SPEC claim 4"):
        assert n in spec


@pytest.mark.theorems
def test_counterexamples_are_shrunk() -> None:
    """A false reduction fails on the smallest instance: 2 experts, 1-dimensional everything."""
    name = "moelora_identical_experts_is_lora__unprepared"  # declared by MoELoRA
    claim = next(c for c in DECLARED_CLAIMS if c.name == name)
    report = check_claim(claim)
    assert report.counterexample is not None
    assert "in_features=1, out_features=1, num_experts=2, expert_rank=1" in report.counterexample
