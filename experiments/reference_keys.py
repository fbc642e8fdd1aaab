"""Reading reference checkpoints (`reference_import`): their keys grouped by layer and kind, matched to
the model's linear layers, converted into this toolkit's checkpoint keys, checked and loaded.

A reference key is `<layer prefix>.<kind>[.<adapter>][.<i>][.weight]` (a kind `lora_*`; `BARE` kinds are
`ParameterList` entries without `.weight`). `Conversion` collects our keys with the reference key each
came from, and the missing, unexpected and conflicting ones; `finish_import` injects, checks and loads,
leaving the model as it was on any problem.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from moelora_core.errors import ConfigError, ShapeError

from .checkpoint import CheckpointError, load_adapter_state, problem_lines
from .durable import load_safetensors, safe_torch_load
from .inject import (
    AdaptedLinear,
    AdapterSpec,
    adapted_layers,
    inject_adapters,
    linear_features,
    remove_adapters,
)

__all__ = [
    "BARE",
    "Conversion",
    "Parsed",
    "Slots",
    "finish_import",
    "parse_keys",
    "read_state",
    "resolve_layers",
    "single",
]

BARE = {"lora_Cores"}  # kinds stored as bare parameters (keys without ".weight")
Slots = dict[str, dict[int | None, tuple[str, Tensor]]]  # kind -> index -> (reference key, tensor)


def read_state(source: Mapping[str, Tensor] | str | os.PathLike[str]) -> dict[str, Tensor]:
    """A state dict from a mapping, a .safetensors / .bin / .pt file, or a directory holding one."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if path.is_dir():
        for name in ("adapter_model.safetensors", "adapter_model.bin", "adapter.safetensors"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise CheckpointError(
                f"{source}: no adapter_model.safetensors / adapter_model.bin inside"
            )
    if not path.exists():
        raise CheckpointError(f"{path}: not found")
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    state = safe_torch_load(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}; expected a state dict")
    return state


@dataclass
class Parsed:
    """Reference keys grouped by layer prefix and kind: layers[prefix][kind][index] = (key, tensor)."""

    layers: dict[str, Slots] = field(default_factory=dict)  # layer prefix -> its slots
    unexpected: list[str] = field(default_factory=list)
    adapter: str | None = None  # the adapter name in the keys (None: stripped)


def parse_keys(state: Mapping[str, Tensor], kinds: set[str], adapter_name: str | None) -> Parsed:
    """Split `<prefix>.<kind>[.<adapter>][.<i>][.weight]` keys; everything else is unexpected."""
    out = Parsed()
    adapters: set[str] = set()
    rows: list[tuple[str, str, str | None, int | None, str]] = []
    for key in state:
        parts = key.split(".")
        k = next((j for j, p in enumerate(parts) if p.startswith("lora_")), None)
        if k is None or parts[k] not in kinds:
            out.unexpected.append(key)
            continue
        rest = parts[k + 1 :]
        if parts[k] in BARE:  # a ParameterList entry: no ".weight"
            pass
        elif rest and rest[-1] == "weight":
            rest = rest[:-1]
        else:
            out.unexpected.append(key)
            continue
        idx = int(rest.pop()) if rest and rest[-1].isdigit() else None
        if len(rest) > 1:
            out.unexpected.append(key)
            continue
        adapter = rest[0] if rest else None
        if adapter is not None:
            adapters.add(adapter)
        rows.append((".".join(parts[:k]), parts[k], adapter, idx, key))
    if adapter_name is None and len(adapters) > 1:
        raise CheckpointError(
            f"keys hold adapters {sorted(adapters)}: pass adapter_name= to pick one"
        )
    out.adapter = adapter_name if adapter_name is not None else next(iter(adapters), None)
    for prefix, kind, adapter, idx, key in rows:
        if adapter_name is not None and adapter not in (None, adapter_name):
            continue  # another adapter saved in the same file: not ours to load
        slot = out.layers.setdefault(prefix, {}).setdefault(kind, {})
        if idx in slot:
            raise CheckpointError(f"keys {slot[idx][0]!r} and {key!r} name the same tensor")
        slot[idx] = (key, state[key])
    return out


def resolve_layers(model: nn.Module, prefixes: list[str]) -> tuple[dict[str, str], list[str]]:
    """Map checkpoint layer prefixes to the model's linear layers (longest name that is a suffix)."""
    names = [
        n
        for n, m in model.named_modules()
        if n and (isinstance(m, AdaptedLinear) or linear_features(m) is not None)
    ]
    found: dict[str, str] = {}
    missing: list[str] = []
    for p in prefixes:
        hits = [n for n in names if p == n or p.endswith("." + n)]
        if hits:
            found[p] = max(hits, key=len)
        else:
            missing.append(p)
    return found, missing


def single(parsed: Parsed, prefix: str, kind: str) -> Tensor:
    """The single (un-indexed) tensor of `kind` in layer `prefix`, needed to infer sizes."""
    hit = parsed.layers[prefix].get(kind, {}).get(None)
    if hit is None:
        raise CheckpointError(
            f"layer {prefix!r}: no {kind}.weight; cannot infer the adapter's sizes"
        )
    return hit[1]


@dataclass
class Conversion:
    state: dict[str, Tensor] = field(default_factory=dict)  # our checkpoint keys
    origin: dict[str, str] = field(default_factory=dict)  # our key -> reference key(s)
    missing: list[str] = field(default_factory=list)  # reference keys
    unexpected: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)  # module types, first-seen order
    adapter: str | None = None

    def ref(self, prefix: str, kind: str, idx: int | str | None = None, bare: bool = False) -> str:
        """A reference key name, spelled as this checkpoint spells them."""
        parts = [
            prefix,
            kind,
            self.adapter,
            None if idx is None else str(idx),
            None if bare else "weight",
        ]
        return ".".join(p for p in parts if p)

    def put(self, key: str, value: Tensor, origin: str) -> None:
        self.state[key], self.origin[key] = value, origin

    def need(
        self, slots: Slots, kind: str, idx: int | None, prefix: str, bare: bool = False
    ) -> Tensor | None:
        """The tensor of `kind` (index `idx`) in `slots`; recorded as missing if absent."""
        hit = slots.get(kind, {}).get(idx)
        if hit is None:
            self.missing.append(self.ref(prefix, kind, idx, bare))
            return None
        return hit[1]

    def put_each(self, name: str, prefix: str, slots: Slots, params: Mapping[str, str]) -> None:
        """Our `<name>.<param>` from the un-indexed reference `kind`, for each kind: param."""
        for kind, param in params.items():
            t = self.need(slots, kind, None, prefix)
            if t is not None:
                self.put(f"{name}.{param}", t, self.ref(prefix, kind))

    def indexed(
        self, slots: Slots, kind: str, count: int, prefix: str, bare: bool = False
    ) -> list[Tensor] | None:
        """The tensors `kind.0` ... `kind.<count-1>` (None if any is missing); further indices are
        unexpected."""
        found = [self.need(slots, kind, i, prefix, bare) for i in range(count)]
        extra = sorted(set(slots.get(kind, {})) - set(range(count)), key=str)
        self.unexpected += [slots[kind][i][0] for i in extra]
        tensors = [t for t in found if t is not None]
        return tensors if len(tensors) == count else None

    def stacked(
        self, slots: Slots, kind: str, count: int, prefix: str, bare: bool = False
    ) -> Tensor | None:
        """`indexed` stacked into (count, ...), or None (recorded as a conflict if shapes differ)."""
        tensors = self.indexed(slots, kind, count, prefix, bare)
        if tensors is None:
            return None
        if len({tuple(t.shape) for t in tensors}) != 1:
            self.conflicts.append(f"{prefix}.{kind}.*: shapes {[tuple(t.shape) for t in tensors]}")
            return None
        return torch.stack(tensors)

    def layer_type(self, name: str) -> str:
        """The module type of layer `name` (its last name part), recorded in first-seen order."""
        mtype = name.rsplit(".", 1)[-1]
        if mtype not in self.targets:
            self.targets.append(mtype)
        return mtype

    def drop(self, parsed: Parsed, prefixes: list[str]) -> None:
        """Every key of these layers is unexpected (they match no layer of the model)."""
        for p in prefixes:
            self.unexpected += [k for slot in parsed.layers[p].values() for k, _ in slot.values()]


def finish_import(
    model: nn.Module,
    spec: AdapterSpec,
    conv: Conversion,
    what: str,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
) -> dict[str, AdaptedLinear]:
    """Inject (if needed), check everything, load; on failure leave the model as it was."""
    layers = adapted_layers(model)
    injected = not layers
    grads = {id(p): p.requires_grad for p in model.parameters()}

    def undo() -> None:
        if injected:
            remove_adapters(model)
            for p in model.parameters():
                p.requires_grad_(grads.get(id(p), p.requires_grad))

    problems = problem_lines(
        missing_keys=sorted(conv.missing),
        unexpected_keys=sorted(conv.unexpected),
        conflicts=conv.conflicts,
    )
    if injected:
        try:
            layers = inject_adapters(model, spec, dtype=dtype, device=device)
        except (ConfigError, ShapeError) as e:
            problems.append(f"  cannot inject {spec.arch} into this model: {e}")
    elif {layer.spec for layer in layers.values()} != {spec}:
        problems.append(
            f"  the model already has adapters with another spec; the checkpoint needs {spec!r}"
        )
    if problems:
        undo()
        raise CheckpointError("\n".join([f"{what} does not fit the model:", *problems]))
    try:
        load_adapter_state(model, conv.state, what=what, origin=conv.origin)
    except CheckpointError:
        undo()
        raise
    return layers
