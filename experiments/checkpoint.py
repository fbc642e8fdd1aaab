"""Saving and loading adapters: `adapter.safetensors` + `adapter_config.json`, each written atomically.

Keys are `<layer name>.<parameter path in the adapter>` (e.g. `model.layers.0.self_attn.q_proj.A.weight`);
a tensor shared by the layers of one module type (TalkLoRA `B`, CoMoL `A`, `B`) is stored once, as
`__shared__.<module type>.<parameter path>` (safetensors refuses aliased tensors, and one copy is the
truth). Trainable parameters outside the adapters (a task head) may be stored as `__base__.<name>`.

Loading checks the file against the model before copying anything and fails with a CheckpointError that
lists the missing keys, the unexpected keys and the shape conflicts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from moelora_core.errors import ConfigError, ShapeError

from .durable import CheckpointError, fsync_dir
from .inject import AdaptedLinear, AdapterSpec, adapted_layers, inject_adapters, remove_adapters

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "CheckpointError",
    "adapter_state_dict",
    "check_state",
    "listing",
    "load_adapter_state",
    "load_adapters",
    "problem_lines",
    "read_spec",
    "save_adapters",
]

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
FORMAT = "moelora-verify-adapter"
VERSION = 1
SHARED = "__shared__."
BASE = "__base__."


def _layer_keys(layer: AdaptedLinear, shared_done: set[str]) -> dict[str, nn.Parameter]:
    shared = {id(p) for p in layer.adapter.shared_parameters()}
    out: dict[str, nn.Parameter] = {}
    for pname, p in layer.adapter.named_parameters():
        if id(p) in shared:
            key = f"{SHARED}{layer.module_type}.{pname}"
            if key in shared_done:
                continue
            shared_done.add(key)
        else:
            key = f"{layer.name}.{pname}"
        out[key] = p
    return out


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """{checkpoint key: parameter} for every adapter parameter, each shared tensor once."""
    done: set[str] = set()
    out: dict[str, nn.Parameter] = {}
    for layer in adapted_layers(model).values():
        out.update(_layer_keys(layer, done))
    return out


def adapter_state_dict(
    model: nn.Module, *, include_trainable_base: bool = False
) -> dict[str, Tensor]:
    """The tensors `save_adapters` writes (detached, contiguous, on the CPU)."""
    params: dict[str, Tensor] = dict(adapter_parameters(model))
    if include_trainable_base:
        ids = {id(p) for p in params.values()}
        for name, p in model.named_parameters():
            if p.requires_grad and id(p) not in ids:
                params[BASE + name] = p
    return {k: v.detach().to("cpu").contiguous() for k, v in params.items()}


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)  # the rename itself survives a crash
    finally:
        if tmp.exists():
            tmp.unlink()


def save_adapters(
    model: nn.Module,
    directory: str | os.PathLike[str],
    spec: AdapterSpec,
    *,
    include_trainable_base: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write `adapter.safetensors` then `adapter_config.json` into `directory` (created if needed).

    `spec` must be the spec the model's adapters were injected with. `extra` is stored, JSON-encoded,
    in the config under "extra" (e.g. the training step). Returns the directory.
    """
    layers = adapted_layers(model)
    if not layers:
        raise ConfigError("model has no adapters: expected a model prepared with inject_adapters")
    specs = {layer.spec for layer in layers.values()}
    if specs != {spec}:
        raise ConfigError(
            f"spec={spec!r}: the model's adapters were injected with {sorted(map(repr, specs))}"
        )
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = adapter_state_dict(model, include_trainable_base=include_trainable_base)
    config = {
        "format": FORMAT,
        "version": VERSION,
        "spec": spec.to_dict(),
        "layers": list(layers),
        "extra": dict(extra or {}),
    }
    meta = {"format": FORMAT, "spec": json.dumps(spec.to_dict(), sort_keys=True)}
    _atomic_write(out / ADAPTER_WEIGHTS, lambda p: save_file(tensors, str(p), metadata=meta))
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    _atomic_write(out / ADAPTER_CONFIG, lambda p: p.write_text(text))
    return out


def read_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(directory) / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 text ({e})") from None
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: not found; expected a directory written by save_adapters"
        ) from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: format={config.get('format') if isinstance(config, dict) else None!r}; expected {FORMAT!r}"
        )
    return config


def read_spec(directory: str | os.PathLike[str]) -> AdapterSpec:
    """The AdapterSpec a checkpoint directory was saved with."""
    try:
        return AdapterSpec.from_dict(read_config(directory)["spec"])
    except (ConfigError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{Path(directory) / ADAPTER_CONFIG}: invalid adapter spec ({e})"
        ) from None


def _read_tensors(directory: Path, spec: AdapterSpec) -> dict[str, Tensor]:
    path = directory / ADAPTER_WEIGHTS
    if not path.exists():
        raise CheckpointError(f"{path}: not found; expected the weights beside {ADAPTER_CONFIG}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a Mapping)
    except Exception as e:  # SafetensorError, OSError: a truncated or foreign file
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({type(e).__name__}: {e}); the file is damaged"
        ) from None
    saved = meta.get("spec")
    try:
        differs = saved is not None and json.loads(saved) != spec.to_dict()
    except json.JSONDecodeError:
        differs = True
    if differs:
        raise CheckpointError(
            f"{path}: its spec {saved} differs from {ADAPTER_CONFIG}'s {spec.to_dict()} "
            "(files from two different saves)"
        )
    return tensors


def listing(items: list[str], limit: int = 24) -> str:
    """`[a, b, ... and N more]`: at most `limit` items of a list for an error message."""
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... and {len(items) - limit} more' if len(items) > limit else ''}]"


def problem_lines(**kinds: list[str]) -> list[str]:
    """One indented line per non-empty kind: `  missing keys (3): [...]` (underscores as spaces)."""
    return [
        f"  {kind.replace('_', ' ')} ({len(items)}): {listing(items)}"
        for kind, items in kinds.items()
        if items
    ]


def check_state(
    expected: Mapping[str, tuple[int, ...]],
    got: Mapping[str, tuple[int, ...]],
    *,
    what: str = "checkpoint",
    origin: Mapping[str, str] | None = None,
) -> None:
    """Raise CheckpointError listing missing keys, unexpected keys and shape conflicts (if any)."""
    origin = origin or {}
    conflicts = [
        f"{k}{' (from ' + origin[k] + ')' if k in origin else ''}: checkpoint {tuple(got[k])}, model {tuple(expected[k])}"
        for k in sorted(set(expected) & set(got))
        if tuple(expected[k]) != tuple(got[k])
    ]
    lines = problem_lines(
        missing_keys=sorted(set(expected) - set(got)),
        unexpected_keys=sorted(set(got) - set(expected)),
        shape_conflicts=conflicts,
    )
    if lines:
        raise CheckpointError("\n".join([f"{what} does not fit the model:", *lines]))


def _targets(model: nn.Module, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """{checkpoint key: model parameter} that `state` is expected to fill."""
    params: dict[str, Tensor] = dict(adapter_parameters(model))
    model_params = dict(model.named_parameters())
    for key in state:
        if key.startswith(BASE) and key[len(BASE) :] in model_params:
            params[key] = model_params[key[len(BASE) :]]
    return params


@torch.no_grad()
def load_adapter_state(
    model: nn.Module,
    state: Mapping[str, Tensor],
    *,
    what: str = "checkpoint",
    origin: Mapping[str, str] | None = None,
) -> None:
    """Check `state` (checkpoint keys) against the model's adapters, then copy it in (casting dtype).

    Transactional: if a copy fails, the values copied so far are restored.
    """
    params = _targets(model, state)
    expected = {k: tuple(p.shape) for k, p in params.items()}
    check_state(expected, {k: tuple(v.shape) for k, v in state.items()}, what=what, origin=origin)
    backup = {k: (params[k].detach().clone(), params[k].requires_grad) for k in state}
    try:
        for key, value in state.items():
            p = params[key]
            p.copy_(value.to(device=p.device, dtype=p.dtype))
            if key.startswith(BASE):
                p.requires_grad_(True)
    except BaseException:
        for key, (old, flag) in backup.items():
            params[key].copy_(old)
            params[key].requires_grad_(flag)
        raise


def load_adapters(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> dict[str, AdaptedLinear]:
    """Inject adapters per the saved spec (unless the model already has them) and load the weights.

    `__base__.` tensors (saved with include_trainable_base) are loaded too and made trainable. On any
    mismatch the model is left as it was and a CheckpointError lists what does not fit.
    """
    directory = Path(directory)
    spec = read_spec(directory)
    state = _read_tensors(directory, spec)
    layers = adapted_layers(model)
    injected = not layers
    grads = {id(p): p.requires_grad for p in model.parameters()}
    what = f"{directory / ADAPTER_WEIGHTS} (arch={spec.arch!r})"
    if injected:
        try:
            layers = inject_adapters(model, spec, dtype=dtype, device=device)
        except (ConfigError, ShapeError) as e:
            raise CheckpointError(
                f"{what}: cannot inject its adapters into this model: {e}"
            ) from None
    else:
        have = {layer.spec for layer in layers.values()}
        if have != {spec}:
            expected = {k: tuple(p.shape) for k, p in _targets(model, state).items()}
            try:
                check_state(expected, {k: tuple(v.shape) for k, v in state.items()}, what=what)
                detail = "(keys and shapes agree, the hyper-parameters do not)"
            except CheckpointError as e:
                detail = str(e)
            raise CheckpointError(
                f"{what}: saved with spec {spec!r}, but the model's adapters have spec "
                f"{sorted(map(repr, have))}; {detail}"
            )
    try:
        load_adapter_state(model, state, what=what)
    except BaseException:
        if injected:
            remove_adapters(model)
            for p in model.parameters():
                p.requires_grad_(grads.get(id(p), p.requires_grad))
        raise
    return layers
