"""The demo pipeline end to end on a tiny random BERT (the real run uses the packaged MiniLM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moelora_core.errors import ConfigError
from moelora_experiments.cli import app
from moelora_experiments.demo import DEMO_SPECS, DemoConfig, run_demo
from moelora_experiments.report import soundness


def small(out: Path, model: Path, **kw: object) -> DemoConfig:
    base: dict[str, object] = {
        "out": out, "model": str(model), "steps": 3, "batch_size": 8, "measure_texts": 12,
        "max_tokens": 24, "threads": 1, "progress": False, "plots": False,
    }  # fmt: skip
    base.update(kw)
    return DemoConfig(**base)  # type: ignore[arg-type]


def test_demo_end_to_end_then_skips_finished_archs(tmp_path: Path, tiny: Path) -> None:
    cfg = small(tmp_path / "run", tiny, plots=True)
    m = run_demo(cfg)
    assert list(m["archs"]) == list(DEMO_SPECS)
    files = {p.name for p in cfg.out.iterdir()}
    assert {"metrics.json", "report.md", "accuracy_vs_params.png", "bounds_per_layer.png"} <= files
    assert {"routing_load.png", "talk_norms.png", "losses.png"} <= files
    assert json.loads((cfg.out / "metrics.json").read_text())["archs"].keys() == m["archs"].keys()
    for arch, res in m["archs"].items():
        assert 0.0 <= res["accuracy"] <= 1.0 and len(res["train"]["losses"]) == 3
        t = res["trainable"]
        assert t["adapter_trainable"] == t["formula_total"]  # counted = closed form
        assert len(res["layers"]) == 4  # 2 layers x (query, value)
        for layer in res["layers"].values():
            assert layer["tokens"] > 0
            if arch == "lora":
                assert layer["bounds"] is None and layer["routing"] is None
                continue
            b = layer["bounds"]
            assert (
                0
                < b["lower"]
                <= b["upper_centred"]
                <= b["upper_effective"]
                <= b["upper_product"] * (1 + 1e-9)
            )
            assert abs(sum(layer["routing"]["load"]) - 1) < 1e-9
            assert max(v["max"] for v in layer["amplification"].values()) <= b["upper_centred"]
        assert soundness(res["layers"]) == []
    talk = next(iter(m["archs"]["talklora"]["layers"].values()))
    assert len(talk["bounds"]["talk"]["attenuation"]) == 4 and "amplification_identity_talk" in talk
    assert "| talklora |" in (cfg.out / "report.md").read_text()

    stamp = (cfg.out / "talklora" / "result.json").stat().st_mtime_ns
    again = run_demo(cfg)  # finished archs are skipped, their results reused
    assert all(r.get("cached") for r in again["archs"].values())
    assert (cfg.out / "talklora" / "result.json").stat().st_mtime_ns == stamp
    assert again["archs"]["comol"]["accuracy"] == m["archs"]["comol"]["accuracy"]


def test_force_retrains_and_the_seed_reproduces(tmp_path: Path, tiny: Path) -> None:
    a = run_demo(small(tmp_path / "a", tiny, archs=("talklora",)))
    b = run_demo(small(tmp_path / "a", tiny, archs=("talklora",), force=True))
    assert "cached" not in b["archs"]["talklora"]
    assert a["archs"]["talklora"]["train"]["losses"] == b["archs"]["talklora"]["train"]["losses"]
    c = run_demo(small(tmp_path / "c", tiny, archs=("talklora",), seed=1))
    assert c["archs"]["talklora"]["train"]["losses"] != a["archs"]["talklora"]["train"]["losses"]


def test_unknown_arch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="archs="):
        DemoConfig(out=tmp_path, archs=("lora", "gpt"))
    r = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--archs", "nope"])
    assert r.exit_code == 2 and "archs=" in r.output


def test_demo_command(tmp_path: Path, tiny: Path) -> None:
    out = tmp_path / "cli"
    args = [
        "demo",
        "--out",
        str(out),
        "--model",
        str(tiny),
        "--steps",
        "2",
        "--archs",
        "lora,comol",
        "--threads",
        "1",
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "comol" in r.output and "accuracy" in r.output
    m = json.loads((out / "metrics.json").read_text())
    assert list(m["archs"]) == ["lora", "comol"] and m["config"]["steps"] == 2
