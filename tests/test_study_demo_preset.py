"""`make demo` = `moelora study --preset demo`: the grid it builds and where it writes (no training)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from moelora_experiments.cli import app
from moelora_experiments.study import runner
from moelora_experiments.study.cli import default_out, main
from moelora_experiments.study.grid import PRESETS, arch_variants, preset
from moelora_experiments.study.runner import plan

ROOT = Path(__file__).resolve().parents[1]


def test_demo_preset_is_every_arch_five_seeds_one_task_one_budget() -> None:
    cfg = preset("demo")
    cells = plan(cfg, hidden=384, num_layers=6)  # the packaged MiniLM's shape
    adapters = [c for c in cells if c[1] != "head"]
    assert {(t, b) for t, b, *_ in adapters} == {("multi", "equal-rank")}
    assert sorted({c[2] for c in adapters}) == sorted(arch_variants())
    assert {c[3] for c in adapters} == {0, 1, 2, 3, 4}  # paired statistics need >= 5 seeds
    assert len(adapters) == len(arch_variants()) * 5
    assert [c[2] for c in cells if c[1] == "head"] == ["head-only"] * 5
    for _, _, arch, _, spec, params in adapters:
        assert spec is not None and spec.rank == cfg.rank and params > 0, arch
        assert spec.target_regex is not None and r"\.layer\.(4|5)\." in spec.target_regex
    assert len(cells) < len(plan(PRESETS["cpu"], hidden=384, num_layers=6))
    # the same training and measurement settings as the cpu preset: its cells are a subset of cpu's
    assert preset("demo", budgets=PRESETS["cpu"].budgets) == PRESETS["cpu"]


def test_make_demo_and_moelora_demo_run_the_demo_preset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[tuple[Any, Path]] = []

    def fake_run_study(cfg: Any, out: Path, **kw: Any) -> dict[str, Any]:
        calls.append((cfg, out))
        return {"seconds_this_call": 0.0}

    monkeypatch.setattr(runner, "run_study", fake_run_study)
    assert default_out("demo") == "runs/demo" and default_out("cpu") == "runs/study-cpu"
    assert main(["--preset", "demo"]) == 0
    assert calls[-1] == (PRESETS["demo"], Path("runs/demo"))
    r = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--steps", "7"])
    assert r.exit_code == 0, r.output
    assert calls[-1] == (preset("demo", steps=7), tmp_path)
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "\t$(BIN)/moelora study --preset demo\n" in makefile


def test_report_only_keeps_the_head_alone_cells(tiny: Path, tmp_path: Path) -> None:
    """`--report-only` rebuilds the same analysis as the run, the head-alone comparisons included."""
    cfg = preset("tiny", model=str(tiny), archs=("lora", "talklora"), threads=1)
    ran = runner.run_study(cfg, tmp_path, progress=False)
    rebuilt = runner.rebuild_report(cfg, tmp_path)
    assert [c["arch"] for c in rebuilt["cells"]] == [c["arch"] for c in ran["cells"]]
    assert sum(c["arch"] == "head-only" for c in rebuilt["cells"]) == len(cfg.seeds)
    assert rebuilt["analysis"]["comparisons"] == ran["analysis"]["comparisons"]
    assert "head alone" in (tmp_path / "report.md").read_text(encoding="utf-8")
