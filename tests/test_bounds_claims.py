"""The bound claims (`pytest -m theorems`): each holds, each twin is refuted with a counterexample."""

from __future__ import annotations

from typing import Any

import pytest

from proofs_numeric.catalogue.bounds import BOUND_CLAIMS
from proofs_numeric.checking import Claim, check_claim

NAMES = {c.name for c in BOUND_CLAIMS}


@pytest.mark.theorems
@pytest.mark.parametrize("claim", BOUND_CLAIMS, ids=lambda c: c.name)
def test_bound_claim(claim: Claim[Any]) -> None:
    report = check_claim(claim)
    assert report.as_expected, (
        f"{claim.name}: {report.verdict} ({report.counterexample}; {report.detail})"
    )
    if claim.expect == "refuted":
        assert report.counterexample is not None and report.detail
    else:
        assert report.cases >= (claim.max_examples or 200)


@pytest.mark.theorems
def test_bound_catalogue_is_consistent() -> None:
    assert len(NAMES) == len(BOUND_CLAIMS)
    holds = {c.name for c in BOUND_CLAIMS if c.expect == "holds"}
    for c in BOUND_CLAIMS:
        if c.twin_of is not None:
            assert c.twin_of in holds and c.expect == "refuted"
        if c.max_examples is not None:
            assert c.max_examples >= 30
    twinned = {c.twin_of for c in BOUND_CLAIMS if c.twin_of}
    assert twinned == holds  # every property has a refuted mutated twin
