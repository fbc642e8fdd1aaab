"""Command-line options shared by the commands that build an `AdapterSpec` (`params`, `train`)."""

from __future__ import annotations

import typer

RANK = typer.Option(16, "--rank", help="Total rank r.")
EXPERT_RANK = typer.Option(
    None, "--expert-rank", help="MoE baselines' per-expert rank (default r // E)."
)
ROUTER = typer.Option("input", "--router", help="MoELoRA router: input or latent.")
TOP_K = typer.Option(None, "--top-k", help="Keep the k largest routing weights.")
CORE_ROUTER = typer.Option(
    True, "--core-router/--no-core-router", help="CoMoL: route on A x (else on x)."
)
SHARED_B = typer.Option(
    False, "--shared-b", help="TalkLoRA: share B across layers of one module type."
)
SHARED_AB = typer.Option(
    False, "--shared-ab", help="CoMoL: share A, B across layers of one module type."
)
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
DTYPE = typer.Option(
    "auto", "--dtype", help="Base model dtype: auto, float32, bfloat16 or float16."
)
DEVICE_MAP = typer.Option(
    None, "--device-map", help="from_pretrained device map, e.g. auto (spreads big models)."
)
LOAD_IN_4BIT = typer.Option(
    False, "--load-in-4bit", help="4-bit NF4 base via bitsandbytes (CUDA GPU only)."
)
