"""`python -m proofs_numeric` prints one line per claim and exits 0 iff every claim came out as expected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import settings

from proofs_numeric.__main__ import main


def test_summary_lines_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = settings.get_current_profile_name()
    out = tmp_path / "claims.json"
    code = main(
        [
            "--profile",
            "dev",
            "--only",
            "comol_router_theta",
            "comol_router_theta__wrong_class",
            "--json",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert "ok  comol_router_theta " in text and "holds" in text
    assert "refuted  (expected refuted)" in text and "counterexample" in text
    data = json.loads(out.read_text())
    assert [r["name"] for r in data["reports"]] == [
        "comol_router_theta",
        "comol_router_theta__wrong_class",
    ]
    assert [r["verdict"] for r in data["reports"]] == ["holds", "refuted"]
    assert settings.get_current_profile_name() == before  # the profile does not leak


def test_unknown_claim_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--only", "no_such_claim"]) == 2
    assert "unknown claim(s) ['no_such_claim']" in capsys.readouterr().err
