"""Import checkpoints trained with the TalkLoRA and CoMoL reference code into our modules.

TalkLoRA reference (PEFT-style, E = 4 hard-coded, no α/r scaling). Per adapted layer `<L>`:
    <L>.lora_A[.<adapter>].weight                 r x n          -> A
    <L>.lora_A_experts[.<adapter>].<i>.weight     r/E x r/E      -> K_i (block i of K)
    <L>.lora_A_talk[.<adapter>].weight            E x E          -> T   (h̃_i = Σ_j T_ij h_j)
    <L>.lora_A_route[.<adapter>].weight           E x r          -> W_r
and once per module group g ∈ {q, k, v, up, down} (shared by every layer of that group):
    lora_B_<g>[.<adapter>].<i>.weight             m x r/E        -> B_i (column block i of B)
The reference picks a layer's group by the first of q, k, v, up, down contained in its name; so do we.
Its layers also hold a reference to the group's B, so a full state dict repeats it per layer as
`<L>.lora_B[.<adapter>].<i>.weight`; such copies are accepted when they equal the group's tensor.
Reference forward: h = A x; g = softmax(W_r (T ⊗ I) h); Δ = Σ_i g_i B_i K_i h_i.

CoMoL reference ("mocorelora"). Per adapted layer `<L>`:
    <L>.lora_A[.<adapter>].weight   r x n;   <L>.lora_B[.<adapter>].weight   m x r
    <L>.lora_Cores[.<adapter>].<i>  r x r;   <L>.lora_router[.<adapter>].weight  N x r (core router) or N x n
Reference forward: h = A x, g = softmax(W h) (or W x), C = Σ_i g_i Cores_i, Δ = s·B (hᵀ C)ᵀ.
The reference multiplies the row vector hᵀ by the merged core, i.e. applies Cᵀ: our core M_i is the
*transpose* of its `lora_Cores.<i>` (same function class, different parameter layout). s = α/r = 1
in the reference configs (lora_alpha = r).

The reference's saving code strips the adapter name (".default") from the keys; both forms are read.
A file holding several adapters needs `adapter_name=`; the other adapters' keys are then ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from moelora_core.errors import ConfigError, ShapeError

from .checkpoint import SHARED, CheckpointError, _head, load_adapter_state
from .inject import (
    AdaptedLinear,
    AdapterSpec,
    adapted_layers,
    inject_adapters,
    linear_features,
    remove_adapters,
)

__all__ = [
    "TALKLORA_GROUPS",
    "import_comol_reference",
    "import_talklora_reference",
    "read_state",
    "talklora_group",
]

TALKLORA_GROUPS = ("q", "k", "v", "up", "down")
_BARE = {"lora_Cores"}  # kinds stored as bare parameters (keys without ".weight")


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
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}; expected a state dict")
    return state


@dataclass
class _Parsed:
    """Reference keys grouped by layer prefix and kind: layers[prefix][kind][index] = (key, tensor)."""

    layers: dict[str, dict[str, dict[int | None, tuple[str, Tensor]]]] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    adapter: str | None = None  # the adapter name in the keys (None: stripped)


def _parse(state: Mapping[str, Tensor], kinds: set[str], adapter_name: str | None) -> _Parsed:
    """Split `<prefix>.<kind>[.<adapter>][.<i>][.weight]` keys; everything else is unexpected."""
    out = _Parsed()
    adapters: set[str] = set()
    rows: list[tuple[str, str, str | None, int | None, str]] = []
    for key in state:
        parts = key.split(".")
        k = next((j for j, p in enumerate(parts) if p.startswith("lora_")), None)
        if k is None or parts[k] not in kinds:
            out.unexpected.append(key)
            continue
        rest = parts[k + 1 :]
        if parts[k] in _BARE:  # a ParameterList entry: no ".weight"
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


def _resolve(model: nn.Module, prefixes: list[str]) -> tuple[dict[str, str], list[str]]:
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


def _one(parsed: _Parsed, prefix: str, kind: str) -> Tensor:
    """The single (un-indexed) tensor of `kind` in layer `prefix`, needed to infer sizes."""
    hit = parsed.layers[prefix].get(kind, {}).get(None)
    if hit is None:
        raise CheckpointError(
            f"layer {prefix!r}: no {kind}.weight; cannot infer the adapter's sizes"
        )
    return hit[1]


def talklora_group(module_type: str) -> str | None:
    """The reference's B group of a module: the first of q, k, v, up, down in its name."""
    return next((g for g in TALKLORA_GROUPS if g in module_type), None)


@dataclass
class _Conversion:
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
        self,
        slots: dict[str, dict[int | None, tuple[str, Tensor]]],
        kind: str,
        idx: int | None,
        prefix: str,
        bare: bool = False,
    ) -> Tensor | None:
        hit = slots.get(kind, {}).get(idx)
        if hit is None:
            self.missing.append(self.ref(prefix, kind, idx, bare))
            return None
        return hit[1]


def _finish(
    model: nn.Module,
    spec: AdapterSpec,
    conv: _Conversion,
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

    problems: list[str] = []
    if conv.missing:
        problems.append(f"  missing keys ({len(conv.missing)}): {_head(sorted(conv.missing))}")
    if conv.unexpected:
        problems.append(
            f"  unexpected keys ({len(conv.unexpected)}): {_head(sorted(conv.unexpected))}"
        )
    if conv.conflicts:
        problems.append(f"  conflicts ({len(conv.conflicts)}): {_head(conv.conflicts)}")
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


def import_talklora_reference(
    model: nn.Module,
    source: Mapping[str, Tensor] | str | os.PathLike[str],
    *,
    adapter_name: str | None = None,
    groups: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[AdapterSpec, dict[str, AdaptedLinear]]:
    """Inject TalkLoRA (shared B, s = 1) where the checkpoint has layers, and load its tensors.

    `groups` overrides the module type -> B group rule (e.g. {"o_proj": "q"}). Returns (spec, layers).
    Raises CheckpointError listing missing / unexpected reference keys and shape conflicts.
    """
    state = read_state(source)
    b_kinds = {f"lora_B_{g}" for g in TALKLORA_GROUPS}
    layer_kinds = {"lora_A", "lora_A_experts", "lora_A_talk", "lora_A_route", "lora_B"}
    parsed = _parse(state, layer_kinds | b_kinds, adapter_name)
    conv = _Conversion(unexpected=list(parsed.unexpected), adapter=parsed.adapter)
    bgroups: dict[str, dict[int | None, tuple[str, Tensor]]] = {}  # "lora_B_q" -> {i: (key, B_i)}
    bprefix: dict[str, str] = {}
    for p, slots in parsed.layers.items():
        for kind in set(slots) & b_kinds:
            if kind in bgroups:
                conv.unexpected += [k for k, _ in slots[kind].values()]
            else:
                bgroups[kind], bprefix[kind] = slots[kind], p
    layer_prefixes = [p for p, s in parsed.layers.items() if set(s) & layer_kinds]
    found, unresolved = _resolve(model, layer_prefixes)
    for p in unresolved:
        conv.unexpected += [k for slot in parsed.layers[p].values() for k, _ in slot.values()]
    if not found:
        raise CheckpointError(
            f"no TalkLoRA layer of the checkpoint matches a linear layer of the model: {_head(sorted(state))}"
        )
    first = next(iter(found))
    rank = int(_one(parsed, first, "lora_A").shape[0])
    experts = int(_one(parsed, first, "lora_A_talk").shape[0])
    groups = dict(groups or {})
    used_groups: set[str] = set()
    per_type_b: dict[str, list[tuple[str, Tensor]]] = {}
    for prefix, name in found.items():
        slots, mtype = parsed.layers[prefix], name.rsplit(".", 1)[-1]
        if mtype not in conv.targets:
            conv.targets.append(mtype)
        A = conv.need(slots, "lora_A", None, prefix)
        T = conv.need(slots, "lora_A_talk", None, prefix)
        W = conv.need(slots, "lora_A_route", None, prefix)
        K = [conv.need(slots, "lora_A_experts", i, prefix) for i in range(experts)]
        extra = sorted(set(slots.get("lora_A_experts", {})) - set(range(experts)), key=str)
        conv.unexpected += [slots["lora_A_experts"][i][0] for i in extra]
        if A is not None:
            conv.put(f"{name}.A.weight", A, conv.ref(prefix, "lora_A"))
        if T is not None:
            conv.put(f"{name}.T.weight", T, conv.ref(prefix, "lora_A_talk"))
        if W is not None:
            conv.put(f"{name}.router.logits.weight", W, conv.ref(prefix, "lora_A_route"))
        if all(k is not None for k in K):
            if len({tuple(k.shape) for k in K if k is not None}) != 1:
                conv.conflicts.append(
                    f"{prefix}.lora_A_experts.*: shapes {[tuple(k.shape) for k in K if k is not None]}"
                )
            else:
                conv.put(
                    f"{name}.K.weight",
                    torch.stack([k for k in K if k is not None]),
                    f"{prefix}.lora_A_experts.*",
                )
        if "lora_B" in slots:  # the per-layer alias of the group's B
            per_type_b.setdefault(mtype, [])
            local = [slots["lora_B"].get(i) for i in range(experts)]
            if any(x is None for x in local) or len(slots["lora_B"]) != experts:
                conv.conflicts.append(
                    f"{prefix}.lora_B.*: expected indices 0..{experts - 1}, got {sorted(slots['lora_B'], key=str)}"
                )
            else:
                per_type_b[mtype].append(
                    (prefix, torch.cat([x[1] for x in local if x is not None], dim=1))
                )
    for mtype in conv.targets:
        g = groups.get(mtype) or talklora_group(mtype)
        if g is None:
            conv.conflicts.append(
                f"module type {mtype!r}: no B group (reference rule: one of {TALKLORA_GROUPS} in the name); pass groups="
            )
            continue
        used_groups.add(g)
        B: Tensor | None = None
        bkind = f"lora_B_{g}"
        if bkind in bgroups:
            extra_b = sorted(set(bgroups[bkind]) - set(range(experts)), key=str)
            conv.unexpected += [bgroups[bkind][i][0] for i in extra_b]
            blocks = [conv.need(bgroups, bkind, i, bprefix.get(bkind, "")) for i in range(experts)]
            if all(b is not None for b in blocks):
                B = torch.cat([b for b in blocks if b is not None], dim=1)  # (m, r) = [B_1 ... B_E]
                conv.put(f"{SHARED}{mtype}.B.weight", B, f"lora_B_{g}.*")
        for prefix, alias in per_type_b.get(mtype, []):
            if B is None:
                B = alias
                conv.put(f"{SHARED}{mtype}.B.weight", B, f"{prefix}.lora_B.*")
            elif alias.shape != B.shape or not torch.equal(alias, B):
                conv.conflicts.append(
                    f"{prefix}.lora_B.*: differs from the shared B of group {g!r}"
                )
        if B is None:
            conv.missing.append(conv.ref(bprefix.get(bkind, ""), bkind, f"<0..{experts - 1}>"))
    for bkind, slot in bgroups.items():
        if bkind[len("lora_B_") :] not in used_groups:
            conv.unexpected += [k for k, _ in slot.values()]
    spec = AdapterSpec(
        arch="talklora",
        targets=tuple(conv.targets),
        rank=rank,
        experts=experts,
        shared_b=True,
        scale=1.0,
    )
    what = "TalkLoRA reference checkpoint"
    return spec, _finish(model, spec, conv, what, dtype, device)


def import_comol_reference(
    model: nn.Module,
    source: Mapping[str, Tensor] | str | os.PathLike[str],
    *,
    adapter_name: str | None = None,
    core_router: bool | None = None,
    scale: float = 1.0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[AdapterSpec, dict[str, AdaptedLinear]]:
    """Inject CoMoL where the checkpoint has layers and load its tensors (cores transposed).

    `core_router` is read from the router's width unless given (needed only when r = n). `scale` is
    the reference's lora_alpha / r (1 in its configs). Returns (spec, layers).
    """
    state = read_state(source)
    kinds = {"lora_A", "lora_B", "lora_Cores", "lora_router"}
    parsed = _parse(state, kinds, adapter_name)
    conv = _Conversion(unexpected=list(parsed.unexpected), adapter=parsed.adapter)
    found, unresolved = _resolve(model, list(parsed.layers))
    for p in unresolved:
        conv.unexpected += [k for slot in parsed.layers[p].values() for k, _ in slot.values()]
    if not found:
        raise CheckpointError(
            f"no CoMoL layer of the checkpoint matches a linear layer of the model: {_head(sorted(state))}"
        )
    first = next(iter(found))
    A0 = _one(parsed, first, "lora_A")
    rank, n0 = int(A0.shape[0]), int(A0.shape[1])
    cores_n = len(parsed.layers[first].get("lora_Cores", {}))
    if cores_n == 0:
        raise CheckpointError(
            f"layer {first!r}: no lora_Cores.<i>; cannot infer the number of cores"
        )
    if core_router is None:
        width = int(_one(parsed, first, "lora_router").shape[1])
        if rank == n0:
            raise CheckpointError(
                f"r = n = {rank}: the router's width cannot tell core routing; pass core_router="
            )
        core_router = width == rank
    for prefix, name in found.items():
        slots, mtype = parsed.layers[prefix], name.rsplit(".", 1)[-1]
        if mtype not in conv.targets:
            conv.targets.append(mtype)
        A = conv.need(slots, "lora_A", None, prefix)
        B = conv.need(slots, "lora_B", None, prefix)
        W = conv.need(slots, "lora_router", None, prefix)
        C = [conv.need(slots, "lora_Cores", i, prefix, bare=True) for i in range(cores_n)]
        extra = sorted(set(slots.get("lora_Cores", {})) - set(range(cores_n)), key=str)
        conv.unexpected += [slots["lora_Cores"][i][0] for i in extra]
        if A is not None:
            conv.put(f"{name}.A.weight", A, conv.ref(prefix, "lora_A"))
        if B is not None:
            conv.put(f"{name}.B.weight", B, conv.ref(prefix, "lora_B"))
        if W is not None:
            conv.put(f"{name}.router.logits.weight", W, conv.ref(prefix, "lora_router"))
        if all(c is not None for c in C):
            if len({tuple(c.shape) for c in C if c is not None}) != 1:
                conv.conflicts.append(
                    f"{prefix}.lora_Cores.*: shapes {[tuple(c.shape) for c in C if c is not None]}"
                )
            else:  # the reference applies hᵀ Cores_i = (Cores_iᵀ h)ᵀ: our M_i = Cores_iᵀ
                cores = torch.stack([c.transpose(-1, -2) for c in C if c is not None])
                conv.put(f"{name}.cores", cores, f"{prefix}.lora_Cores.* (transposed)")
    spec = AdapterSpec(
        arch="comol",
        targets=tuple(conv.targets),
        rank=rank,
        experts=cores_n,
        core_router=core_router,
        scale=scale,
    )
    return spec, _finish(model, spec, conv, "CoMoL reference checkpoint", dtype, device)
