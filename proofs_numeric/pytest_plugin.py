"""pytest plugin (entry point `moelora_verify`): user-defined variants' claims collected as `theorems`
tests, checked under the same profile and printed with the same report as `moelora verify`.

* Profile of variant claims: `--moelora-profile NAME`, else $HYPOTHESIS_PROFILE, else `ci`. It applies
  to variant claims (items and the `verify_variant` fixture) only; `--moelora-profile-all` also loads
  it for every other Hypothesis test of the run. Claim checks never use Hypothesis' deadline.
* Variant files are collected as one test item per declared claim, marked `theorems`: files named
  `moelora_variant_*.py` or `*_variant.py` that pytest visits (in `testpaths` or given on the command
  line) and that define `VARIANT`/`VARIANTS`, plus every path given with `--moelora-variant PATH`
  (repeatable) or listed in the ini option `moelora_variants`. A file that cannot be loaded is a
  collection error whose message names the file and the problem.
* A claim not as declared fails its item with the CLI's report (a refutation's counterexample and
  snippet; an error's one-line summary, then its traceback).
* The fixture `verify_variant(target, max_examples=None, assert_ok=True)` checks a variant (a path, a
  module name or a `Variant`) inside an ordinary test and returns its `VariantReport`s.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .checking import Claim, ClaimReport
from .profiles import DEFAULT_PROFILE, PROFILES, load_profile, using_profile

_CONFIGURED = pytest.StashKey[
    set[str]
]()  # resolved paths named by --moelora-variant / moelora_variants
_PROFILE = pytest.StashKey[str]()  # the profile variant claims run under
THEOREMS_HELP = "theorems: computational checks of the papers' claims (fast; run with -m theorems)"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("moelora-verify")
    group.addoption(
        "--moelora-profile",
        default=None,
        choices=sorted(PROFILES),
        help="Hypothesis profile for variant claims: dev, ci or thorough "
        "(default: $HYPOTHESIS_PROFILE, else ci).",
    )
    group.addoption(
        "--moelora-profile-all",
        action="store_true",
        default=False,
        help="Also load the --moelora-profile for every other Hypothesis test of the run.",
    )
    group.addoption(
        "--moelora-variant",
        action="append",
        default=[],
        metavar="PATH",
        help="A variant file (or directory of *_variant.py files) whose claims to collect (repeatable).",
    )
    parser.addini(
        "moelora_variants",
        type="paths",
        default=[],
        help="Variant files or directories whose claims are collected as theorems tests.",
    )


def variant_profile(config: pytest.Config) -> str:
    """The profile variant claims run under: --moelora-profile, $HYPOTHESIS_PROFILE, or ci."""
    chosen = config.getoption("--moelora-profile", default=None)
    chosen = chosen or os.environ.get("HYPOTHESIS_PROFILE") or DEFAULT_PROFILE
    if chosen not in PROFILES:
        raise pytest.UsageError(
            f"HYPOTHESIS_PROFILE={chosen!r}: expected one of {sorted(PROFILES)} for variant claims"
        )
    return str(chosen)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_PROFILE] = variant_profile(config)
    if config.getoption("--moelora-profile-all", default=False):
        load_profile(config.stash[_PROFILE])
    config.addinivalue_line("markers", THEOREMS_HELP)  # user repositories with --strict-markers
    given: list[str] = config.getoption("--moelora-variant", default=[]) or []
    paths = [Path(p).resolve() for p in given]
    if config.args_source != pytest.Config.ArgsSource.ARGS:  # ini variants join a plain `pytest`
        paths += [Path(p).resolve() for p in config.getini("moelora_variants") or []]
    for p in paths:
        if not p.exists():
            raise pytest.UsageError(
                f"--moelora-variant / moelora_variants: {p}: no such file or directory"
            )
    config.stash[_CONFIGURED] = {str(p) for p in paths}
    config.args.extend(str(p) for p in paths if str(p) not in config.args)


def _defines_variant(path: Path) -> bool:
    try:
        return "VARIANT" in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """A configured variant file, or a `*_variant.py`/`moelora_variant_*.py` file defining VARIANT(S)."""
    from .variants import is_variant_file

    if file_path.suffix != ".py":
        return None
    if str(file_path.resolve()) in parent.config.stash.get(_CONFIGURED, set()):
        return VariantFile.from_parent(parent, path=file_path)
    if is_variant_file(file_path) and _defines_variant(file_path):
        return VariantFile.from_parent(parent, path=file_path)
    return None


class VariantClaimFailed(Exception):
    """A variant's claim did not come out as declared."""

    def __init__(self, report: ClaimReport) -> None:
        super().__init__(report.name)
        self.report = report


class VariantFile(pytest.File):
    """A variant file: one `VariantItem` per declared claim."""

    def collect(self) -> Iterator[pytest.Item]:
        from .variants import VariantError, load_variants

        try:
            variants = load_variants(self.path)
            for v in variants:
                v.preflight()
        except VariantError as e:
            raise self.CollectError(str(e)) from None
        for v in variants:
            for claim in v.claims():
                yield VariantItem.from_parent(self, name=claim.name, claim=claim, variant=v)


def failure_text(rep: ClaimReport) -> str:
    """The head line of a failed item, then the CLI's report (with the traceback of an error)."""
    from .variants import format_report

    if rep.verdict == "error":
        head = f"{rep.name}: error: {rep.raised}"
    elif rep.expect == "refuted":
        head = f"{rep.name}: declared to be refuted, but held on {rep.cases} cases"
    else:
        head = f"{rep.name}: {rep.statement}"
    return "\n".join([head, *format_report(rep, traceback=True)])


class VariantItem(pytest.Item):
    """One claim of a variant, checked by `check_claim` under the variant profile."""

    def __init__(self, *, claim: Claim[Any], variant: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.claim, self.variant = claim, variant
        self.add_marker(pytest.mark.theorems)

    def runtest(self) -> None:
        from .variants import check_variant_claim

        with using_profile(self.config.stash[_PROFILE]):
            report = check_variant_claim(self.variant, self.claim)
        self.user_properties.append(("claim_report", report.to_dict()))
        if not report.as_expected:
            raise VariantClaimFailed(report)

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str:
        if isinstance(excinfo.value, VariantClaimFailed):
            return failure_text(excinfo.value.report)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"variant claim {self.name}"


@pytest.fixture
def verify_variant(request: pytest.FixtureRequest) -> Callable[..., list[Any]]:
    """`verify_variant(target, max_examples=None, assert_ok=True)` -> list of `VariantReport`.

    `target`: a variant file, a directory, a dotted module name, or a `Variant`. With `assert_ok`, the
    test fails (with every refuted claim's counterexample, every error's summary) unless every claim
    came out as declared. Runs under the variant profile."""
    from .variants import Variant, load_variants, run_variant

    profile = request.config.stash.get(_PROFILE, DEFAULT_PROFILE)

    def run(target: Any, max_examples: int | None = None, assert_ok: bool = True) -> list[Any]:
        variants = [target] if isinstance(target, Variant) else load_variants(target)
        with using_profile(profile):
            results = [run_variant(v, max_examples=max_examples) for v in variants]
        if assert_ok:
            bad = [r for res in results for r in res.reports if not r.as_expected]
            if bad:
                text = "\n".join(failure_text(r) for r in bad)
                pytest.fail("claims not as declared:\n" + text, pytrace=False)
        return results

    return run
