"""`moelora verify PATH_OR_MODULE [--profile ci|thorough|dev] [--json OUT]`: check a user-defined variant.

Loads the variants of a .py file, of the `*_variant.py` / `moelora_variant_*.py` files of a directory,
or of a dotted module name (see `proofs_numeric.variants`), checks every declared claim and prints one
line per claim (holds / refuted / error, cases tried, max error, seconds) and, for a refuted claim,
the phase that found it, the shrunk counterexample and a snippet that rebuilds it; for an error, a
one-line summary (exception, file:line) first, then the instance (`--traceback` adds the traceback).

Exit codes: 0 every claim came out as declared (claims declared `expect="refuted"` count when refuted);
1 some claim did not (no error); 2 the variant could not be loaded or built (the message names the
file and what is wrong); 3 some claim's check raised in the variant's code or declaration (verdict
error: never "as declared", whatever `expect` says).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from traceback import format_exception
from typing import Annotated, Any

import typer

from moelora_core.errors import MoELoRAError
from proofs_numeric.checking import summarise
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
    traceback: bool = False,
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
                    on_report=lambda r: echo("\n".join(format_report(r, traceback))),
                )
            )
    except Exception as e:  # a MoELoRAError is already one line; anything else gets one first
        line = str(e) if isinstance(e, MoELoRAError) else f"unexpected {summarise(e)}"
        echo_err(f"error: {line}")
        if not isinstance(e, MoELoRAError):
            echo_err("".join(format_exception(e)).rstrip())
        payload["error"] = line
        if json_out:
            write_json_atomic(json_out, payload)
        return 2
    return _summary(results, payload, start, json_out, echo)


def _summary(
    results: list[VariantReport],
    payload: dict[str, Any],
    start: float,
    json_out: str | None,
    echo: Callable[[str], object],
) -> int:
    """The closing line, the JSON (if asked for) and the exit code of checked variants."""
    reports = [r for res in results for r in res.reports]
    bad = [r for r in reports if not r.as_expected]
    errors = [r for r in reports if r.verdict == "error"]
    seconds = time.perf_counter() - start
    echo(
        f"{len(reports) - len(bad)} of {len(reports)} claim(s) as declared, {len(bad)} not "
        f"({len(errors)} error), in {seconds:.1f}s"
    )
    payload.update(
        ok=not bad,
        errors=len(errors),
        seconds=round(seconds, 3),
        variants=[r.to_dict() for r in results],
    )
    if json_out:
        write_json_atomic(json_out, payload)
    return 3 if errors else 1 if bad else 0


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
    traceback: bool = typer.Option(
        False, "--traceback", help="Print the traceback of each error after its summary."
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
        traceback=traceback,
    )
    raise typer.Exit(code)
