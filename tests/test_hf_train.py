"""`moelora train` on Trainer + PEFT: save/resume of all five architectures (bitwise on CPU), the CLI's
errors, plain progress lines, extending a run, damaged and stale checkpoints."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from moelora_experiments.cli import app
from moelora_experiments.durable import CheckpointError
from moelora_experiments.hf_train import (
    HFRunOptions,
    build_peft_model,
    make_trainer,
    run_trainer,
    training_args,
)
from moelora_experiments.inject import AdapterSpec
from moelora_experiments.loading import Placement
from moelora_experiments.train import TrainConfig

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:fan_in_fan_out:UserWarning"),
]

SPECS = {
    "lora": AdapterSpec(arch="lora", targets=("q_proj", "v_proj"), rank=4, scale=2.0),
    "moelora": AdapterSpec(
        arch="moelora", targets=("q_proj", "v_proj"), rank=4, experts=2, top_k=1
    ),
    "hydralora": AdapterSpec(arch="hydralora", targets=("q_proj", "v_proj"), rank=4, experts=2),
    "talklora": AdapterSpec(
        arch="talklora", targets=("q_proj", "v_proj"), rank=4, experts=2, shared_b=True
    ),
    "comol": AdapterSpec(
        arch="comol", targets=("q_proj", "v_proj"), rank=4, experts=2, shared_ab=True
    ),
}


@pytest.fixture(scope="module")
def dataset(lm: Path) -> tuple[Any, Any]:
    from moelora_experiments.hf_data import collator, instruction_dataset
    from moelora_experiments.loading import load_tokenizer

    tok = load_tokenizer(str(lm / "model"))
    return instruction_dataset(tok, 200, data=str(lm / "train.json")), collator(tok)


class Killed(Exception):
    pass


def _run(lm: Path, ds: tuple[Any, Any], arch: str, out: Path, kill_at: int | None = None) -> Any:
    from transformers import AutoModelForCausalLM, TrainerCallback

    cfg = TrainConfig(steps=4, batch_size=2, lr=1e-2, warmup_steps=1, checkpoint_every=2)
    opts = HFRunOptions(placement=Placement(device="cpu"), logging_steps=1)
    base = AutoModelForCausalLM.from_pretrained(lm / "model")
    model = build_peft_model(base, SPECS[arch], 0, False, False)
    trainer = make_trainer(model, training_args(cfg, out, opts, False), ds[0], None, ds[1])

    class Kill(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == kill_at:
                raise Killed

    if kill_at is not None:
        trainer.add_callback(Kill())
    result = run_trainer(trainer, out, cfg.steps)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return result, weights


@pytest.mark.parametrize("arch", list(SPECS))
def test_trainer_resume_is_bitwise_exact(arch: str, lm: Path, dataset: Any, tmp_path: Path) -> None:
    straight, w_straight = _run(lm, dataset, arch, tmp_path / "a")
    with pytest.raises(Killed):  # killed after step 3: step 3 was never checkpointed
        _run(lm, dataset, arch, tmp_path / "b", kill_at=3)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["checkpoint-2"]
    ckpt = tmp_path / "b" / "checkpoint-2"
    assert (ckpt / "adapter_model.safetensors").is_file()  # adapter-only, no base weights
    assert not any(p.name.startswith("model") for p in ckpt.iterdir())
    resumed, w_resumed = _run(lm, dataset, arch, tmp_path / "b")
    assert resumed.resumed_from == 2 and resumed.steps == 4
    assert w_resumed.keys() == w_straight.keys()
    assert all(torch.equal(w_resumed[k], w_straight[k]) for k in w_straight)
    assert resumed.losses[-2:] == straight.losses[-2:]


def cli(lm: Path, out: Path, *extra: str) -> Any:
    args = [
        "train", "--model", str(lm / "model"), "--data", str(lm / "train.json"), "--out", str(out),
        "--arch", "talklora", "--rank", "4", "--experts", "2", "--steps", "2", "--batch-size", "2",
        "--warmup", "0", "--logging-steps", "1", "--max-length", "200", "--checkpoint-every", "2",
        "--device", "cpu", *extra,
    ]  # fmt: skip
    return CliRunner().invoke(app, args)


def test_cli_trains_extends_and_prints_plain_progress(lm: Path, tmp_path: Path) -> None:
    r = cli(lm, tmp_path)
    assert r.exit_code == 0, r.output
    assert "step 1/2 (50%) loss" in r.output  # plain lines: the runner's stderr is not a terminal
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "TALKLORA"
    r = cli(lm, tmp_path, "--steps", "3")
    assert r.exit_code == 0 and "3 steps (resumed from 2)" in r.output, r.output
    r = cli(lm, tmp_path, "--steps", "1")
    assert r.exit_code == 2 and "extended, not shortened" in r.output
    # the trained PEFT adapter directory is measurable as it is
    args = ["bounds", str(tmp_path / "adapter"), "--texts", "2", "--max-tokens", "16"]
    r = CliRunner().invoke(app, [*args, "--json", str(tmp_path / "b.json"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    (result,) = json.loads((tmp_path / "b.json").read_text()).values()
    layers = result["layers"]
    assert len(layers) == 2 and all(m["bounds"]["upper_centred"] > 0 for m in layers.values())
    for bad, message in (([], "no adapter_config.json"), (["--dtype", "x"], "dtype='x'")):
        r = CliRunner().invoke(app, ["bounds", str(tmp_path / "nope"), *bad])
        assert r.exit_code == 2 and message in r.output and len(r.output.splitlines()) == 1


def test_measure_accepts_peft_models(lm: Path, dataset: Any) -> None:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from moelora_experiments.measure import measure_adapted_model
    from moelora_experiments.peft_bridge import peft_config_for

    for arch in ("lora", "moelora"):
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(lm / "model"), peft_config_for(SPECS[arch])
        )
        batch = dataset[1]([dataset[0][i] for i in range(2)])
        batch.pop("labels")
        out = measure_adapted_model(model, [batch], max_tokens=8)
        assert sorted(out) == [f"model.layers.0.self_attn.{t}" for t in ("q_proj", "v_proj")]
        routed = out["model.layers.0.self_attn.q_proj"]["bounds"] is not None
        assert routed == (arch != "lora")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/nonexistent/model"], "no config.json"),
        (["--data", "/nonexistent.json"], "not found"),
        (["--arch", "dora"], "arch='dora'"),
        (["--dtype", "fp8"], "dtype='fp8'"),
        (["--device", "tpu"], "device='tpu'"),
        (["--load-in-4bit"], "bitsandbytes"),
        (["--rank", "3"], "rank=3"),
        (["--option", "talk_init"], "key=value"),
        (["--option", "nope=1"], "nope"),
    ],
)
def test_cli_user_mistakes_are_one_line(
    lm: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    if "--load-in-4bit" in args and importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed: --load-in-4bit is not a mistake here")
    r = cli(lm, tmp_path, *args)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_damaged_and_stale_trainer_checkpoints(lm: Path, tmp_path: Path) -> None:
    assert cli(lm, tmp_path).exit_code == 0
    stale = tmp_path / "train" / ".tmp-checkpoint-9"
    stale.mkdir()
    (tmp_path / "train" / "checkpoint-2" / "scheduler.pt").write_bytes(b"garbage")
    r = cli(lm, tmp_path, "--steps", "3")
    assert r.exit_code == 2 and "scheduler.pt" in r.output and not stale.exists()
    from moelora_experiments.hf_train import validate_checkpoint

    with pytest.raises(CheckpointError):
        validate_checkpoint(tmp_path / "train" / "checkpoint-2")


def test_every_option_has_help() -> None:
    import click
    import typer.main

    group = typer.main.get_command(app)
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # type: ignore[attr-defined]
        command = group.get_command(ctx, name)  # type: ignore[attr-defined]
        for param in command.params:
            if param.name == "help":
                continue
            assert getattr(param, "help", None), f"moelora {name}: {param.name} has no help text"
