"""Exact parity with checkpoints laid out as the TalkLoRA and CoMoL reference code saves them.

Synthetic checkpoints use the reference key names. The reference forward passes are re-written here as
literal per-expert loops (independent of `moelora_core`) and attached to the base model with forward
hooks; the imported model must give the same logits, in float64, to 1e-12 relative to the size of the
adapters' effect. A mutated twin (T or the cores transposed) must be refuted by the same comparison.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import tiny_llama
from torch import Tensor, nn
from transformers import LlamaForCausalLM

from moelora_experiments.checkpoint import CheckpointError
from moelora_experiments.inject import adapted_layers
from moelora_experiments.reference_import import (
    import_comol_reference,
    import_talklora_reference,
    read_state,
)

HIDDEN, INTER, LAYERS = 32, 48, 2
TOKENS = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
PLACE = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn"}
PLACE |= {"up_proj": "mlp", "down_proj": "mlp", "gate_proj": "mlp"}
Delta = Callable[[Tensor], Tensor]


def base_model(layers: int = LAYERS, hidden: int = HIDDEN) -> LlamaForCausalLM:
    return tiny_llama(layers=layers, hidden=hidden, intermediate=INTER, dtype=torch.float64)


def module_shape(model: nn.Module, name: str) -> tuple[int, int]:
    lin = model.get_submodule(name)
    assert isinstance(lin, nn.Linear)
    return lin.in_features, lin.out_features


def rand(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64) / shape[-1] ** 0.5


def with_hooks(model: nn.Module, deltas: dict[str, Delta]) -> nn.Module:
    """A copy of `model` whose named linear layers output base(x) + delta(x)."""
    hooked = copy.deepcopy(model)
    for name, delta in deltas.items():
        lin = hooked.get_submodule(name)
        lin.register_forward_hook(lambda _m, args, out, d=delta: out + d(args[0]))
    return hooked


def relative_error(ours: Tensor, ref: Tensor, base: Tensor) -> float:
    return float((ours - ref).abs().max() / (ref - base).abs().max())


# ----- TalkLoRA ----------------------------------------------------------------------------------
TALK_TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
TALK_GROUP = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "up_proj": "up", "down_proj": "down"}


def transposed_twin_error(
    importer: Any, base: nn.Module, state: dict[str, Tensor], kind: str, ref: Tensor
) -> float:
    """The relative error against `ref` of `base` with `state` imported, `kind`'s tensors transposed."""
    twin = {k: (v.T.contiguous() if kind in k else v) for k, v in state.items()}
    wrong = copy.deepcopy(base)
    importer(wrong, twin)
    with torch.no_grad():
        return relative_error(wrong(TOKENS).logits, ref, base(TOKENS).logits)


def talklora_checkpoint(
    model: nn.Module, r: int = 8, E: int = 4, adapter: str | None = "default", seed: int = 0
) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = f".{adapter}" if adapter else ""
    d = r // E
    state: dict[str, Tensor] = {}
    for t in TALK_TARGETS:
        _, m = module_shape(model, f"model.layers.0.{PLACE[t]}.{t}")
        for i in range(E):
            state[f"base_model.lora_B_{TALK_GROUP[t]}{a}.{i}.weight"] = rand(gen, m, d)
    for layer in range(LAYERS):
        for t in TALK_TARGETS:
            name = f"model.layers.{layer}.{PLACE[t]}.{t}"
            n, _ = module_shape(model, name)
            p = f"base_model.model.{name}"
            state[f"{p}.lora_A{a}.weight"] = rand(gen, r, n)
            state[f"{p}.lora_A_talk{a}.weight"] = rand(gen, E, E) * 2.0
            state[f"{p}.lora_A_route{a}.weight"] = rand(gen, E, r) * 3.0
            for i in range(E):
                state[f"{p}.lora_A_experts{a}.{i}.weight"] = rand(gen, d, d)
    return state


def talklora_reference_delta(state: dict[str, Tensor], name: str, E: int, a: str) -> Delta:
    """The reference forward, literally: chunk h into E heads, loop over experts and over heads."""
    p = f"base_model.model.{name}"
    group = TALK_GROUP[name.rsplit(".", 1)[-1]]
    A = state[f"{p}.lora_A{a}.weight"]
    T = state[f"{p}.lora_A_talk{a}.weight"]
    R = state[f"{p}.lora_A_route{a}.weight"]
    K = [state[f"{p}.lora_A_experts{a}.{i}.weight"] for i in range(E)]
    B = [state[f"base_model.lora_B_{group}{a}.{i}.weight"] for i in range(E)]

    def delta(x: Tensor) -> Tensor:
        h = x @ A.T
        heads = torch.chunk(h, E, dim=-1)
        experts = [(heads[i] @ K[i].T) @ B[i].T for i in range(E)]
        talked = [sum(T[i, j] * heads[j] for j in range(E)) for i in range(E)]
        g = torch.softmax(torch.cat(talked, dim=-1) @ R.T, dim=-1)
        out = torch.zeros_like(experts[0])
        for i in range(E):
            out = out + g[..., i : i + 1] * experts[i]
        return out

    return delta


def talklora_reference_model(base: nn.Module, state: dict[str, Tensor], a: str) -> nn.Module:
    names = [
        f"model.layers.{layer}.{PLACE[t]}.{t}" for layer in range(LAYERS) for t in TALK_TARGETS
    ]
    return with_hooks(base, {n: talklora_reference_delta(state, n, 4, a) for n in names})


@pytest.mark.parametrize("adapter", ["default", None])
def test_talklora_import_is_exact(adapter: str | None) -> None:
    base = base_model()
    state = talklora_checkpoint(base, adapter=adapter)
    a = f".{adapter}" if adapter else ""
    with torch.no_grad():
        y0 = base(TOKENS).logits
        ref = talklora_reference_model(base, state, a)(TOKENS).logits
        ours = copy.deepcopy(base)
        spec, layers = import_talklora_reference(ours, state)
        y = ours(TOKENS).logits
    assert spec.arch == "talklora" and spec.shared_b and spec.rank == 8 and spec.experts == 4
    assert spec.scale == 1.0 and spec.targets == TALK_TARGETS and len(layers) == LAYERS * 5
    assert float((ref - y0).abs().max()) > 1e-2  # the adapters do something
    assert relative_error(y, ref, y0) <= 1e-12
    # mutated twin: a checkpoint whose talking modules are transposed is refuted
    assert transposed_twin_error(import_talklora_reference, base, state, "lora_A_talk", ref) > 1e-3


def test_talklora_per_layer_b_aliases() -> None:
    base = base_model()
    state = talklora_checkpoint(base)
    # a full state dict repeats the group's B inside every layer (the layers hold a reference to it)
    full = dict(state)
    for layer in range(LAYERS):
        for t in TALK_TARGETS:
            for i in range(4):
                b = state[f"base_model.lora_B_{TALK_GROUP[t]}.default.{i}.weight"]
                full[
                    f"base_model.model.model.layers.{layer}.{PLACE[t]}.{t}.lora_B.default.{i}.weight"
                ] = b
    ours = copy.deepcopy(base)
    import_talklora_reference(ours, full)
    with torch.no_grad():
        ref = talklora_reference_model(base, state, ".default")(TOKENS).logits
        assert relative_error(ours(TOKENS).logits, ref, base(TOKENS).logits) <= 1e-12
    bad_key = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.default.2.weight"
    full[bad_key] = full[bad_key] + 1.0
    with pytest.raises(CheckpointError, match="differs from the shared B"):
        import_talklora_reference(copy.deepcopy(base), full)


def test_talklora_mismatches_are_listed() -> None:
    base = base_model()
    state = talklora_checkpoint(base)
    gone = "base_model.model.model.layers.1.mlp.up_proj.lora_A_talk.default.weight"
    broken = {k: v for k, v in state.items() if k != gone}
    broken["base_model.model.model.layers.0.self_attn.q_proj.lora_A_gate.default.weight"] = (
        torch.zeros(2)
    )
    broken["base_model.lora_B_q.default.4.weight"] = torch.zeros(32, 2)
    model = copy.deepcopy(base)
    with pytest.raises(CheckpointError) as err:
        import_talklora_reference(model, broken)
    msg = str(err.value)
    assert "missing keys" in msg and gone in msg
    assert "unexpected keys" in msg and "lora_A_gate" in msg and "lora_B_q.default.4.weight" in msg
    assert not adapted_layers(model)
    # a checkpoint for a wider model: shape conflicts, named with their reference keys
    wide = talklora_checkpoint(base_model(hidden=48))
    with pytest.raises(
        CheckpointError, match=r"shape conflicts.*from base_model\.model\.model\.layers"
    ):
        import_talklora_reference(copy.deepcopy(base), wide)
    # two adapters in one file need a choice
    two = state | {k.replace(".default", ".other"): v for k, v in state.items()}
    with pytest.raises(CheckpointError, match="adapter_name"):
        import_talklora_reference(copy.deepcopy(base), two)
    import_talklora_reference(copy.deepcopy(base), two, adapter_name="other")


# ----- CoMoL -------------------------------------------------------------------------------------
COMOL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")


def comol_checkpoint(
    model: nn.Module, core_router: bool, r: int = 8, N: int = 4, seed: int = 1
) -> dict[str, Tensor]:
    """Keys as the reference's saving code writes them (adapter name stripped)."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    for layer in range(LAYERS):
        for t in COMOL_TARGETS:
            name = f"model.layers.{layer}.{PLACE[t]}.{t}"
            n, m = module_shape(model, name)
            p = f"base_model.model.{name}"
            state[f"{p}.lora_A.weight"] = rand(gen, r, n)
            state[f"{p}.lora_B.weight"] = rand(gen, m, r)
            state[f"{p}.lora_router.weight"] = rand(gen, N, r if core_router else n) * 3.0
            for i in range(N):
                state[f"{p}.lora_Cores.{i}"] = rand(gen, r, r)
    return state


def comol_reference_delta(
    state: dict[str, Tensor], name: str, core_router: bool, scale: float
) -> Delta:
    """The reference forward, literally: merge the cores per token, then hᵀ @ core."""
    p = f"base_model.model.{name}"
    A, B = state[f"{p}.lora_A.weight"], state[f"{p}.lora_B.weight"]
    router = state[f"{p}.lora_router.weight"]
    cores = [state[f"{p}.lora_Cores.{i}"] for i in range(router.shape[0])]

    def delta(x: Tensor) -> Tensor:
        h = x @ A.T
        g = torch.softmax((h if core_router else x) @ router.T, dim=-1)
        core = torch.zeros(*h.shape[:-1], h.shape[-1], h.shape[-1], dtype=h.dtype)
        for i, c in enumerate(cores):
            core = core + c * g[..., i].unsqueeze(-1).unsqueeze(-1)
        return (h.unsqueeze(-2) @ core).squeeze(-2) @ B.T * scale

    return delta


@pytest.mark.parametrize("core_router", [True, False])
def test_comol_import_is_exact(core_router: bool) -> None:
    base = base_model()
    state = comol_checkpoint(base, core_router)
    names = [
        f"model.layers.{layer}.{PLACE[t]}.{t}" for layer in range(LAYERS) for t in COMOL_TARGETS
    ]
    with torch.no_grad():
        y0 = base(TOKENS).logits
        ref = with_hooks(
            base, {n: comol_reference_delta(state, n, core_router, 1.0) for n in names}
        )(TOKENS).logits
        ours = copy.deepcopy(base)
        spec, _ = import_comol_reference(ours, state)
        y = ours(TOKENS).logits
    assert (
        spec.arch == "comol"
        and spec.core_router == core_router
        and (spec.rank, spec.experts) == (8, 4)
    )
    assert float((ref - y0).abs().max()) > 1e-2
    assert relative_error(y, ref, y0) <= 1e-12
    # mutated twin: loading the cores as stored (M_i = lora_Cores.i, no transpose) is refuted
    assert transposed_twin_error(import_comol_reference, base, state, "lora_Cores", ref) > 1e-3


def test_comol_scale_and_file_formats(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    base = base_model()
    state = comol_checkpoint(base, True)
    path = tmp_path / "adapter_model.safetensors"
    save_file(state, str(path))
    torch.save(state, tmp_path / "adapter_model.bin")
    assert (
        read_state(path).keys() == read_state(tmp_path / "adapter_model.bin").keys() == state.keys()
    )
    names = [
        f"model.layers.{layer}.{PLACE[t]}.{t}" for layer in range(LAYERS) for t in COMOL_TARGETS
    ]
    ours = copy.deepcopy(base)
    spec, _ = import_comol_reference(ours, tmp_path, scale=0.5)
    assert spec.scale == 0.5
    with torch.no_grad():
        ref = with_hooks(base, {n: comol_reference_delta(state, n, True, 0.5) for n in names})(
            TOKENS
        ).logits
        assert relative_error(ours(TOKENS).logits, ref, base(TOKENS).logits) <= 1e-12


def test_comol_mismatches_are_listed() -> None:
    base = base_model()
    state = comol_checkpoint(base, True)
    gone = "base_model.model.model.layers.0.self_attn.o_proj.lora_Cores.3"
    broken = {k: v for k, v in state.items() if k != gone}
    broken["base_model.model.model.layers.0.self_attn.q_proj.lora_A.bias"] = torch.zeros(8)
    broken["base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight"] = torch.zeros(8, 32)
    model = copy.deepcopy(base)
    with pytest.raises(CheckpointError) as err:
        import_comol_reference(model, broken)
    msg = str(err.value)
    assert gone in msg and "lora_A.bias" in msg and "layers.7" in msg
    assert not adapted_layers(model)
    # fewer layers in the checkpoint than in the model: our missing keys for the layers left out
    short = {k: v for k, v in state.items() if ".layers.1." not in k}
    with pytest.raises(CheckpointError, match=r"missing keys.*model\.layers\.1\."):
        import_comol_reference(copy.deepcopy(base), short)


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "adapter_model.bin"])
def test_a_damaged_reference_file_is_a_checkpoint_error(tmp_path: Path, name: str) -> None:
    from moelora_experiments.reference_keys import read_state

    (tmp_path / name).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        read_state(tmp_path / name)
