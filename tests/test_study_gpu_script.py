"""experiments/gpu/run.sh on the CPU with the tiny preset: every stage runs, one folder of <= 8 files,
and its metrics.json alone can be re-analysed elsewhere (`--report-only`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("scipy")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~40 s on a quiet 2-core machine (4.5 min under a load average of 9)
def test_gpu_script_on_cpu(tiny: Path, tmp_path: Path) -> None:
    from moelora_experiments.study.data import export_tasks

    assets = tmp_path / "assets"
    shutil.copytree(tiny, assets / "minilm")
    export_tasks(assets / "tasks.json", ("vader",), 40)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    r = subprocess.run(
        [
            "bash",
            str(ROOT / "experiments/gpu/run.sh"),
            "--device",
            "cpu",
            "--preset",
            "tiny",
            "--assets",
            str(assets),
            "--out",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(
        [
            "report.md",
            "metrics.json",
            "forest.png",
            "amp_vs_talk_norm.png",
            "routing_dynamics.png",
            "layers.json",
            "llm_step.json",
            "run.log",
        ]
    )
    log = (out / "run.log").read_text()
    assert "failed" not in log and "no report.md" not in log, log[-3000:]
    llm = json.loads((out / "llm_step.json").read_text())
    assert {r["variant"] for r in llm["rows"]} >= {"frozen", "lora", "talklora", "comol"}
    assert json.loads(
        (out / "layers.json").read_text()
    )  # both dtypes (old) or one --gpu/--quick run
    # the metrics alone (no cells/ folder) are enough to rebuild the analysis elsewhere
    from moelora_experiments.study.cli import main

    assert (
        main(
            [
                "--preset",
                "tiny",
                "--model",
                str(assets / "minilm"),
                "--out",
                str(out),
                "--report-only",
            ]
        )
        == 0
    )
    assert "Holm" in (out / "report.md").read_text()
