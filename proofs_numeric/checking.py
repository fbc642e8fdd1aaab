"""The claim checker: a claim is a property over drawn instances, checked by Hypothesis.

A `Claim` pairs a strategy with a `case` function that measures one drawn instance and returns an
`Outcome` (a non-negative error and the tolerance it must stay under). `check_claim` runs it under the
active Hypothesis profile and returns a `ClaimReport`: holds or refuted, cases tried, the largest error
seen, seconds, and, for a refuted claim, the shrunk counterexample (the smallest failing instance
Hypothesis found, printed so that it can be rebuilt).

A case that raises (outside Hypothesis's own reject/assume) is not a refutation: the claim gets the
verdict *error* with a one-line summary naming the exception and the file and line it came from
(`ClaimReport.raised`, the traceback in `ClaimReport.trace`), and it never satisfies
`expect="refuted"`. A claim may carry a second strategy, `search`: when the random phase finds no
counterexample, an adversarial phase runs on it (`Claim.search`, budget `profiles.search_budget`), and
a violation found there is shrunk and reported like any other (`ClaimReport.phase`).

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
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import torch
from hypothesis import given, settings
from hypothesis.errors import Flaky, HypothesisException
from hypothesis.strategies import SearchStrategy

from moelora_core.errors import ConfigError, MoELoRAError

from .threads import torch_threads

T = TypeVar("T")
Expect = Literal["holds", "refuted"]
EXACT_TOL = 1e-10
_PACKAGE = Path(__file__).resolve().parent


class ClaimError(MoELoRAError):
    """A claim cannot be evaluated on a valid instance (a formula symbol with no value, a bound that is
    not a number, a predicate of the wrong type): the verdict is *error*, not *refuted*."""


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
    search: SearchStrategy[T] | None = None  # the adversarial phase's instances (None: no search)
    search_examples: int | None = None  # overrides `profiles.search_budget`


def claim_with_twin(
    name: str,
    statement: str,
    strategy: SearchStrategy[T],
    case: Callable[[T], Outcome],
    *,
    twin: str,
    twin_case: Callable[[T], Outcome],
    spec: str = "",
    max_examples: int | None = None,
    twin_strategy: SearchStrategy[T] | None = None,
    describe: Callable[[T], str] = repr,
    search: SearchStrategy[T] | None = None,
    twin_name: str | None = None,
) -> list[Claim[T]]:
    """A claim that must hold and, beside it, its mutated twin `<name>__<suffix>` that must be refuted.

    `twin` reads "suffix: what the mutation does", e.g. "drop_K: the same embedding without K";
    the twin draws from `twin_strategy` (default: the claim's own) and keeps `spec` and the budget.
    `twin_name` replaces `<name>__<suffix>` where a twin's name must say more (e.g. a twin that
    mutates one architecture of a claim over all of them).
    """
    suffix, _, what = twin.partition(":")
    if not suffix.strip() or not what.strip():
        raise ConfigError(f"twin={twin!r}: expected 'suffix: what the mutation does'")
    if twin_name is not None and (not twin_name.strip() or twin_name == name):
        raise ConfigError(
            f"twin_name={twin_name!r}: expected a name other than the claim's {name!r}"
        )
    return [
        Claim(
            name,
            statement,
            strategy,
            case,
            spec=spec,
            max_examples=max_examples,
            describe=describe,
            search=search,
        ),
        Claim(
            twin_name or f"{name}__{suffix.strip()}",
            f"twin: {what.strip()}",
            twin_strategy if twin_strategy is not None else strategy,
            twin_case,
            "refuted",
            name,
            spec=spec,
            max_examples=max_examples,
            describe=describe,
        ),
    ]


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
    raised: str = ""  # verdict error: "<Type>: <message> (file:line)", one line
    trace: str = ""  # verdict error: the traceback, printed after `raised`
    phase: str = ""  # refuted or error: "random" or "search", the phase that found it
    search_cases: int = 0  # of `cases`, those of the adversarial phase

    @property
    def as_expected(self) -> bool:
        return not self.raised and self.holds == (self.expect == "holds")

    @property
    def verdict(self) -> str:
        if self.raised:
            return "error"
        return "holds" if self.holds else "refuted"

    def line(self) -> str:
        mark = "ERR" if self.raised else "ok " if self.as_expected else "BAD"
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


class _Errored(Exception):
    pass


def where_raised(exc: BaseException) -> str:
    """'file:line' of the deepest traceback frame outside this package, Hypothesis and torch (the
    user's code when it is theirs), else the deepest frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    lib = ("hypothesis", "torch", "sympy", "site-packages", "/lib/python")
    own = [f for f in frames if not Path(f.filename).resolve().is_relative_to(_PACKAGE)]
    ext = [f for f in own if not any(k in f.filename for k in lib)]
    chosen = ext or own or list(frames)
    return f"{chosen[-1].filename}:{chosen[-1].lineno}" if chosen else "?"


def summarise(exc: BaseException) -> str:
    """One line: the exception type, its first message line, and where it was raised (not for a
    `ClaimError`, whose message names the declaration's problem)."""
    msg = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {msg[0] if msg else ''}"
    return text if isinstance(exc, ClaimError) else f"{text} ({where_raised(exc)})"


@dataclass
class _Run:
    """What one phase of `check_claim` saw."""

    cases: int = 0  # instances tried before the first failure (shrinking runs excluded)
    max_err: float = 0.0
    tol: float = math.nan
    failed: bool = False
    failing: list[tuple[Any, Outcome]] = field(default_factory=list)
    errors: list[tuple[Any, BaseException]] = field(default_factory=list)


def _phase(claim: Claim[T], strategy: SearchStrategy[T], n: int, run: _Run) -> str:
    """Run `claim.case` on `n` instances of `strategy`; '' if none failed, else the Hypothesis error."""

    def one(example: T) -> None:
        try:
            out = claim.case(example)
        except HypothesisException:
            raise  # reject() / assume(): Hypothesis draws another instance (not a tried case)
        except Exception as e:
            run.cases += not run.failed
            run.failed = True
            run.errors.append((example, e))
            raise _Errored(summarise(e)) from e
        run.cases += not run.failed  # shrinking runs (after the first failure) are not counted
        run.tol = out.tolerance
        run.max_err = max(run.max_err, out.error) if math.isfinite(out.error) else math.inf
        if not out.ok:
            run.failed = True
            run.failing.append((example, out))
            raise _Refuted(out.detail)

    # deadline off: a claim's cases are slow by nature, and a missed deadline is no counterexample
    config = settings(settings.default, max_examples=n, deadline=None, report_multiple_bugs=False)
    try:
        config(given(strategy)(one))()
    except (_Refuted, _Errored, Flaky, HypothesisException, AssertionError) as e:
        return f"{type(e).__name__}: {e}".strip().splitlines()[0]
    return ""


def check_claim(claim: Claim[T], *, max_examples: int | None = None) -> ClaimReport:
    """Run `claim` under the active Hypothesis profile (see `profiles.load_profile`): the random phase,
    then, if it found nothing and the claim has a `search` strategy, the adversarial phase."""
    from .profiles import search_budget

    n = max_examples or claim.max_examples or settings().max_examples
    run, phase = _Run(), "random"
    start = time.perf_counter()
    with torch_threads(1):  # tiny tensors: a thread pool costs far more than it saves
        failure = _phase(claim, claim.strategy, n, run)
        random_cases = run.cases
        if not failure and claim.search is not None:
            phase = "search"
            failure = _phase(claim, claim.search, claim.search_examples or search_budget(n), run)
    report = ClaimReport(
        claim.name, claim.statement, claim.expect, not failure, run.cases, run.max_err, run.tol,
        time.perf_counter() - start, twin_of=claim.twin_of,
        phase=phase if failure else "", search_cases=run.cases - random_cases,
    )  # fmt: skip
    if run.errors:
        example, exc = run.errors[-1]  # Hypothesis re-runs the shrunk example last
        report.raised, report.max_error = summarise(exc), math.inf
        report.trace = "".join(traceback.format_exception(exc)).rstrip()
        report.counterexample = _describe(claim, example)
    elif run.failing:
        example, out = run.failing[-1]
        report.counterexample = _describe(claim, example)
        report.counterexample_error = out.error
        report.detail = out.detail
    elif failure:  # Hypothesis stopped without a failing case (no instance could be drawn, ...)
        report.raised = failure
    return report


def _describe(claim: Claim[T], example: T) -> str:
    try:
        return claim.describe(example)
    except Exception as e:  # describing must not hide the failure it describes
        return f"{example!r} (describing it raised {summarise(e)})"


__all__ = [
    "EXACT_TOL",
    "Claim",
    "ClaimError",
    "ClaimReport",
    "Expect",
    "Outcome",
    "check_claim",
    "claim_with_twin",
    "exact",
    "rel_error",
    "summarise",
    "where_raised",
]
