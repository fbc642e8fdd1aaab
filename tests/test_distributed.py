"""Every architecture trained on two CPU processes (gloo) under DDP and FSDP2; the adapter-only
checkpoints are reloaded with `PeftModel.from_pretrained` in this process and must reproduce the trained
model's outputs.

DDP: Trainer + PEFT under `accelerate launch`. accelerate starts several processes only through torchrun
(its GPU launchers); with a CPU config it runs one process (more would need mpirun), so the test uses the
shipped `ddp.yaml` with CUDA hidden and `--mixed_precision no`: torchrun starts two processes, which find
no GPU and use gloo.

FSDP2: accelerate enables FSDP only for GPU process groups (on the CPU its distributed type stays
MULTI_CPU), so the CPU test shards with torch's `fully_shard` directly under torchrun, gathers the full
state dict and saves it with PEFT (`tests/scripts/fsdp2_every_arch.py`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
ARCHS = ["comol", "hydralora", "lora", "moelora", "talklora"]

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]


def launch(config: str, lm: Path, out: Path, port: int) -> None:
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    cmd = [
        str(accelerate), "launch", "--config_file", str(ROOT / "experiments/configs" / config),
        "--mixed_precision", "no", "--num_processes", "2", "--main_process_port", str(port),
        str(ROOT / "tests/scripts/train_every_arch.py"), str(lm / "model"), str(lm / "train.json"),
        str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((out / "done.json").read_text()) == ARCHS


def test_ddp_every_arch_trains_saves_and_reloads(lm: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    import moelora_experiments.peft_methods  # noqa: F401  (registers the routed methods)

    launch("ddp.yaml", lm, tmp_path, 29621)
    for arch in ARCHS:
        r0, r1 = (torch.load(tmp_path / arch / f"rank{k}.pt") for k in (0, 1))
        assert r0["world"] == r1["world"] == 2 and r0["steps"] == 3
        assert r0["weights"].keys() == r1["weights"].keys()
        assert all(torch.equal(r0["weights"][k], r1["weights"][k]) for k in r0["weights"])
        assert torch.allclose(r0["logits"], r1["logits"], atol=1e-6)
        saved = load_file(str(tmp_path / arch / "adapter" / "adapter_model.safetensors"))
        n_trained = sum(v.numel() for v in r0["weights"].values())
        assert sum(v.numel() for v in saved.values()) == n_trained  # adapter-only, not empty
        base = AutoModelForCausalLM.from_pretrained(lm / "model")
        reloaded = PeftModel.from_pretrained(base, str(tmp_path / arch / "adapter")).eval()
        with torch.no_grad():
            logits = reloaded(input_ids=torch.arange(1, 13).reshape(2, 6)).logits
        assert torch.allclose(logits, r0["logits"], atol=1e-5), arch
        ckpts = sorted(p.name for p in (tmp_path / arch / "train").iterdir())
        assert ckpts == ["checkpoint-3"], ckpts  # staged directories renamed, none left behind


def test_fsdp2_every_arch_trains_saves_and_reloads(lm: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import moelora_experiments.peft_methods  # noqa: F401
    from moelora_experiments.tasks import write_tiny_causal_lm

    two = write_tiny_causal_lm(tmp_path / "lm2", hidden=16, layers=2)  # two FSDP layer units
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    cmd = [
        str(torchrun), "--nproc_per_node", "2", "--master_port", "29623",
        str(ROOT / "tests/scripts/fsdp2_every_arch.py"), str(two), str(tmp_path / "out"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    names = json.loads((tmp_path / "out" / "done.json").read_text())
    assert len(names) == 7
    for name in names:
        run = torch.load(tmp_path / "out" / name / "run.pt")
        assert run["sharded"], name  # the trainable parameters really were DTensor shards
        base = AutoModelForCausalLM.from_pretrained(two)
        reloaded = PeftModel.from_pretrained(base, str(tmp_path / "out" / name)).eval()
        with torch.no_grad():
            logits = reloaded(input_ids=torch.arange(1, 13).reshape(2, 6)).logits
        assert torch.allclose(logits, run["logits"], atol=1e-5), name


@pytest.mark.gpu
@pytest.mark.parametrize("config", ["deepspeed-zero2.yaml", "deepspeed-zero3.yaml"])
def test_deepspeed_trains_every_arch(config: str, lm: Path, tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    env = {**os.environ}
    accelerate = Path(sys.executable).with_name("accelerate")
    n = str(max(1, torch.cuda.device_count()))
    cmd = [
        str(accelerate), "launch", "--config_file", str(ROOT / "experiments/configs" / config),
        "--num_processes", n, str(ROOT / "tests/scripts/train_every_arch.py"),
        str(lm / "model"), str(lm / "train.json"), str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for arch in ARCHS:  # ZeRO-3 must not save empty adapters
        saved = (tmp_path / arch / "adapter" / "adapter_model.safetensors").stat().st_size
        assert saved > 1000, (arch, saved)
