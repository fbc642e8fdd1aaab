"""Training-step throughput and peak memory at LLM shapes: a stack of Llama-3-8B-sized decoder layers
built from a config (random weights, frozen), every architecture injected on q/k/v/o, one AdamW step.

    python -m moelora_experiments.gpu.llm_step --device cuda --json out.json        # 8B shapes, bf16
    python -m moelora_experiments.gpu.llm_step --device cpu --hidden 64 --intermediate 128 --heads 4 \\
        --kv-heads 2 --seq 32 --steps 2 --warmup 1                            # a CPU smoke run

Per architecture: median seconds per step (forward + backward + optimizer), tokens per second, peak
memory allocated (CUDA only) and trainable parameters; the row `frozen` is the base stack's forward and
backward to its inputs' gradient without adapters (the floor every adapter adds to).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from proofs_numeric.jsonio import write_json_atomic

from ..study.grid import arch_variants

VARIANTS = arch_variants()  # every registered architecture (MoELoRA with both routers)


def build_stack(a: argparse.Namespace) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(
        hidden_size=a.hidden,
        intermediate_size=a.intermediate,
        num_attention_heads=a.heads,
        num_key_value_heads=a.kv_heads,
        num_hidden_layers=a.layers,
        vocab_size=256,
        max_position_embeddings=max(a.seq, 128),
    )
    torch.manual_seed(0)
    with torch.device(a.device):
        model: torch.nn.Module = LlamaModel(cfg)
    model.to(dtype=DTYPES[a.dtype]).requires_grad_(False)
    return model


DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(a: argparse.Namespace, name: str) -> dict[str, Any]:
    from ..inject import AdapterSpec, inject_adapters, trainable_report

    model = build_stack(a)
    if name != "frozen":
        spec = AdapterSpec(
            **VARIANTS[name],
            targets=("q_proj", "k_proj", "v_proj", "o_proj"),
            rank=a.rank,
            experts=a.experts,
        )
        inject_adapters(model, spec)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4) if params else None
    x = torch.randn(a.batch, a.seq, a.hidden, device=a.device, dtype=DTYPES[a.dtype])
    x.requires_grad_(name == "frozen")  # without adapters, backward to the inputs
    if a.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(a.warmup + a.steps):
        _sync(a.device)
        t0 = time.perf_counter()
        h = model(inputs_embeds=x).last_hidden_state  # (B, L, d)
        h.float().pow(2).mean().backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        _sync(a.device)
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**30 if a.device.startswith("cuda") else None
    trainable = trainable_report(model).adapter_trainable if name != "frozen" else 0
    del model, opt, x
    if a.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {
        "variant": name,
        "seconds_per_step": sec,
        "tokens_per_second": a.batch * a.seq / sec,
        "peak_gib": peak,
        "trainable": trainable,
        "samples": len(times),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=list(DTYPES))
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=14336)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--variants", default=",".join(["frozen", *VARIANTS]))
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    rows = []
    for name in a.variants.split(","):
        rows.append(bench(a, name))
        r = rows[-1]
        peak = "—" if r["peak_gib"] is None else f"{r['peak_gib']:.2f} GiB"
        print(
            f"{name:>15}  {r['seconds_per_step'] * 1e3:9.2f} ms/step  "
            f"{r['tokens_per_second']:11.0f} tok/s  {peak:>10}  {r['trainable']:>11,} trainable",
            flush=True,
        )
    if a.json:
        meta = {k: v for k, v in vars(a).items() if k != "json"}
        meta["torch"] = torch.__version__
        if a.device.startswith("cuda"):
            meta["gpu"] = torch.cuda.get_device_name()
        write_json_atomic(a.json, {"config": meta, "rows": rows}, indent=1)


if __name__ == "__main__":
    main()
