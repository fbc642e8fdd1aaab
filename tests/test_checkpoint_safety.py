"""Checkpoint and injection safety: weights-only loading, durable writes, damaged files, stale temporary
directories, transactional injection and adapter loading."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from test_train import N_EXAMPLES, cfg, loss_fn, make_batch, tiny_model

from moelora_experiments import durable
from moelora_experiments import inject as inject_mod
from moelora_experiments.checkpoint import CheckpointError, load_adapters, save_adapters
from moelora_experiments.inject import AdapterSpec, adapted_layers, inject_adapters
from moelora_experiments.train import latest_checkpoint, train

MARKER = "planted-pickle-ran"


class Planted:
    """Unpickling this runs `open(path, 'w')`: a weights-only load must refuse it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def trained(tmp_path: Path, steps: int = 3) -> Path:
    train(tiny_model(), N_EXAMPLES, make_batch, loss_fn, cfg(steps=steps), tmp_path)
    last = latest_checkpoint(tmp_path)
    assert last is not None
    return last


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_planted_pickle_is_not_run(tmp_path: Path) -> None:
    ckpt = trained(tmp_path / "run")
    target = tmp_path / MARKER
    with open(ckpt / "scheduler.pt", "wb") as f:
        pickle.dump(Planted(str(target)), f)
    with pytest.raises(CheckpointError, match=r"scheduler\.pt"):
        train(tiny_model(), N_EXAMPLES, make_batch, loss_fn, cfg(steps=5), tmp_path / "run")
    assert not target.exists()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("trainable.safetensors", b"\x00garbage"),
        ("state.json", b"{not json"),
        ("optimizer.pt", b"PK\x03\x04 truncated"),
        ("rng-rank0.pt", b""),
    ],
)
def test_damaged_checkpoint_is_a_checkpoint_error(
    tmp_path: Path, name: str, content: bytes
) -> None:
    ckpt = trained(tmp_path)
    (ckpt / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        train(tiny_model(), N_EXAMPLES, make_batch, loss_fn, cfg(steps=5), tmp_path)


def test_stale_temporary_directory_is_removed_on_resume(tmp_path: Path) -> None:
    trained(tmp_path)
    stale = tmp_path / "checkpoints" / ".tmp-step-0000009"
    stale.mkdir()
    (stale / "half.pt").write_bytes(b"x")
    r = train(tiny_model(), N_EXAMPLES, make_batch, loss_fn, cfg(steps=4), tmp_path)
    assert r.resumed_from == 3 and not stale.exists()


def test_checkpoint_files_and_directories_are_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    ckpt = trained(tmp_path, steps=1)
    names = {Path(p).name for p in synced}
    assert {"trainable.safetensors", "optimizer.pt", "scheduler.pt", "state.json"} <= names
    assert str(ckpt.parent) in synced  # the rename into place is durable


def test_failed_injection_leaves_the_model_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    from tiny_models import tiny_bert

    model = tiny_bert(vocab=50, intermediate=64).train()
    before = {n: type(m) for n, m in model.named_modules()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    calls = {"n": 0}
    real = inject_mod.build_adapter

    def flaky(*args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("out of memory")
        return real(*args, **kw)

    monkeypatch.setattr(inject_mod, "build_adapter", flaky)
    with pytest.raises(RuntimeError, match="out of memory"):
        inject_adapters(model, AdapterSpec(arch="talklora", targets=("query", "value"), rank=8))
    assert {n: type(m) for n, m in model.named_modules()} == before
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert not adapted_layers(model)


def test_damaged_adapter_file_leaves_the_model_as_before(tmp_path: Path) -> None:
    model = tiny_model("comol")
    save_adapters(
        model.encoder, tmp_path, AdapterSpec(arch="comol", targets=("query", "value"), rank=8)
    )
    (tmp_path / "adapter.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    fresh = tiny_model("comol").encoder
    from moelora_experiments.inject import remove_adapters

    remove_adapters(fresh)
    types = {n: type(m) for n, m in fresh.named_modules()}
    with pytest.raises(CheckpointError, match=r"adapter\.safetensors"):
        load_adapters(fresh, tmp_path)
    assert {n: type(m) for n, m in fresh.named_modules()} == types


def test_safe_load_allows_numpy_rng_state(tmp_path: Path) -> None:
    import numpy as np

    torch.save({"numpy": np.random.get_state()}, tmp_path / "rng.pt")
    state = durable.safe_torch_load(tmp_path / "rng.pt")
    assert state["numpy"][0] == "MT19937"
    with pytest.raises(CheckpointError, match="not found"):
        durable.safe_torch_load(tmp_path / "missing.pt")


def test_a_finished_run_can_be_extended_not_shortened(tmp_path: Path) -> None:
    from moelora_core.errors import ConfigError

    trained(tmp_path, steps=3)
    r = train(tiny_model(), N_EXAMPLES, make_batch, loss_fn, cfg(steps=5), tmp_path)
    assert r.resumed_from == 3 and r.steps == 5 and len(r.losses) == 5
    with pytest.raises(ConfigError, match="extended, not shortened"):
        train(tiny_model(), N_EXAMPLES, make_batch, loss_fn, cfg(steps=4), tmp_path)
