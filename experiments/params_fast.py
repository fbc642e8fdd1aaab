"""`moelora params` without torch: module shapes and base size of known model types (Llama, Mistral)
read from the config JSON, and the closed-form parameter counts of the five built-in architectures.

Anything else (another model type, another registered architecture, `--option`s) goes through the meta
model (`params.count_params`); `tests/test_params_cli.py` checks this path against it, and its formulas
against every architecture's `param_formula` + `shared_param_formula`.

Memory per trainable parameter, mixed-precision AdamW: weights bf16 (2 B) + gradients bf16 (2 B) +
AdamW first and second moments fp32 (4 + 4 B) = 12 B.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .options import SHARED_ALIASES, resolve_shared

__all__ = ["BYTES_PER_PARAM", "closed_form", "fast_count", "llama_shapes", "memory_bytes"]

BYTES_PER_PARAM = {"weights_bf16": 2, "grads_bf16": 2, "adamw_fp32_moments": 8}


def memory_bytes(trainable: int) -> dict[str, int]:
    memory = {k: v * trainable for k, v in BYTES_PER_PARAM.items()}
    memory["total"] = sum(memory.values())
    return memory


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


Counts = tuple[int, int]  # (parameters per layer, parameters a module type shares once)


def _lora(n: int, m: int, r: int, E: int, re_: int, spec: dict[str, Any]) -> Counts:
    return r * (n + m), 0


def _moelora(n: int, m: int, r: int, E: int, re_: int, spec: dict[str, Any]) -> Counts | None:
    if re_ < 1:
        return None
    router = E * E * re_ if spec["router"] == "latent" else E * n  # reads [A_i x] or x
    return E * re_ * (n + m) + router, 0


def _hydralora(n: int, m: int, r: int, E: int, re_: int, spec: dict[str, Any]) -> Counts | None:
    if re_ < 1:
        return None
    return re_ * n + E * re_ * m + E * n, 0


def _talklora(n: int, m: int, r: int, E: int, re_: int, spec: dict[str, Any]) -> Counts | None:
    if r % E:
        return None
    per_layer = r * n + r * r // E + E * E + E * r  # A, K_i blocks, T, W_r
    return (per_layer, r * m) if spec["shared"] else (per_layer + r * m, 0)


def _comol(n: int, m: int, r: int, E: int, re_: int, spec: dict[str, Any]) -> Counts:
    router = E * r if spec["core_router"] else E * n
    ab = r * (n + m)
    return (E * r * r + router, ab) if spec["shared"] else (ab + E * r * r + router, 0)


# the five built-in architectures' formulas (docs/theory.md); SHARING: those with a shared part
FORMULAS = {
    "lora": _lora,
    "moelora": _moelora,
    "hydralora": _hydralora,
    "talklora": _talklora,
    "comol": _comol,
}
SHARING = ("talklora", "comol")


def closed_form(spec: dict[str, Any], n: int, m: int) -> Counts | None:
    """(parameters per layer, parameters a module type shares once) of `spec` (an `AdapterSpec`
    dict) on an n -> m layer; None where the formulas do not cover it (another architecture,
    options, invalid values: the meta-model path then decides)."""
    arch, r, E, k = spec["arch"], spec["rank"], spec["experts"], spec["top_k"]
    if arch not in FORMULAS or spec["options"] or (spec["shared"] and arch not in SHARING):
        return None
    re_ = spec["expert_rank"] if spec["expert_rank"] is not None else r // max(1, E)
    ints = (r, E) + (() if k is None else (k,))
    if not all(type(v) is int and v >= 1 for v in ints) or (k is not None and k > E):
        return None
    if type(re_) is not int:
        return None
    if spec["router"] not in ("input", "latent"):
        return None
    return FORMULAS[arch](n, m, r, E, re_, spec)


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
    spec = {"target_regex": None, "scale": 1.0, **spec_kw, "targets": list(targets)}  # = to_dict
    aliases = {a: spec[a] for a in SHARED_ALIASES}
    if resolve_shared(spec["arch"], spec["shared"], **aliases) != {
        "shared": spec["shared"],
        **aliases,
    }:
        return None  # not as AdapterSpec would store it: the meta path reports it
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
