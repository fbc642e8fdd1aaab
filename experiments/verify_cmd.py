"""`moelora verify PATH_OR_MODULE [--profile ci|thorough|dev] [--json OUT]`: check a user-defined variant.

Loads the variants of a .py file, of the `*_variant.py` / `moelora_variant_*.py` files of a directory,
or of a dotted module name (see `proofs_numeric.variants`), checks every declared claim and prints one
line per claim (holds / refuted, cases tried, max error, seconds) and, for a refuted claim, the shrunk
counterexample and how to rebuild it.

Exit codes: 0 every claim came out as declared (claims declared `expect="refuted"` count when refuted);
1 some claim did not; 2 the variant could not be loaded or built (the message names the file and what
is wrong).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

import typer

from moelora_core.errors import MoELoRAError
from proofs_numeric.jsonio import write_json_atomic
from proofs_numeric.profiles import PROFILES, load_profile
from proofs_numeric.variants import VariantReport, format_report, load_variants, run_variant

__all__ = ["run_verify", "verify_command"]


def run_verify(
    target: str,
    *,
    profile: str | None = "ci",
    json_out: str | None = None,
    only: list[str] | None = None,
    max_examples: int | None = None,
    echo: Callable[[str], object] = print,
    echo_err: Callable[[str], object] = print,
) -> int:
    """The command's logic; returns the exit code."""
    start = time.perf_counter()
    payload: dict[str, Any] = {"target": target, "profile": profile, "ok": False, "variants": []}
    results: list[VariantReport] = []
    try:
        if profile is not None and profile not in PROFILES:
            raise MoELoRAError(f"--profile={profile!r}: expected one of {sorted(PROFILES)}")
        if max_examples is not None and max_examples < 1:
            raise MoELoRAError(f"--max-examples={max_examples}: expected an integer >= 1")
        payload["profile"] = load_profile(profile)
        variants = load_variants(target)
        for v in variants:
            n = len(v.declarations)
            echo(
                f"variant {v.name} ({v.where}): {n} claim(s) declared, profile={payload['profile']}"
            )
            results.append(
                run_variant(
                    v,
                    max_examples=max_examples,
                    only=only,
                    on_report=lambda r: echo("\n".join(format_report(r))),
                )
            )
    except MoELoRAError as e:
        echo_err(f"error: {e}")
        payload["error"] = str(e)
        if json_out:
            write_json_atomic(json_out, payload)
        return 2
    reports = [r for res in results for r in res.reports]
    bad = [r for r in reports if not r.as_expected]
    seconds = time.perf_counter() - start
    echo(
        f"{len(reports) - len(bad)} of {len(reports)} claim(s) as declared, {len(bad)} not, in {seconds:.1f}s"
    )
    payload.update(ok=not bad, seconds=round(seconds, 3), variants=[r.to_dict() for r in results])
    if json_out:
        write_json_atomic(json_out, payload)
    return 1 if bad else 0


def verify_command(
    target: str = typer.Argument(
        ...,
        help="A variant file (.py), a directory holding *_variant.py files, or a dotted module.",
    ),
    profile: str = typer.Option("ci", "--profile", help="Hypothesis profile: dev, ci or thorough."),
    json_out: str | None = typer.Option(
        None, "--json", help="Also write the reports to this JSON file."
    ),
    only: Annotated[
        list[str] | None, typer.Option("--only", help="Check only this claim (repeatable).")
    ] = None,
    max_examples: int | None = typer.Option(
        None, "--max-examples", help="Cases per claim (overrides the profile and the claims)."
    ),
) -> None:
    """Check every claim a user-defined variant declares; print a counterexample for each refuted one."""
    code = run_verify(
        target,
        profile=profile,
        json_out=json_out,
        only=only or None,
        max_examples=max_examples,
        echo=typer.echo,
        echo_err=lambda s: typer.echo(s, err=True),
    )
    raise typer.Exit(code)
