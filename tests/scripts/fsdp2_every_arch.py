"""Launched by tests/test_distributed.py under torchrun (2 CPU processes, gloo): every architecture
sharded with torch's FSDP2 (`fully_shard`), trained a few steps, its full state dict gathered to rank 0
and saved with PEFT's `save_pretrained` (adapter only); logits of the sharded model recorded.

Decoder layers are sharded one unit each, except for the layer-shared variants (TalkLoRA `share_b`,
CoMoL `share_ab`): a tensor shared by several decoder layers cannot live in two FSDP units, so those
models are sharded as one unit (accelerate: `fsdp_auto_wrap_policy: NO_WRAP`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

from moelora_experiments.hf_train import build_peft_model
from moelora_experiments.inject import AdapterSpec

QV = ("q_proj", "v_proj")
SPECS = {
    "lora": AdapterSpec(arch="lora", targets=QV, rank=4, scale=2.0),
    "moelora": AdapterSpec(arch="moelora", targets=QV, rank=4, experts=2, router="latent", top_k=1),
    "hydralora": AdapterSpec(arch="hydralora", targets=QV, rank=4, experts=2),
    "talklora": AdapterSpec(arch="talklora", targets=QV, rank=4, experts=2),
    "talklora-shared-b": AdapterSpec(arch="talklora", targets=QV, rank=4, experts=2, shared_b=True),
    "comol": AdapterSpec(arch="comol", targets=QV, rank=4, experts=2),
    "comol-shared-ab": AdapterSpec(arch="comol", targets=QV, rank=4, experts=2, shared_ab=True),
}
TOKENS = torch.arange(1, 13).reshape(2, 6)


def main(model_dir: str, out: str) -> None:
    from transformers import AutoModelForCausalLM

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for name, spec in SPECS.items():
        model = build_peft_model(
            AutoModelForCausalLM.from_pretrained(model_dir), spec, 0, False, False
        )
        if not (spec.shared_b or spec.shared_ab):
            for layer in model.base_model.model.model.layers:
                fully_shard(layer)
        fully_shard(model)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(
            params, lr=1e-2
        )  # built after sharding: it holds the DTensor shards
        gen = torch.Generator().manual_seed(rank)
        for _ in range(3):
            ids = torch.randint(1, 40, (2, 8), generator=gen)
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
        with torch.no_grad():
            logits = model(input_ids=TOKENS).logits
        full = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        sharded = all(type(p).__name__ == "DTensor" for p in params)
        if rank == 0:
            fresh = build_peft_model(
                AutoModelForCausalLM.from_pretrained(model_dir), spec, 0, False, False
            )
            fresh.load_state_dict(full, strict=True)
            fresh.save_pretrained(str(Path(out) / name))
            torch.save({"logits": logits.detach(), "sharded": sharded}, Path(out) / name / "run.pt")
        dist.barrier()
    if rank == 0:
        (Path(out) / "done.json").write_text(json.dumps(sorted(SPECS)))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
