"""Model-scale bound report: `model_report` on every adapted layer of a 1B-shaped model, timed.

    .venv/bin/python benchmarks/bounds_model.py                      # TalkLoRA, 1024 inputs per layer
    .venv/bin/python benchmarks/bounds_model.py --arch comol --json out.json

The layer shapes come from a `transformers.LlamaConfig` (hidden 2048, intermediate 8192, 16 layers,
32 heads, 8 key-value heads: q, o 2048 -> 2048, k, v 2048 -> 512, down 8192 -> 2048) instantiated on
the meta device (no weights); each target gets a random adapter (r = 32, E = 8, B ~ N(0, 0.02²),
as in benchmarks/bounds.py) and `--inputs` standard-normal probe rows, not hidden states of a trained
run, one batch per input width, shared by the layers of that width. `model_report` measures the
layers group by shape on the CPU (float32 adapters; the certified parts run in float64), converting
each shared batch once; the total wall and CPU time, the per-module-type sums and the slowest layer
are printed, with the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import torch
from bounds import build_layer
from torch import nn

from moelora_core import Adapter
from proofs_numeric.bounds import ReportOptions, model_report
from proofs_numeric.jsonio import write_json_atomic

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")
ARCHS = ("talklora", "moelora-latent", "moelora-input", "hydralora", "comol")


def layer_shapes(hidden: int, intermediate: int, layers: int) -> list[tuple[str, int, int]]:
    """[(qualified name, in, out)] of the target linears of a meta-device Llama model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
    )  # fmt: skip
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in TARGETS:
            out.append((name, mod.in_features, mod.out_features))
    return out


def build_model(arch: str, shapes: list[tuple[str, int, int]], inputs: int) -> tuple[
    dict[str, Adapter], dict[str, torch.Tensor]
]:  # fmt: skip
    """A random adapter per target (seeded by its index) and one probe batch per input width,
    shared by the layers of that width."""
    gen = torch.Generator().manual_seed(0)
    probes: dict[int, torch.Tensor] = {}
    layers: dict[str, Adapter] = {}
    for i, (name, n, m) in enumerate(shapes):
        torch.manual_seed(i)
        layers[name] = build_layer(arch, n, m)
        if n not in probes:
            probes[n] = torch.randn(inputs, n, generator=gen)
    return layers, {name: probes[a.in_features] for name, a in layers.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--arch", default="talklora", choices=ARCHS)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=8192)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--inputs", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args(argv)
    shapes = layer_shapes(args.hidden, args.intermediate, args.layers)
    layers, inputs = build_model(args.arch, shapes, args.inputs)
    load0 = os.getloadavg()[0]
    t, c = time.perf_counter(), time.process_time()
    rep = model_report(layers, inputs, options=ReportOptions(threads=args.threads))
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    rows: list[dict[str, Any]] = [
        {"layer": name, "in": r.in_features, "out": r.out_features, "s": r.seconds,
         "upper": r.upper, "local_upper": r.local.adaptive if r.local else None}
        for name, r in rep.layers.items()
    ]  # fmt: skip
    by_type: dict[str, float] = {}
    for row in rows:
        key = row["layer"].rsplit(".", 1)[-1]
        by_type[key] = by_type.get(key, 0.0) + row["s"]
    slowest = max(rows, key=lambda row: row["s"])
    print(
        f"{args.arch}: {len(rows)} adapted layers ({args.layers} blocks x {TARGETS}) in "
        f"{len(rep.groups)} shape groups, {args.inputs} inputs each, {args.threads} thread(s), "
        f"torch {torch.__version__}; load average {load0:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    print(f"model_report {wall:.1f}s wall, {cpu:.1f}s CPU; per type: "
          + ", ".join(f"{k} {v:.1f}s" for k, v in by_type.items()))  # fmt: skip
    print(f"slowest layer {slowest['layer']} {slowest['s']:.3f}s")
    if args.json_out:
        payload = {"args": vars(args), "total_s": wall, "cpu_s": cpu, "load_average": load0,
                   "layers": rows}  # fmt: skip
        write_json_atomic(args.json_out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
