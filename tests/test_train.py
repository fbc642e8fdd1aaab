"""The training loop: exact resume after a kill, SIGTERM handling, determinism, two-process DDP agreement."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from moelora_core.errors import ConfigError
from moelora_experiments.inject import AdapterSpec, inject_adapters
from moelora_experiments.tasks import MeanPoolClassifier
from moelora_experiments.train import (
    TrainConfig,
    TrainingInterrupted,
    checkpoints,
    latest_checkpoint,
    stream_indices,
    train,
)

N_EXAMPLES = 48


def tiny_model(arch: str = "talklora", seed: int = 0) -> nn.Module:
    """A 2-layer BERT of width 32 with adapters on query/value and a linear head; dropout on."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
    )
    model = MeanPoolClassifier(BertModel(cfg), 32)
    inject_adapters(model, AdapterSpec(arch=arch, targets=("query", "value"), rank=8, experts=4))
    model.head.requires_grad_(True)
    return model


def make_batch(indices: list[int]) -> dict[str, torch.Tensor]:
    """Example i: 6 token ids drawn from a generator seeded by i; label = parity of the first id."""
    ids = torch.stack(
        [torch.randint(1, 50, (6,), generator=torch.Generator().manual_seed(i)) for i in indices]
    )
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids[:, 0] % 2}


def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(batch["input_ids"], batch["attention_mask"])
    return nn.functional.cross_entropy(logits, batch["labels"])


def cfg(**kw: object) -> TrainConfig:
    base: dict[str, object] = {
        "steps": 8,
        "batch_size": 8,
        "lr": 1e-2,
        "checkpoint_every": 3,
        "keep_checkpoints": 2,
    }
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def trained_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class Kill(Exception):
    pass


def test_stream_covers_each_epoch_once_and_depends_on_seed() -> None:
    s = stream_indices(0, 3 * 10, 10, seed=1)
    for e in range(3):
        assert sorted(s[10 * e : 10 * e + 10]) == list(range(10))
    assert s[:10] != s[10:20]  # a new permutation each epoch
    assert stream_indices(5, 7, 10, seed=1) == s[5:12]  # positions, not calls, decide the order
    assert stream_indices(0, 10, 10, seed=2) != s[:10]


def killed_after_5(config: TrainConfig, out: Path) -> None:
    """Train a fresh tiny model into `out` and kill it hard after step 5 (checkpoint_every=3)."""

    def die_at_5(step: int, loss: float) -> None:
        if step == 5:
            raise Kill

    with pytest.raises(Kill):
        train(tiny_model(), N_EXAMPLES, make_batch, loss_fn, config, out, on_step=die_at_5)


def test_resume_after_kill_is_bit_identical(tmp_path: Path) -> None:
    straight = tiny_model()
    r = train(straight, N_EXAMPLES, make_batch, loss_fn, cfg(), tmp_path / "straight")
    assert r.steps == 8 and len(r.losses) == 8
    reference = trained_weights(straight)

    killed_after_5(cfg(), tmp_path / "killed")  # steps 4 and 5 were never checkpointed
    assert [p.name for p in checkpoints(tmp_path / "killed")] == ["step-0000003"]
    resumed = tiny_model()
    r2 = train(resumed, N_EXAMPLES, make_batch, loss_fn, cfg(), tmp_path / "killed")
    assert r2.resumed_from == 3 and r2.steps == 8
    assert r2.losses == r.losses  # the loss history is restored and continued identically
    assert_identical(trained_weights(resumed), reference)
    # the final checkpoint holds the same weights, and only the newest `keep_checkpoints` remain
    last = latest_checkpoint(tmp_path / "killed")
    assert last is not None
    saved = load_file(str(last / "trainable.safetensors"))
    assert_identical(saved, {k: v.cpu() for k, v in reference.items()})
    assert [p.name for p in checkpoints(tmp_path / "killed")] == ["step-0000006", "step-0000008"]


def test_sigterm_checkpoints_the_completed_step(tmp_path: Path) -> None:
    def term_at_4(step: int, loss: float) -> None:
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted) as info:
        train(tiny_model(), N_EXAMPLES, make_batch, loss_fn, cfg(), tmp_path, on_step=term_at_4)
    assert info.value.step == 4 and info.value.checkpoint.name == "step-0000004"
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))  # no half-written directory
    resumed = tiny_model()
    assert train(resumed, N_EXAMPLES, make_batch, loss_fn, cfg(), tmp_path).resumed_from == 4
    straight = tiny_model()
    train(straight, N_EXAMPLES, make_batch, loss_fn, cfg(), tmp_path / "straight")
    assert_identical(trained_weights(resumed), trained_weights(straight))


def test_seed_determines_the_result(tmp_path: Path) -> None:
    a, b, c = tiny_model(), tiny_model(), tiny_model()
    train(a, N_EXAMPLES, make_batch, loss_fn, cfg(steps=4), tmp_path / "a")
    train(b, N_EXAMPLES, make_batch, loss_fn, cfg(steps=4), tmp_path / "b")
    train(c, N_EXAMPLES, make_batch, loss_fn, cfg(steps=4, seed=1), tmp_path / "c")
    wa, wb, wc = trained_weights(a), trained_weights(b), trained_weights(c)
    assert_identical(wa, wb)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)  # another seed, another data order


def test_training_lowers_the_loss(tmp_path: Path) -> None:
    r = train(
        tiny_model("lora"),
        N_EXAMPLES,
        make_batch,
        loss_fn,
        cfg(steps=30, checkpoint_every=30),
        tmp_path,
    )
    assert sum(r.losses[-5:]) / 5 < sum(r.losses[:5]) / 5


def test_resume_with_another_config_is_refused(tmp_path: Path) -> None:
    train(tiny_model(), N_EXAMPLES, make_batch, loss_fn, cfg(steps=3), tmp_path)
    with pytest.raises(ConfigError, match="lr="):
        train(tiny_model(), N_EXAMPLES, make_batch, loss_fn, cfg(steps=3, lr=0.5), tmp_path)
    with pytest.raises(ConfigError, match="steps="):
        TrainConfig(steps=0)


DDP_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_train import tiny_model, make_batch, loss_fn, cfg
    from moelora_experiments.train import train, make_accelerator
    acc = make_accelerator("no")
    model = tiny_model()
    r = train(model, 48, make_batch, loss_fn, cfg(steps=4, batch_size=4), {out!r}, accelerator=acc)
    flat = torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])
    torch.save({{"flat": flat, "world": r.world_size, "losses": r.losses}}, {out!r} + f"/rank{{acc.process_index}}.pt")
    """
)


@pytest.mark.slow
def test_two_cpu_processes_agree(tmp_path: Path) -> None:
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", "29517", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{k}.pt") for k in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert torch.equal(r0["flat"], r1["flat"])  # DDP keeps the replicas identical
    assert r0["losses"] == r1["losses"]  # losses are averaged over both ranks
    assert [p.name for p in checkpoints(tmp_path)] == ["step-0000003", "step-0000004"]
    last = latest_checkpoint(tmp_path)
    assert last is not None
    assert {"rng-rank0.pt", "rng-rank1.pt"} <= {p.name for p in last.iterdir()}


@pytest.mark.gpu
def test_one_gpu_trains_in_bf16_and_resumes(tmp_path: Path) -> None:
    """On a bf16-capable GPU `auto` picks bf16 autocast; adapters stay fp32 and resume exactly."""
    assert torch.cuda.is_available()
    r = train(
        tiny_model(), N_EXAMPLES, make_batch, loss_fn, cfg(mixed_precision="auto"), tmp_path / "a"
    )
    expected = "bf16" if torch.cuda.is_bf16_supported() else "no"
    assert r.mixed_precision == expected and all(math.isfinite(v) for v in r.losses)

    killed_after_5(cfg(mixed_precision="auto"), tmp_path / "b")
    resumed = tiny_model()
    r2 = train(
        resumed, N_EXAMPLES, make_batch, loss_fn, cfg(mixed_precision="auto"), tmp_path / "b"
    )
    assert r2.resumed_from == 3
    assert all(
        p.device.type == "cuda" and p.dtype == torch.float32
        for p in resumed.parameters()
        if p.requires_grad
    )
    assert r2.steps == 8 and len(r2.losses) == 8 and all(math.isfinite(v) for v in r2.losses)
