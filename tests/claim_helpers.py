"""Test helpers shared by several test files: asserting a claim's verdict, a generic adapter spec, and
forcing the gathered sparse down-projection."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from moelora_core import sparse
from proofs_numeric.checking import Claim, check_claim

SPEC: dict[str, Any] = dict(
    rank=8,
    experts=4,
    expert_rank=2,
    top_k=None,
    router="input",
    core_router=False,
    shared=False,
    options={},
)  # the fields of moelora_core.adapter.AdapterSpecLike, scale apart


def assert_as_declared(claim: Claim[Any]) -> None:
    """`claim` comes out as it declares: holds with no error, or refuted with a counterexample."""
    report = check_claim(claim)
    assert not report.raised, report.raised
    if claim.expect == "holds":
        assert report.holds, f"{claim.name}: {report.counterexample} ({report.detail})"
    else:
        assert not report.holds and report.counterexample is not None, claim.name


@contextmanager
def gather_always(on: bool) -> Iterator[None]:
    """With `on`, the sparse path gathers the chosen experts' down-projection whatever the sizes."""
    before = sparse.GATHER_COPY, sparse.GATHER_MAC
    if on:
        sparse.GATHER_COPY = sparse.GATHER_MAC = 0.0
    try:
        yield
    finally:
        sparse.GATHER_COPY, sparse.GATHER_MAC = before
