"""`moelora params`: count an adapter's trainable parameters on any transformers model, without weights.

The model is built from its config JSON on the meta device (no memory, any size), the adapters are
injected on meta too, and the counted total is checked against the closed form
Σ_layers param_formula_value() + Σ_module types shared part (TalkLoRA shared B, CoMoL shared A, B).

Memory per trainable parameter, mixed-precision AdamW: weights bf16 (2 B) + gradients bf16 (2 B) +
AdamW first and second moments fp32 (4 + 4 B) = 12 B.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from . import options as opt

if TYPE_CHECKING:  # torch, transformers and the adapters load only on the meta-model path
    from torch import nn

    from .inject import AdapterSpec

__all__ = ["BYTES_PER_PARAM", "build_meta_model", "count_params", "params_command"]

BYTES_PER_PARAM = {"weights_bf16": 2, "grads_bf16": 2, "adamw_fp32_moments": 8}


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


def memory_bytes(trainable: int) -> dict[str, int]:
    memory = {k: v * trainable for k, v in BYTES_PER_PARAM.items()}
    memory["total"] = sum(memory.values())
    return memory


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


# ----- known model types: module shapes and base size from the config JSON alone (no torch) -----------
# Decoder layers of these types hold exactly these Linear modules, in this order (checked against the
# meta model in tests/test_params_cli.py).
KNOWN_TYPES = ("llama", "mistral")
LLAMA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _config_json(config_path: str | Path) -> dict[str, Any] | None:
    path = Path(config_path)
    path = path / "config.json" if path.is_dir() else path
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def llama_shapes(cfg: dict[str, Any]) -> tuple[dict[str, tuple[int, int]], int, int] | None:
    """(module type -> (in, out), decoder layers, base parameters) of a llama/mistral config; None if
    the config is not one of those or lacks a size."""
    if cfg.get("model_type") not in KNOWN_TYPES:
        return None
    keys = (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "vocab_size",
    )
    if not all(type(cfg.get(k)) is int and cfg[k] > 0 for k in keys):
        return None
    h, inter, L, H, V = (int(cfg[k]) for k in keys)
    kv = cfg.get("num_key_value_heads") or H
    hd = cfg.get("head_dim") or h // H
    if type(kv) is not int or type(hd) is not int or kv <= 0 or hd <= 0:
        return None
    shapes = {
        "q_proj": (h, H * hd),
        "k_proj": (h, kv * hd),
        "v_proj": (h, kv * hd),
        "o_proj": (H * hd, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }
    per_layer = sum(n * m for n, m in shapes.values()) + 2 * h  # + input and post-attention norms
    if cfg.get("attention_bias", False):
        per_layer += (H + 2 * kv) * hd + h
    if cfg.get("mlp_bias", False):
        per_layer += 2 * inter + h
    head = 0 if cfg.get("tie_word_embeddings", False) else V * h
    return shapes, L, V * h + L * per_layer + h + head


def closed_form(spec: dict[str, Any], n: int, m: int) -> tuple[int, int] | None:
    """(parameters per layer, parameters a module type shares once): the formulas of docs/theory.md;
    None where the spec is outside what they cover (the meta-model path then decides)."""
    arch, r, E = spec["arch"], spec["rank"], spec["experts"]
    k, re_ = (
        spec["top_k"],
        spec["expert_rank"] if spec["expert_rank"] is not None else r // max(1, E),
    )
    ints = (r, E, re_) + (() if k is None else (k,))
    if not all(type(v) is int and v >= 1 for v in ints) or (k is not None and k > E):
        return None
    if spec["router"] not in ("input", "latent") or (spec["shared_b"] and arch != "talklora"):
        return None
    if spec["shared_ab"] and arch != "comol":
        return None
    if arch == "lora":
        return r * (n + m), 0
    if arch == "moelora":
        return E * re_ * (n + m) + (E * E * re_ if spec["router"] == "latent" else E * n), 0
    if arch == "hydralora":
        return re_ * n + E * re_ * m + E * n, 0
    if arch == "talklora" and r % E == 0:
        per_layer = r * n + r * r // E + E * E + E * r
        return (per_layer, r * m) if spec["shared_b"] else (per_layer + r * m, 0)
    if arch == "comol":
        router = E * r if spec["core_router"] else E * n
        ab = r * (n + m)
        return (E * r * r + router, ab) if spec["shared_ab"] else (ab + E * r * r + router, 0)
    return None


def fast_count(config_path: str | Path, spec_kw: dict[str, Any]) -> dict[str, Any] | None:
    """`count_params`'s result for a known model type from its config JSON, without torch; None when
    the config or the spec is outside the known cases (then the meta model is built)."""
    start = time.perf_counter()
    cfg = _config_json(config_path)
    known = llama_shapes(cfg) if cfg is not None else None
    targets = spec_kw["targets"]
    if known is None or not targets or not set(targets) <= set(LLAMA_MODULES):
        return None
    shapes, L, base = known
    spec = {"target_regex": None, "scale": 1.0, **spec_kw, "targets": list(targets)}
    per_type: dict[str, int] = {}
    for t in (t for t in LLAMA_MODULES if t in targets):
        counts = closed_form(spec, *shapes[t])
        if counts is None:
            return None
        per_type[t] = L * counts[0] + counts[1]
    total = sum(per_type.values())
    return {
        "per_type": per_type,
        "layers_per_type": {t: L for t in per_type},
        "formula_per_type": dict(per_type),
        "adapter_trainable": total,
        "other_trainable": 0,
        "base_params": base,
        "formula_total": total,
        "total_trainable": total,
        "share_percent": 100.0 * total / base,
        "config": str(config_path),
        "spec": spec,
        "shapes": {t: list(shapes[t]) for t in per_type},
        "formula_agrees": True,
        "memory_bytes": memory_bytes(total),
        "seconds": round(time.perf_counter() - start, 3),
    }


def params_command(
    config: str = typer.Option(
        ..., "--config", help="transformers config JSON (file or directory)."
    ),
    arch: str = typer.Option("lora", "--arch", help="lora, moelora, hydralora, talklora or comol."),
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
    shared_b: bool = opt.SHARED_B,
    shared_ab: bool = opt.SHARED_AB,
    expert_rank: int | None = opt.EXPERT_RANK,
    router: str = opt.ROUTER,
    top_k: int | None = opt.TOP_K,
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
    spec_kw: dict[str, Any] = {
        "arch": arch,
        "targets": tuple(t.strip() for t in targets.split(",") if t.strip()),
        "rank": rank,
        "experts": experts,
        "expert_rank": expert_rank,
        "router": router,
        "top_k": top_k,
        "core_router": core_router,
        "shared_b": shared_b,
        "shared_ab": shared_ab,
    }
    result = None if meta else fast_count(config, spec_kw)
    if result is None:
        from moelora_core.errors import MoELoRAError

        from .inject import AdapterSpec

        try:
            result = count_params(config, AdapterSpec(**spec_kw))
        except MoELoRAError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
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
