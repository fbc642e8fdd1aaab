"""`moelora study` end to end on a tiny BERT: cells, report, plots, and resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("scipy")

from moelora_core.errors import ConfigError
from moelora_experiments.study.grid import budget_specs, preset
from moelora_experiments.study.runner import cell_path, run_study

ROOT = Path(__file__).resolve().parents[1]


def test_equal_params_budget_is_closer_than_equal_rank() -> None:
    archs = ("lora", "moelora-input", "talklora", "comol")
    rank = budget_specs("equal-rank", 64, 8, archs)
    par = budget_specs("equal-params", 64, 8, archs)
    assert {s.rank for s, _ in rank.values()} == {8}
    spread = lambda b: max(p for _, p in b.values()) - min(p for _, p in b.values())  # noqa: E731
    assert spread(par) < spread(rank)
    assert par["lora"][0].rank > 8  # LoRA is given more rank to reach the largest count


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="archs"):
        preset("tiny", archs=("nope",))
    with pytest.raises(ConfigError, match="seeds"):
        preset("tiny", seeds=(0,))
    with pytest.raises(ConfigError, match="preset"):
        preset("huge")


def test_multi_task_is_balanced_and_prefixed() -> None:
    pytest.importorskip("nrclex")
    from moelora_experiments.study.data import multi_task

    t = multi_task(100)
    assert t.describe()["positive_share"] == pytest.approx(0.5)
    assert {x.split(":")[0] for x, _ in t.train} == {"sentiment", "fear", "anger", "joy", "trust"}
    assert not {x for x, _ in t.train} & {x for x, _ in t.test}


def test_killed_study_resumes_without_recomputing(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        "--preset",
        "tiny",
        "--model",
        str(tiny),
        "--out",
        str(out),
        "--threads",
        "1",
        "--archs",
        "lora,talklora",
        "--seeds",
        "0,1,2",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = (
        "import sys; from moelora_experiments.study.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list(out.glob("cells/**/*.json")) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("cells/**/*.json")}
    assert 1 <= len(done) < 9, "the kill must land after the first and before the last cell"
    cfg = preset("tiny", model=str(tiny), archs=("lora", "talklora"), seeds=(0, 1, 2), threads=1)
    m = run_study(cfg, out, progress=False)
    assert m["cells_computed_this_call"] == 9 - len(done)  # 3 head-only + 6
    for p, (mtime, blob) in done.items():
        assert (p.stat().st_mtime_ns, p.read_bytes()) == (mtime, blob)
    again = run_study(cfg, out, progress=False)
    assert again["cells_computed_this_call"] == 0
    # the outputs: every cell, the analysis, report and plots
    cell = json.loads(cell_path(out, "vader", "equal-rank", "talklora", 0).read_text())
    assert cell["trace"][0]["step"] == 0 and cell["trace"][-1]["step"] == cfg.steps
    assert cell["summary"]["amp_identity_talk"] is not None and cell["talk_points"]
    comps = m["analysis"]["comparisons"]
    assert comps and all(
        c["verdict"] in ("supports", "contradicts", "cannot resolve") for c in comps
    )
    report = (out / "report.md").read_text()
    assert "talk-mitigates-amplification" in report and "Holm" in report
    for png in ("forest.png", "amp_vs_talk_norm.png", "routing_dynamics.png"):
        assert (out / png).stat().st_size > 1000


def test_cli_errors_name_the_parameter(tmp_path: Path) -> None:
    from moelora_experiments.study.cli import main

    assert main(["--preset", "tiny", "--model", str(tmp_path / "none")]) == 2
    assert main(["--preset", "tiny", "--shard", "3/2"]) == 2
    assert main(["--preset", "tiny", "--model", str(tmp_path), "--data", "/nope.json"]) == 2
    assert main(["--preset", "tiny", "--model", str(tmp_path)]) == 2  # a directory, no model
