"""The claim checker: a claim is a property over drawn instances, checked by Hypothesis.

A `Claim` pairs a strategy with a `case` function that measures one drawn instance and returns an
`Outcome` (a non-negative error and the tolerance it must stay under). `check_claim` runs it under the
active Hypothesis profile and returns a `ClaimReport`: holds or refuted, cases tried, the largest error
seen, seconds, and, for a refuted claim, the shrunk counterexample (the smallest failing instance
Hypothesis found, printed so that it can be rebuilt).

Each claim may declare `expect="refuted"`: a mutated twin (a wrong embedding, a formula missing a term,
a too-small bound) or a documented false statement. The suite then asserts that the checker refutes it,
so that no checker can pass everything.

Tolerance policy (exact claims): float64 throughout; the error of a comparison is
`max|a - b| / (1 + max|a|)` (absolute near 0, relative for large values), and exact reductions must
stay under `EXACT_TOL = 1e-10`. Every embedding is a handful of matmuls on matrices of size <= 64, whose
rounding error is ~1e-15; a wrong embedding errs by O(1). The 10^5 margin separates the two.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, Literal, TypeVar

import torch
from hypothesis import given, settings
from hypothesis.errors import Flaky, HypothesisException
from hypothesis.strategies import SearchStrategy

T = TypeVar("T")
Expect = Literal["holds", "refuted"]
EXACT_TOL = 1e-10


@dataclass(frozen=True)
class Outcome:
    """One measured case: `error` must be <= `tolerance` (NaN or inf never passes)."""

    error: float
    tolerance: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return math.isfinite(self.error) and self.error <= self.tolerance


def rel_error(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    """max|a - b| / (1 + max|a|); 0 for two Nones, inf for a shape mismatch or one None."""
    if a is None and b is None:
        return 0.0
    if a is None or b is None or a.shape != b.shape:
        return math.inf
    if a.numel() == 0:
        return 0.0
    num = float((a.detach() - b.detach()).abs().max())
    return num / (1.0 + float(a.detach().abs().max()))


def exact(
    *pairs: tuple[torch.Tensor | None, torch.Tensor | None], tol: float = EXACT_TOL
) -> Outcome:
    """Outcome of comparing several (expected, actual) pairs: the worst relative error."""
    errs = [rel_error(a, b) for a, b in pairs]
    return Outcome(
        max(errs, default=0.0),
        tol,
        "max relative error over " + ", ".join(f"{e:.2e}" for e in errs),
    )


@dataclass(frozen=True)
class Claim(Generic[T]):
    """A statement checked by computation on instances drawn from `strategy`."""

    name: str
    statement: str
    strategy: SearchStrategy[T]
    case: Callable[[T], Outcome]
    expect: Expect = "holds"
    twin_of: str | None = None  # for a mutated twin: the claim it mutates
    spec: str = ""  # where the claim comes from (e.g. "SPEC claim 1")
    max_examples: int | None = None  # overrides the profile (e.g. for an expensive claim)
    describe: Callable[[T], str] = field(default=repr)


@dataclass
class ClaimReport:
    name: str
    statement: str
    expect: Expect
    holds: bool
    cases: int
    max_error: float
    tolerance: float
    seconds: float
    counterexample: str | None = None
    counterexample_error: float | None = None
    detail: str = ""
    twin_of: str | None = None

    @property
    def as_expected(self) -> bool:
        return self.holds == (self.expect == "holds")

    @property
    def verdict(self) -> str:
        return "holds" if self.holds else "refuted"

    def line(self) -> str:
        mark = "ok " if self.as_expected else "BAD"
        exp = "" if self.expect == "holds" else " (expected refuted)"
        return (
            f"{mark} {self.name:<44} {self.verdict:<8}{exp:<20} cases={self.cases:<5} "
            f"max_err={self.max_error:.2e} tol={self.tolerance:.0e} {self.seconds:6.2f}s"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"], d["as_expected"] = self.verdict, self.as_expected
        for k in ("max_error", "counterexample_error"):
            if isinstance(d[k], float) and not math.isfinite(d[k]):
                d[k] = str(d[k])
        return d


class _Refuted(AssertionError):
    pass


def check_claim(claim: Claim[T], *, max_examples: int | None = None) -> ClaimReport:
    """Run `claim` under the active Hypothesis profile (see `profiles.load_profile`)."""
    cases = 0
    max_err = 0.0
    tol = math.nan
    failing: list[tuple[T, Outcome]] = []

    def one(example: T) -> None:
        nonlocal cases, max_err, tol
        cases += 1
        try:
            out = claim.case(example)
        except Exception as e:  # an exception is a refutation too, reported with its message
            out = Outcome(math.inf, tol if math.isfinite(tol) else 0.0, f"{type(e).__name__}: {e}")
        tol = out.tolerance
        max_err = max(max_err, out.error) if math.isfinite(out.error) else math.inf
        if not out.ok:
            failing.append((example, out))
            raise _Refuted(out.detail)

    n = max_examples or claim.max_examples or settings().max_examples
    runner = settings(settings.default, max_examples=n)(given(claim.strategy)(one))
    start = time.perf_counter()
    holds = True
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a thread pool costs far more than it saves
    try:
        runner()
    except (_Refuted, Flaky, HypothesisException, AssertionError):
        holds = False
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    report = ClaimReport(
        claim.name,
        claim.statement,
        claim.expect,
        holds,
        cases,
        max_err,
        tol,
        seconds,
        twin_of=claim.twin_of,
    )
    if not holds and failing:
        example, out = failing[-1]  # Hypothesis re-runs the shrunk example last
        report.counterexample = claim.describe(example)
        report.counterexample_error = out.error
        report.detail = out.detail
    return report
