"""Atomic JSON output: a failed write leaves the previous file and no temporary file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proofs_numeric.jsonio import write_json_atomic


def test_writes_and_replaces(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "out.json"
    write_json_atomic(p, {"a": 1, "path": tmp_path})
    assert json.loads(p.read_text())["a"] == 1  # non-JSON values written with str
    write_json_atomic(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    assert [q.name for q in p.parent.iterdir()] == ["out.json"]


def test_failed_write_keeps_old_file(tmp_path: Path) -> None:
    p = tmp_path / "out.json"
    write_json_atomic(p, {"a": 1})
    with pytest.raises(ValueError, match="Circular reference"):
        cyclic: dict[str, object] = {}
        cyclic["self"] = cyclic
        write_json_atomic(p, cyclic)
    assert json.loads(p.read_text()) == {"a": 1}
    assert [q.name for q in tmp_path.iterdir()] == ["out.json"]


def test_result_files_get_the_usual_permissions(tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
