"""The benchmarks' CPU path runs end to end on tiny sizes (the `--gpu` path is the same code on CUDA)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(autouse=True)
def bench_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))


def test_layers_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import layers

    out = tmp_path / "layers.json"
    layers.main(["--quick", "--device", "cpu", "--min-run-time", "0.001", "--json", str(out)])
    text = capsys.readouterr().out
    assert "× PEFT LoRA" in text and "exponent" in text
    run = json.loads(out.read_text())["runs"][0]
    keys = [r["key"] for r in run["main"]]
    assert keys[0] == "LoRA" and "MoELoRA top-2 sparse" in keys and len(keys) == len(layers.LAYERS)
    lora = run["main"][0]
    assert lora["over_floor"] == pytest.approx(1.0) and lora["mac_ratio"] == 1.0
    for r in run["main"]:
        assert r["delta_s"] > 0 and r["memory"]["saved_bytes"] > 0 and r["vs_peft"] > 0
    assert {r["shape"]["E"] for r in run["experts"]} == {2, 4}


def test_loglog_slope_recovers_exponents() -> None:
    from measure import loglog_slope

    xs = [1.0, 2.0, 4.0, 8.0]
    assert loglog_slope(xs, [3 * x**1.5 for x in xs]) == pytest.approx(1.5)
    assert loglog_slope(xs, [2.0] * 4) == pytest.approx(0.0)


def test_sparse_crossover_quick(capsys: pytest.CaptureFixture[str]) -> None:
    import sparse_crossover

    sparse_crossover.main(["--quick"])
    text = capsys.readouterr().out
    assert ("| MoELoRA input |" in text and "SPARSE_MAX_FRACTION" in text) or "not faster" in text
    assert sys.modules["sparse_crossover"].K == 2


def test_sparse_kernels_quick(capsys: pytest.CaptureFixture[str]) -> None:
    """Every down-projection variant agrees with the dense layer (checked inside) and is timed."""
    import sparse_kernels

    sparse_kernels.main(["--quick"])
    text = capsys.readouterr().out
    assert "| 8 | 4 |" in text and "route-and-dot" in text and "floor" in text
