"""Running a variant's claims: `run_variant`, `check_variant_claim`, and the report format shared by
`moelora verify` and the pytest plugin."""

from __future__ import annotations

import builtins
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..checking import Claim, ClaimReport, check_claim, summarise
from .base import VariantError
from .variant import Variant


@dataclass
class VariantReport:
    """The claim reports of one variant."""

    name: str
    source: str
    reports: list[ClaimReport]
    seconds: float

    @builtins.property
    def ok(self) -> bool:
        return all(r.as_expected for r in self.reports)

    @builtins.property
    def errors(self) -> list[ClaimReport]:
        return [r for r in self.reports if r.verdict == "error"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.name,
            "source": self.source,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "reports": [r.to_dict() for r in self.reports],
        }


def check_variant_claim(
    variant: Variant, claim: Claim[Any], *, max_examples: int | None = None
) -> ClaimReport:
    """`check_claim`, plus a readable report when no instance could be drawn or drawing raised."""
    start = time.perf_counter()
    try:
        report = check_claim(claim, max_examples=max_examples)
    except Exception as e:  # raised while drawing (a config, a where= filter, a strategy)
        return ClaimReport(
            claim.name, claim.statement, claim.expect, False, 0, math.inf, math.nan,
            time.perf_counter() - start, raised=f"drawing an instance raised {summarise(e)}",
        )  # fmt: skip
    if report.raised and report.cases == 0 and not report.counterexample:
        report.raised = (
            "no instance could be drawn: every config was rejected; last rejection: "
            f"{variant.why.last or 'none recorded'} ({report.raised})"
        )
    return report


def run_variant(
    variant: Variant,
    *,
    max_examples: int | None = None,
    only: Sequence[str] | None = None,
    on_report: Callable[[ClaimReport], object] | None = None,
) -> VariantReport:
    """Preflight (VariantError if the smallest instance cannot be built or run), then every claim under
    the active Hypothesis profile. `only`: claim names, with or without the `variant.` prefix."""
    start = time.perf_counter()
    variant.preflight()
    claims = variant.claims()
    if only:
        wanted = set(only)
        known = {c.name for c in claims} | {c.name.split(".", 1)[1] for c in claims}
        unknown = sorted(wanted - known)
        if unknown:
            raise VariantError(
                f"{variant.where}: no claim(s) {unknown}; known {sorted(c.name for c in claims)}"
            )
        claims = [c for c in claims if c.name in wanted or c.name.split(".", 1)[1] in wanted]
    reports = []
    for c in claims:
        rep = check_variant_claim(variant, c, max_examples=max_examples)
        reports.append(rep)
        if on_report is not None:
            on_report(rep)
    return VariantReport(variant.name, variant.where, reports, time.perf_counter() - start)


def format_report(rep: ClaimReport, traceback: bool = False) -> list[str]:
    """The claim's line and, unless it holds: for an error its one-line summary (then, if asked, the
    traceback), for a refutation the phase that found it, the counterexample and the measured error."""
    lines = [rep.line()]
    if rep.raised:
        lines.append(f"      error: {rep.raised}")
    elif not rep.holds and rep.phase:
        lines.append(f"      found by the {rep.phase} phase")
    if rep.counterexample and not rep.holds:
        lines.append("      counterexample: " + rep.counterexample.replace("\n", "\n        "))
    if not rep.holds and not rep.raised:
        err = (
            f"error {rep.counterexample_error:.3g} > tolerance {rep.tolerance:.3g}: "
            if rep.counterexample_error is not None
            else ""
        )
        if rep.detail or err:
            lines.append(f"      {err}{rep.detail}")
    if rep.raised and traceback and rep.trace:
        lines.append("      " + rep.trace.replace("\n", "\n      "))
    return lines
