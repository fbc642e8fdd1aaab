"""Launched by tests/test_distributed.py under `accelerate launch` (2 CPU processes, DDP or FSDP2):
train every architecture for a few steps with Trainer + PEFT, save the adapter (adapter-only), record the
trained model's logits on fixed tokens and each rank's adapter weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from moelora_experiments.hf_data import collator, instruction_dataset
from moelora_experiments.hf_train import (
    HFRunOptions,
    build_peft_model,
    make_trainer,
    run_trainer,
    training_args,
)
from moelora_experiments.inject import AdapterSpec
from moelora_experiments.loading import Placement, load_tokenizer
from moelora_experiments.train import TrainConfig

SPECS = {
    "lora": AdapterSpec(arch="lora", targets=("q_proj", "v_proj"), rank=4, scale=2.0),
    "moelora": AdapterSpec(
        arch="moelora", targets=("q_proj", "v_proj"), rank=4, experts=2, router="latent"
    ),
    "hydralora": AdapterSpec(arch="hydralora", targets=("q_proj", "v_proj"), rank=4, experts=2),
    "talklora": AdapterSpec(
        arch="talklora", targets=("q_proj", "v_proj"), rank=4, experts=2, shared_b=True
    ),
    "comol": AdapterSpec(
        arch="comol", targets=("q_proj", "v_proj"), rank=4, experts=2, shared_ab=True
    ),
}
TOKENS = torch.arange(1, 13).reshape(2, 6)


def main(model_dir: str, data: str, out: str) -> None:
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(model_dir)
    ds = instruction_dataset(tok, 200, data=data)
    cfg = TrainConfig(steps=3, batch_size=2, lr=1e-2, warmup_steps=1, checkpoint_every=3)
    opts = HFRunOptions(placement=Placement(device="cpu"), logging_steps=1)
    for arch, spec in SPECS.items():
        base = AutoModelForCausalLM.from_pretrained(model_dir)
        model = build_peft_model(base, spec, 0, False, False)
        run_dir = Path(out) / arch / "train"
        trainer = make_trainer(
            model, training_args(cfg, run_dir, opts, False), ds, None, collator(tok)
        )
        result = run_trainer(trainer, run_dir, cfg.steps)
        trainer.save_model(str(Path(out) / arch / "adapter"))
        model.eval()
        with torch.no_grad():  # every rank takes part (FSDP gathers the shards in forward)
            logits = trainer.model(input_ids=TOKENS).logits.detach().cpu()
        rank = trainer.args.process_index
        sharded = any(type(p).__name__ == "DTensor" for p in trainer.model.parameters())
        weights = {  # full tensors: under FSDP2 the parameters are DTensor shards (collective)
            n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu().clone()
            for n, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters()
            if p.requires_grad
        }
        torch.save(
            {"logits": logits, "world": trainer.args.world_size, "steps": result.steps,
             "weights": weights, "sharded": sharded},
            Path(out) / arch / f"rank{rank}.pt",
        )  # fmt: skip
    if trainer.is_world_process_zero():
        (Path(out) / "done.json").write_text(json.dumps(sorted(SPECS)))


if __name__ == "__main__":
    main(*sys.argv[1:4])
