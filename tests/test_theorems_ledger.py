"""The ledger in docs/theory.md names real claims: every test it names exists in the catalogue (or is a
file), every status is one of the four, and every catalogue claim drawn from a paper appears in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from proofs_numeric.catalogue import all_claims

ROOT = Path(__file__).resolve().parents[1]
STATUSES = {"holds", "holds under a condition", "refuted", "open"}


def _ledger_rows() -> list[list[str]]:
    text = (ROOT / "docs" / "theory.md").read_text(encoding="utf-8")
    ledger = text[text.index("## Ledger: every claim of both papers") :]
    rows = []
    for line in ledger.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) >= 4 and not set(cells[0]) <= {"-"}:
            rows.append(cells)
    return rows


@pytest.mark.theorems
def test_ledger_names_registered_claims() -> None:
    names = {c.name for c in all_claims()}
    rows = [r for r in _ledger_rows() if r[0] not in ("#", "claim")]
    assert len(rows) >= 25
    for row in rows:
        status, test = (row[3], row[4]) if len(row) == 6 else (row[2], row[3])
        assert status in STATUSES, f"row {row[0]}: status {status!r}"
        for token in re.findall(r"`([^`]+)`", test):
            if "/" in token:
                assert (ROOT / token).exists(), f"row {row[0]}: no file {token}"
            else:
                assert token in names, f"row {row[0]}: no claim named {token}"
        if status != "open":  # a catalogue claim, or a test file of claims under `-m theorems`
            files = [t for t in re.findall(r"`([^`]+)`", test) if t.startswith("tests/")]
            theorems = [f for f in files if "pytest.mark.theorems" in (ROOT / f).read_text("utf-8")]
            assert re.search(r"`[a-z_0-9]+`", test) or theorems, (
                f"row {row[0]}: a decided row names a claim or a test file of theorems"
            )


@pytest.mark.theorems
def test_every_paper_claim_is_in_the_ledger() -> None:
    text = "\n".join(" | ".join(r) for r in _ledger_rows())
    for c in all_claims():
        paper = c.spec.startswith(("TalkLoRA abstract", "CoMoL abstract", "CoMoL paper"))
        if paper and c.twin_of is None:  # a twin carries its claim's spec; the ledger lists claims
            assert f"`{c.name}`" in text, f"{c.name} ({c.spec}) is missing from the ledger"
    for label in [f"T{i}" for i in range(1, 16)] + [f"C{i}" for i in range(1, 13)]:
        assert f"{label} | " in text, f"ledger row {label} missing"
