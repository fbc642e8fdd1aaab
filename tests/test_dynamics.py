"""The dynamic claim harness on synthetic snapshots: a converging run is judged stabilised, its
oscillating twin is not, a frozen run cannot be resolved, dominance and ‖T‖₂ are measured."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from moelora_core.errors import ConfigError, ShapeError
from moelora_core.lora import LoRA, LoRAConfig
from moelora_core.moelora import MoELoRA, MoELoRAConfig
from moelora_core.talklora import TalkLoRA, TalkLoRAConfig
from proofs_numeric.dynamics import Snapshot, measure_run, save_run, statement

DT = torch.float64


def _moelora() -> MoELoRA:
    cfg = MoELoRAConfig(in_features=6, out_features=4, num_experts=3, expert_rank=2)
    return MoELoRA(cfg, dtype=DT).randomize_(0)


def _router_run(a: MoELoRA, deltas: list[float]) -> list[Snapshot]:
    """Snapshots whose router is W* + delta_t · D (everything else fixed)."""
    gen = torch.Generator().manual_seed(1)
    D = torch.randn(a.router.logits.dense().shape, generator=gen, dtype=DT)  # type: ignore[union-attr]
    base = {k: v.clone() for k, v in a.state_dict().items()}
    key = next(k for k in base if "router" in k)
    return [(t, {**base, key: base[key] + d * D}) for t, d in enumerate(deltas)]


def _probes(n: int, k: int = 32) -> torch.Tensor:
    return torch.randn(k, n, generator=torch.Generator().manual_seed(2), dtype=DT)


def test_converging_run_is_stabilised() -> None:
    a = _moelora()
    run = measure_run(a, _router_run(a, [0.5**t for t in range(9)]), _probes(6))
    assert run.steps[0].change is None and len(run.steps) == 9
    changes = [s.change for s in run.steps[1:]]
    assert all(c is not None and c > 0 for c in changes)
    text = statement(run)
    assert "routing stabilised: mean change fell from" in text
    assert "did not" not in text


def test_oscillating_twin_is_not_stabilised() -> None:
    a = _moelora()
    run = measure_run(a, _router_run(a, [(-1.0) ** t for t in range(9)]), _probes(6))
    text = statement(run)
    assert "routing did not stabilise" in text
    assert "routing stabilised" not in text


def test_frozen_or_short_runs_cannot_be_resolved() -> None:
    a = _moelora()
    frozen = measure_run(a, _router_run(a, [0.0] * 5), _probes(6))
    assert "cannot resolve routing stability: every change" in statement(frozen)
    short = measure_run(a, _router_run(a, [0.0, 1.0]), _probes(6))
    assert "cannot resolve routing stability: 2 checkpoints" in statement(short)


def test_dominance_and_entropy() -> None:
    a = _moelora()
    probes = _probes(6).abs()  # every probe has a positive sum
    W = a.router.logits.dense()  # type: ignore[union-attr]
    key = next(k for k in a.state_dict() if "router" in k)
    base = {k: v.clone() for k, v in a.state_dict().items()}
    uniform = torch.zeros_like(W)
    dominant = torch.zeros_like(W)
    dominant[0] = 10.0  # expert 0's logit 10·Σx, the others 0: expert 0 wins every probe
    run = measure_run(a, [(0, {**base, key: uniform}), (10, {**base, key: dominant})], probes)
    first, last = run.steps
    assert math.isclose(first.entropy, 1.0) and math.isclose(first.max_load, 1 / 3)
    assert last.top_share == 1.0 and last.max_load > 0.99
    assert "expert dominance grew" in statement(run)


def test_talk_norm_over_steps() -> None:
    t = TalkLoRA(TalkLoRAConfig(in_features=5, out_features=3, rank=4, num_experts=2), dtype=DT)
    t.randomize_(3)
    base = {k: v.clone() for k, v in t.state_dict().items()}
    snaps: list[Snapshot] = []
    for step, c in ((0, 0.5), (5, 0.9), (9, 1.5)):
        T = c * torch.eye(2, dtype=DT)  # T.weight and talk.talk.weight are one parameter
        snaps.append((step, {**base, "T.weight": T, "talk.talk.weight": T}))
    run = measure_run(t, snaps, _probes(5))
    assert [s.talk_norm for s in run.steps] == pytest.approx([0.5, 0.9, 1.5])
    text = statement(run)
    assert "amplifies head perturbations (‖T‖₂ > 1) at 1 of 3 checkpoints, first at step 9" in text
    assert run.to_dict()["family"] == "talklora"


def test_bad_inputs() -> None:
    a = _moelora()
    snaps = _router_run(a, [0.0, 1.0, 2.0])
    with pytest.raises(ConfigError, match="routed Adapter"):
        measure_run(LoRA(LoRAConfig(in_features=6, out_features=4, rank=2)), snaps, _probes(6))
    with pytest.raises(ShapeError, match="probes"):
        measure_run(a, snaps, torch.zeros(6, dtype=DT))
    with pytest.raises(ConfigError, match="increasing"):
        measure_run(a, list(reversed(snaps)), _probes(6))
    with pytest.raises(ConfigError, match="len\\(snapshots\\)"):
        measure_run(a, [], _probes(6))
    run = measure_run(a, snaps, _probes(6))
    with pytest.raises(ConfigError, match="settle"):
        statement(run, settle=1.5)


def test_save_run_writes_measurements_and_statement(tmp_path: Path) -> None:
    a = _moelora()
    run = measure_run(a, _router_run(a, [0.5**t for t in range(5)]), _probes(6))
    text = save_run(str(tmp_path / "run.json"), run)
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["statement"] == text.splitlines()
    assert [s["step"] for s in saved["measurements"]["steps"]] == [0, 1, 2, 3, 4]
