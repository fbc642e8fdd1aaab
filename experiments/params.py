"""`moelora params`: count an adapter's trainable parameters on any transformers model, without weights.

The model is built from its config JSON on the meta device (no memory, any size), the adapters are
injected on meta too, and the counted total is checked against the closed form
Σ_layers param_formula_value() + Σ_module types shared part (TalkLoRA shared B, CoMoL shared A, B).
Known model types with a built-in architecture are answered from the config alone (`params_fast`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from . import options as opt
from .params_fast import BYTES_PER_PARAM, fast_count, memory_bytes

if TYPE_CHECKING:  # torch, transformers and the adapters load only on the meta-model path
    from torch import nn

    from .inject import AdapterSpec

__all__ = ["BYTES_PER_PARAM", "build_meta_model", "count_params", "params_command"]


def build_meta_model(config_path: str | Path) -> nn.Module:
    """A transformers model from a local config JSON (file or directory), on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from moelora_core.errors import ConfigError

    path = Path(config_path)
    if not path.exists():
        raise ConfigError(
            f"config={str(path)!r}: no such file or directory; expected a config JSON"
        )
    try:
        cfg = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"config={str(path)!r}: not a transformers config ({e})") from None
    with torch.device("meta"):
        try:
            model: nn.Module = AutoModelForCausalLM.from_config(cfg)  # type: ignore[no-untyped-call]
        except ValueError:
            model = AutoModel.from_config(cfg)  # type: ignore[no-untyped-call]
    return model


def count_params(config_path: str | Path, spec: AdapterSpec) -> dict[str, Any]:
    """Inject `spec` into the meta model of `config_path` and count; the JSON `--json` prints."""
    from .inject import adapted_layers, inject_adapters, trainable_report

    start = time.perf_counter()
    model = build_meta_model(config_path)
    inject_adapters(model, spec)
    report = trainable_report(model)
    shapes: dict[str, list[int]] = {}
    for layer in adapted_layers(model).values():
        shapes.setdefault(layer.module_type, [layer.in_features, layer.out_features])
    total = report.total_trainable
    out = report.to_dict()
    out.update(
        {
            "config": str(config_path),
            "spec": spec.to_dict(),
            "shapes": shapes,
            "formula_agrees": report.formula_total == report.adapter_trainable,
            "memory_bytes": memory_bytes(total),
            "seconds": round(time.perf_counter() - start, 3),
        }
    )
    return out


def _print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    spec = result["spec"]
    table = Table(
        title=f"{spec['arch']} on {result['config']} (r={spec['rank']}, E/N={spec['experts']})"
    )
    for col in ("module type", "n -> m", "layers", "trainable", "closed form"):
        table.add_column(col, justify="left" if col == "module type" else "right")
    for t, count in result["per_type"].items():
        n, m = result["shapes"][t]
        table.add_row(
            t,
            f"{n} -> {m}",
            str(result["layers_per_type"][t]),
            f"{count:,}",
            f"{result['formula_per_type'][t]:,}",
        )
    table.add_section()
    table.add_row(
        "total",
        "",
        str(sum(result["layers_per_type"].values())),
        f"{result['total_trainable']:,}",
        f"{result['formula_total']:,}",
    )
    console = Console()
    console.print(table)
    mem = result["memory_bytes"]
    console.print(
        f"base model {result['base_params']:,} params; trainable share {result['share_percent']:.4f} %; "
        f"training memory {mem['total'] / 2**20:.1f} MiB (bf16 weights + bf16 grads + fp32 AdamW moments); "
        f"{result['seconds']:.2f} s"
    )


def params_command(
    config: str = typer.Option(
        ..., "--config", help="transformers config JSON (file or directory)."
    ),
    arch: str = opt.arch_option("lora"),
    rank: int = opt.RANK,
    experts: int = typer.Option(
        8, "--experts", help="Experts E (MoE baselines, TalkLoRA) or cores N (CoMoL)."
    ),
    targets: str = typer.Option(
        "q_proj,k_proj,v_proj,o_proj,down_proj",
        "--targets",
        help="Comma-separated module-name suffixes.",
    ),
    core_router: bool = opt.CORE_ROUTER,
    shared: bool = opt.SHARED,
    shared_b: bool = opt.SHARED_B,
    shared_ab: bool = opt.SHARED_AB,
    expert_rank: int | None = opt.EXPERT_RANK,
    router: str = opt.ROUTER,
    top_k: int | None = opt.TOP_K,
    option: opt.OptionList = None,
    json_out: bool = typer.Option(
        False, "--json", help="Print exactly one JSON object instead of a table."
    ),
    meta: bool = typer.Option(
        False,
        "--meta",
        help="Always build the meta model (known model types are otherwise read from the config).",
    ),
) -> None:
    """Count trainable adapter parameters per module type on a model built from its config (no weights)."""
    spec_kw = _spec_kwargs(
        arch=arch,
        rank=rank,
        experts=experts,
        expert_rank=expert_rank,
        router=router,
        top_k=top_k,
        core_router=core_router,
        shared=shared,
        shared_b=shared_b,
        shared_ab=shared_ab,
        option=option,
    )
    spec_kw["targets"] = tuple(t.strip() for t in targets.split(",") if t.strip())
    result = (None if meta else fast_count(config, spec_kw)) or _meta_count(config, spec_kw)
    if json_out:
        typer.echo(json.dumps(result, sort_keys=True))
    else:
        _print_table(result)
    if not result["formula_agrees"]:
        typer.echo(
            f"error: counted {result['adapter_trainable']} != closed form {result['formula_total']}",
            err=True,
        )
        raise typer.Exit(1)


def _spec_kwargs(**options: Any) -> dict[str, Any]:
    """`options.spec_kwargs`; a malformed option is one line on stderr, exit status 2."""
    try:
        return opt.spec_kwargs(**options)
    except opt.OptionError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def _meta_count(config: str, spec_kw: dict[str, Any]) -> dict[str, Any]:
    """`count_params` on the meta model; a bad spec or config is one line on stderr, exit status 2."""
    from moelora_core.errors import MoELoRAError

    from .inject import AdapterSpec

    try:
        return count_params(config, AdapterSpec(**spec_kw))
    except MoELoRAError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
