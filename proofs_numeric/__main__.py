"""`python -m proofs_numeric [--profile ci] [--json OUT] [--only NAME ...]`: check every claim, one line each.

Exit code 0 iff every claim came out as expected (true claims hold, twins and refuted statements are
refuted).
"""

from __future__ import annotations

import argparse
import sys
import time

from .catalogue import all_claims
from .checking import check_claim
from .jsonio import write_json_atomic
from .profiles import PROFILES, using_profile


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m proofs_numeric", description=__doc__)
    ap.add_argument(
        "--profile", default=None, choices=sorted(PROFILES), help="Hypothesis profile (default ci)"
    )
    ap.add_argument(
        "--json", dest="json_out", default=None, help="write the reports to this JSON file"
    )
    ap.add_argument(
        "--only", nargs="*", default=None, help="check only the claims with these names"
    )
    args = ap.parse_args(argv)
    with using_profile(args.profile) as profile:
        return _run(args, profile)


def _run(args: argparse.Namespace, profile: str) -> int:
    claims = all_claims()
    if args.only:
        unknown = set(args.only) - {c.name for c in claims}
        if unknown:
            print(f"--only: unknown claim(s) {sorted(unknown)}", file=sys.stderr)
            return 2
        claims = [c for c in claims if c.name in args.only]
    print(f"profile={profile}  claims={len(claims)}")
    start = time.perf_counter()
    reports = []
    for claim in claims:
        rep = check_claim(claim)
        reports.append(rep)
        print(rep.line(), flush=True)
        if rep.raised:  # verdict error: its one-line summary (the traceback is in --json)
            print(f"      error: {rep.raised}")
        if not rep.holds and rep.counterexample:
            print(f"      counterexample: {rep.counterexample}\n      {rep.detail}")
    bad = [r for r in reports if not r.as_expected]
    print(
        f"{len(reports) - len(bad)} as expected, {len(bad)} not, in {time.perf_counter() - start:.1f}s"
    )
    if args.json_out:
        payload = {"profile": profile, "reports": [r.to_dict() for r in reports]}
        write_json_atomic(args.json_out, payload)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
