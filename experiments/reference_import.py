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

import torch
from torch import Tensor, nn

from .checkpoint import SHARED, CheckpointError, listing
from .inject import AdaptedLinear, AdapterSpec
from .reference_keys import (
    Conversion,
    Parsed,
    Slots,
    finish_import,
    parse_keys,
    read_state,
    resolve_layers,
    single,
)

__all__ = [
    "TALKLORA_GROUPS",
    "import_comol_reference",
    "import_talklora_reference",
    "read_state",
    "talklora_group",
]

Source = Mapping[str, Tensor] | str | os.PathLike[str]
TALKLORA_GROUPS = ("q", "k", "v", "up", "down")
TALKLORA_LAYER = {
    "lora_A": "A.weight",
    "lora_A_talk": "T.weight",
    "lora_A_route": "router.logits.weight",
}
COMOL_LAYER = {"lora_A": "A.weight", "lora_B": "B.weight", "lora_router": "router.logits.weight"}


def talklora_group(module_type: str) -> str | None:
    """The reference's B group of a module: the first of q, k, v, up, down in its name."""
    return next((g for g in TALKLORA_GROUPS if g in module_type), None)


def _layers(
    model: nn.Module, parsed: Parsed, conv: Conversion, prefixes: list[str], arch: str
) -> dict[str, str]:
    """{checkpoint layer prefix: model layer name}; the other layers' keys are unexpected."""
    found, unresolved = resolve_layers(model, prefixes)
    conv.drop(parsed, unresolved)
    if not found:
        keys = sorted(
            k for slots in parsed.layers.values() for s in slots.values() for k, _ in s.values()
        )
        raise CheckpointError(
            f"no {arch} layer of the checkpoint matches a linear layer of the model: "
            f"{listing(keys + parsed.unexpected)}"
        )
    return found


def import_talklora_reference(
    model: nn.Module,
    source: Source,
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
    b_kinds = {f"lora_B_{g}" for g in TALKLORA_GROUPS}
    layer_kinds = {*TALKLORA_LAYER, "lora_A_experts", "lora_B"}
    parsed = parse_keys(read_state(source), layer_kinds | b_kinds, adapter_name)
    conv = Conversion(unexpected=list(parsed.unexpected), adapter=parsed.adapter)
    shared_b = _b_groups(parsed, b_kinds, conv)
    prefixes = [p for p, s in parsed.layers.items() if set(s) & layer_kinds]
    found = _layers(model, parsed, conv, prefixes, "TalkLoRA")
    first = next(iter(found))
    rank = int(single(parsed, first, "lora_A").shape[0])
    experts = int(single(parsed, first, "lora_A_talk").shape[0])
    aliases: dict[str, list[tuple[str, Tensor]]] = {}  # module type -> per-layer copies of B
    for prefix, name in found.items():
        _talklora_layer(conv, parsed.layers[prefix], prefix, name, experts, aliases)
    used: set[str] = set()
    for mtype in conv.targets:
        g = (groups or {}).get(mtype) or talklora_group(mtype)
        if g is None:
            conv.conflicts.append(
                f"module type {mtype!r}: no B group (reference rule: one of {TALKLORA_GROUPS} in "
                "the name); pass groups="
            )
            continue
        used.add(g)
        _talklora_b(conv, mtype, g, shared_b, aliases.get(mtype, []), experts)
    for bkind, (_, slot) in shared_b.items():
        if bkind.removeprefix("lora_B_") not in used:
            conv.unexpected += [k for k, _ in slot.values()]
    spec = AdapterSpec(
        arch="talklora", targets=tuple(conv.targets), rank=rank, experts=experts, shared=True
    )
    return spec, finish_import(model, spec, conv, "TalkLoRA reference checkpoint", dtype, device)


def _b_groups(
    parsed: Parsed, b_kinds: set[str], conv: Conversion
) -> dict[str, tuple[str, dict[int | None, tuple[str, Tensor]]]]:
    """{"lora_B_q": (prefix it was saved under, {i: (key, B_i)})}; a second copy is unexpected."""
    out: dict[str, tuple[str, dict[int | None, tuple[str, Tensor]]]] = {}
    for prefix, slots in parsed.layers.items():
        for kind in set(slots) & b_kinds:
            if kind in out:
                conv.unexpected += [k for k, _ in slots[kind].values()]
            else:
                out[kind] = (prefix, slots[kind])
    return out


def _talklora_layer(
    conv: Conversion,
    slots: Slots,
    prefix: str,
    name: str,
    experts: int,
    aliases: dict[str, list[tuple[str, Tensor]]],
) -> None:
    """One layer: A, T, W_r, the K_i blocks; its copy of the group's B (if saved) into `aliases`."""
    mtype = conv.layer_type(name)
    conv.put_each(name, prefix, slots, TALKLORA_LAYER)
    K = conv.stacked(slots, "lora_A_experts", experts, prefix)  # (E, r/E, r/E)
    if K is not None:
        conv.put(f"{name}.K.weight", K, f"{prefix}.lora_A_experts.*")
    if "lora_B" in slots:  # the per-layer alias of the group's B
        local = [slots["lora_B"].get(i) for i in range(experts)]
        blocks = [x[1] for x in local if x is not None]
        if len(blocks) != experts or len(slots["lora_B"]) != experts:
            got = sorted(slots["lora_B"], key=str)
            conv.conflicts.append(
                f"{prefix}.lora_B.*: expected indices 0..{experts - 1}, got {got}"
            )
        else:
            aliases.setdefault(mtype, []).append((prefix, torch.cat(blocks, dim=1)))


def _talklora_b(
    conv: Conversion,
    mtype: str,
    g: str,
    shared_b: dict[str, tuple[str, dict[int | None, tuple[str, Tensor]]]],
    aliases: list[tuple[str, Tensor]],
    experts: int,
) -> None:
    """The shared B = [B_1 ... B_E] (m, r) of module type `mtype` from group `g`'s blocks, or from a
    layer's copy; every other copy must equal it."""
    bkind = f"lora_B_{g}"
    bprefix, slot = shared_b.get(bkind, ("", {}))
    B: Tensor | None = None
    if slot:
        blocks = conv.indexed({bkind: slot}, bkind, experts, bprefix)
        if blocks is not None:
            B = torch.cat(blocks, dim=1)
            conv.put(f"{SHARED}{mtype}.B.weight", B, f"lora_B_{g}.*")
    for prefix, alias in aliases:
        if B is None:
            B = alias
            conv.put(f"{SHARED}{mtype}.B.weight", B, f"{prefix}.lora_B.*")
        elif alias.shape != B.shape or not torch.equal(alias, B):
            conv.conflicts.append(f"{prefix}.lora_B.*: differs from the shared B of group {g!r}")
    if B is None:
        conv.missing.append(conv.ref(bprefix, bkind, f"<0..{experts - 1}>"))


def import_comol_reference(
    model: nn.Module,
    source: Source,
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
    parsed = parse_keys(read_state(source), {*COMOL_LAYER, "lora_Cores"}, adapter_name)
    conv = Conversion(unexpected=list(parsed.unexpected), adapter=parsed.adapter)
    found = _layers(model, parsed, conv, list(parsed.layers), "CoMoL")
    rank, cores, core_router = _comol_sizes(parsed, next(iter(found)), core_router)
    for prefix, name in found.items():
        slots = parsed.layers[prefix]
        conv.layer_type(name)
        conv.put_each(name, prefix, slots, COMOL_LAYER)
        C = conv.stacked(slots, "lora_Cores", cores, prefix, bare=True)  # (N, r, r)
        if C is not None:  # the reference applies hᵀ Cores_i = (Cores_iᵀ h)ᵀ: our M_i = Cores_iᵀ
            conv.put(f"{name}.cores", C.transpose(-1, -2), f"{prefix}.lora_Cores.* (transposed)")
    spec = AdapterSpec(
        arch="comol",
        targets=tuple(conv.targets),
        rank=rank,
        experts=cores,
        core_router=core_router,
        scale=scale,
    )
    return spec, finish_import(model, spec, conv, "CoMoL reference checkpoint", dtype, device)


def _comol_sizes(parsed: Parsed, first: str, core_router: bool | None) -> tuple[int, int, bool]:
    """(rank r, cores N, core routing) from the first layer's tensors."""
    A0 = single(parsed, first, "lora_A")  # (r, n)
    rank, n0 = int(A0.shape[0]), int(A0.shape[1])
    cores = len(parsed.layers[first].get("lora_Cores", {}))
    if cores == 0:
        raise CheckpointError(
            f"layer {first!r}: no lora_Cores.<i>; cannot infer the number of cores"
        )
    if core_router is None:
        if rank == n0:
            raise CheckpointError(
                f"r = n = {rank}: the router's width cannot tell core routing; pass core_router="
            )
        core_router = int(single(parsed, first, "lora_router").shape[1]) == rank
    return rank, cores, core_router
