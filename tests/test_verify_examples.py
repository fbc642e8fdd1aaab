"""The worked examples of docs/variants.md: every claim's exact verdict, through `moelora verify` (ci
profile, exit code) and through the pytest plugin (item outcomes), and the rare-weights claim refuted
by the adversarial phase only."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from moelora_experiments.cli import app
from proofs_numeric.checking import check_claim
from proofs_numeric.variants import load_variant

pytest_plugins = ["pytester"]

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
# file -> (exit code of `moelora verify`, {claim: verdict}, plugin outcomes)
VERDICTS: dict[str, tuple[int, dict[str, str]]] = {
    "rare_weights_variant.py": (1, {
        "rare_weights.merged_energy_cauchy_schwarz": "holds",
        "rare_weights.experts_interfere_little": "refuted",
    }),
    "regime_variant.py": (0, {
        "core_lora.param_formula": "holds",
        "core_lora.mac_formula": "holds",
        "core_lora.params_theta_assuming_r_le_n": "holds",
        "core_lora.params_theta": "refuted",
        "core_lora.params_at_most_twice_lora": "holds",
        "core_lora.params_at_most_twice_lora_always": "refuted",
        "core_lora.energy_lipschitz_on_ball": "holds",
        "core_lora.energy_lipschitz_everywhere": "refuted",
    }),
    "raising_variant.py": (3, {
        "raising.param_formula": "holds",
        "raising.router_bound_over_e_minus_1": "error",
        "raising.params_with_undeclared_symbol": "error",
    }),
}  # fmt: skip
LINE = re.compile(r"^(ok |BAD|ERR) (\S+)\s+(holds|refuted|error)\b")
runner = CliRunner()


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_cli_verdicts(name: str) -> None:
    code, verdicts = VERDICTS[name]
    result = runner.invoke(app, ["verify", str(EXAMPLES / name)])
    assert result.exit_code == code, result.stdout + result.stderr
    found = {m[2]: m[3] for ln in result.stdout.splitlines() if (m := LINE.match(ln))}
    assert found == verdicts, result.stdout
    if code == 3:  # an error prints its one-line summary, with the user's file and line
        assert "error: ZeroDivisionError: float division by zero (" in result.stdout
        assert f"{name}:" in result.stdout and "Traceback" not in result.stdout


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_plugin_verdicts(name: str, pytester: pytest.Pytester) -> None:
    _, verdicts = VERDICTS[name]
    path = EXAMPLES / name
    result = pytester.runpytest("--moelora-variant", str(path), "-m", "theorems", "-rA")
    passed = [c for c, v in verdicts.items() if _as_declared(path, c, v)]
    result.assert_outcomes(passed=len(passed), failed=len(verdicts) - len(passed))
    for claim in verdicts:
        state = "PASSED" if claim in passed else "FAILED"
        result.stdout.fnmatch_lines([f"{state} *{name}::{claim}*"])
    if "error" in verdicts.values():  # the summary line comes before the traceback
        out = result.stdout.str()
        assert out.index("error: ZeroDivisionError") < out.index("Traceback")


def _as_declared(path: Path, claim: str, verdict: str) -> bool:
    decl = load_variant(path).declared()[claim]
    return verdict != "error" and (verdict == "holds") == (decl.expect == "holds")


def test_rare_weights_claim_is_refuted_by_the_search_phase_only() -> None:
    v = load_variant(EXAMPLES / "rare_weights_variant.py")
    (claim,) = [c for c in v.claims() if c.name.endswith("experts_interfere_little")]
    report = check_claim(claim)
    assert report.verdict == "refuted" and report.phase == "search"
    assert 0 < report.search_cases <= 30 and report.cases == 200 + report.search_cases
    assert "num_experts=3" in (report.counterexample or "")
    random_only: Any = dataclasses.replace(claim, search=None)
    assert check_claim(random_only).holds  # the ci profile's 200 random cases miss it
