"""Model-level injection, the trainable-parameter report, and adapter save / load."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tiny_models import tiny_bert, tiny_gpt2, tiny_llama
from torch import nn

from moelora_core import CoMoL, ConfigError, ShapeError, TalkLoRA
from moelora_experiments.checkpoint import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    CheckpointError,
    adapter_state_dict,
    load_adapters,
    read_spec,
    save_adapters,
)
from moelora_experiments.inject import (
    AdaptedLinear,
    AdapterSpec,
    adapted_layers,
    inject_adapters,
    remove_adapters,
    trainable_report,
)

ARCHS = ("lora", "moelora", "hydralora", "talklora", "comol")
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")


def spec_for(
    arch: str, targets: tuple[str, ...] = LLAMA_TARGETS, shared: bool = True
) -> AdapterSpec:
    return AdapterSpec(
        arch=arch,
        targets=targets,
        rank=8,
        experts=4,
        shared_b=shared and arch == "talklora",
        shared_ab=shared and arch == "comol",
    )


def randomize(model: nn.Module, seed: int = 1) -> None:
    for i, layer in enumerate(adapted_layers(model).values()):
        layer.adapter.randomize_(seed + i)


TOKENS = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))


# ----- injection ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_injection_freezes_base_and_is_identity_at_init(arch: str) -> None:
    model = tiny_llama()
    before = model(TOKENS).logits
    layers = inject_adapters(model, spec_for(arch))
    assert len(layers) == 2 * len(LLAMA_TARGETS)
    adapter_ids = {id(p) for layer in layers.values() for p in layer.adapter.parameters()}
    for name, p in model.named_parameters():
        assert p.requires_grad == (id(p) in adapter_ids), name
    # every architecture initialises B = 0, so the adapted model starts as the base model ...
    assert torch.equal(model(TOKENS).logits, before)
    # ... and stops being it once the adapters move (the check above can fail)
    randomize(model)
    assert not torch.allclose(model(TOKENS).logits, before, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_trainable_report_counts_match_closed_form(arch: str) -> None:
    model = tiny_llama()
    inject_adapters(model, spec_for(arch))
    rep = trainable_report(model)
    counted = sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )  # de-duplicated by torch
    assert rep.adapter_trainable == counted == rep.formula_total
    assert rep.per_type == rep.formula_per_type
    assert rep.base_params == sum(p.numel() for p in tiny_llama().parameters())
    assert rep.share_percent == pytest.approx(100 * counted / rep.base_params)
    assert set(rep.per_type) == set(LLAMA_TARGETS) and set(rep.layers_per_type.values()) == {2}


def test_talklora_shared_b_is_one_tensor_per_module_type() -> None:
    model = tiny_llama(layers=3)
    layers = inject_adapters(model, spec_for("talklora"))
    by_type: dict[str, set[int]] = {}
    for layer in layers.values():
        assert isinstance(layer.adapter, TalkLoRA)
        by_type.setdefault(layer.module_type, set()).add(id(layer.adapter.B.weight))
    assert all(len(ids) == 1 for ids in by_type.values())
    assert len(set.union(*by_type.values())) == len(LLAMA_TARGETS)
    rep = trainable_report(model)
    # mutated twin: counting B in every layer (the per-layer formula with r·m) over-counts
    naive = sum(
        int(sum(p.numel() for p in layer.adapter.parameters())) for layer in layers.values()
    )
    assert naive > rep.adapter_trainable == rep.formula_total
    # k_proj is 32 -> 16 under GQA, q_proj 32 -> 32: different types, both fine
    k = layers["model.layers.0.self_attn.k_proj"].adapter
    assert isinstance(k, TalkLoRA) and k.B.weight.shape == (16, 8)


def test_comol_shared_ab_is_one_pair_per_module_type() -> None:
    model = tiny_llama(layers=3)
    layers = inject_adapters(model, spec_for("comol"))
    pairs = {
        (layer.module_type, id(layer.adapter.A.weight), id(layer.adapter.B.weight))
        for layer in layers.values()
    }
    assert len(pairs) == len(LLAMA_TARGETS)
    cores = {
        id(layer.adapter.cores) for layer in layers.values() if isinstance(layer.adapter, CoMoL)
    }
    assert len(cores) == len(layers)  # cores stay per layer
    rep = trainable_report(model)
    assert rep.adapter_trainable == rep.formula_total


def test_bert_and_gpt2_conv1d() -> None:
    bert = tiny_bert()
    inject_adapters(bert, AdapterSpec(arch="comol", targets=("query", "value"), rank=4, experts=2))
    assert set(trainable_report(bert).per_type) == {"query", "value"}
    gpt = tiny_gpt2()
    before = gpt(TOKENS).logits
    layers = inject_adapters(gpt, AdapterSpec(arch="lora", targets=("c_attn", "c_fc"), rank=4))
    assert torch.equal(gpt(TOKENS).logits, before)
    layer = layers["transformer.h.0.attn.c_attn"]
    assert (layer.in_features, layer.out_features) == (32, 96)  # Conv1D stores weight (in, out)
    layer.adapter.randomize_(3)
    x = torch.randn(3, 32)
    assert torch.allclose(layer(x), layer.base(x) + layer.adapter(x), atol=1e-6)


def test_sharing_needs_equal_shapes_within_a_type() -> None:
    # GPT-2's attention c_proj is 32 -> 32, its MLP c_proj 128 -> 32
    with pytest.raises(ShapeError, match="c_proj"):
        inject_adapters(
            tiny_gpt2(), AdapterSpec(arch="talklora", targets=("c_proj",), rank=8, shared_b=True)
        )
    inject_adapters(
        tiny_gpt2(), AdapterSpec(arch="talklora", targets=("c_proj",), rank=8)
    )  # unshared: fine
    spec = AdapterSpec(arch="talklora", target_regex=r".*\.c_proj", rank=8, shared_b=True)
    with pytest.raises(ShapeError):  # without a group the regex's type is the last name part
        inject_adapters(tiny_gpt2(), spec)
    spec = AdapterSpec(
        arch="talklora", target_regex=r".*\.(attn\.c_proj|mlp\.c_proj)", rank=8, shared_b=True
    )
    gpt = tiny_gpt2()
    inject_adapters(gpt, spec)  # the first group names the type: two types, one shared B each
    assert set(trainable_report(gpt).per_type) == {"attn.c_proj", "mlp.c_proj"}


def test_no_match_lists_available_layers() -> None:
    with pytest.raises(ConfigError, match="q_proj") as err:
        inject_adapters(tiny_llama(), AdapterSpec(arch="lora", targets=("query",)))
    assert "down_proj" in str(err.value)
    with pytest.raises(ConfigError, match=r"\['nope'\]"):  # one good, one bad target
        inject_adapters(tiny_llama(), AdapterSpec(arch="lora", targets=("q_proj", "nope")))
    model = tiny_llama()
    inject_adapters(model, AdapterSpec(arch="lora", targets=("q_proj",)))
    with pytest.raises(ConfigError, match="already has adapters"):
        inject_adapters(model, AdapterSpec(arch="lora", targets=("v_proj",)))


def test_regex_targets_and_remove() -> None:
    model = tiny_llama()
    layers = inject_adapters(
        model, AdapterSpec(arch="lora", target_regex=r"model\.layers\.1\..*_proj", rank=2)
    )
    assert all(n.startswith("model.layers.1.") for n in layers) and len(layers) == 7
    assert remove_adapters(model) == 7 and not adapted_layers(model)
    assert isinstance(model.model.layers[1].self_attn.q_proj, nn.Linear)


def test_output_keeps_base_dtype() -> None:
    model = tiny_llama().to(torch.bfloat16)
    layers = inject_adapters(model, spec_for("talklora"), dtype=torch.float32)
    layer = next(iter(layers.values()))
    assert layer.adapter.A.weight.dtype == torch.float32
    assert layer(torch.randn(2, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert model(TOKENS).logits.dtype == torch.bfloat16


def test_spec_json_roundtrip_and_validation() -> None:
    spec = AdapterSpec(
        arch="comol",
        targets=("q_proj", "v_proj"),
        rank=16,
        experts=8,
        core_router=False,
        shared_ab=True,
    )
    assert AdapterSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ConfigError, match="arch"):
        AdapterSpec(arch="dora", targets=("q_proj",))
    with pytest.raises(ConfigError, match="exactly one"):
        AdapterSpec(arch="lora", targets=("q_proj",), target_regex="q.*")
    with pytest.raises(ConfigError, match="shared_b"):
        AdapterSpec(arch="lora", targets=("q_proj",), shared_b=True)
    with pytest.raises(ConfigError, match="expert_rank"):
        AdapterSpec(arch="moelora", targets=("q_proj",), rank=2, experts=4)
    with pytest.raises(ConfigError, match="wrong_key"):
        AdapterSpec.from_dict({"arch": "lora", "targets": ["q"], "wrong_key": 1})
    with pytest.raises(ConfigError, match="not a string"):  # not the characters q,_,p,r,o,j
        AdapterSpec(arch="lora", targets="q_proj")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="rank=6"):  # the architecture's own check
        AdapterSpec(arch="talklora", targets=("q_proj",), rank=6, experts=4)
    for bad in ({"rank": 2.5}, {"experts": True}, {"top_k": 0}, {"shared_b": "yes"}):
        with pytest.raises(ConfigError):
            AdapterSpec(arch="talklora", targets=("q_proj",), **bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="scale"):
        AdapterSpec(arch="lora", targets=("q_proj",), scale=float("nan"))


# ----- save / load -------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_roundtrip(arch: str, tmp_path: Path) -> None:
    model = tiny_llama()
    base_state = copy.deepcopy(model.state_dict())
    spec = spec_for(arch)
    inject_adapters(model, spec)
    randomize(model)
    expected = model(TOKENS).logits
    save_adapters(model, tmp_path, spec)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    )  # no temp
    assert read_spec(tmp_path) == spec
    fresh = tiny_llama()
    fresh.load_state_dict(base_state)
    load_adapters(fresh, tmp_path)
    assert torch.equal(fresh(TOKENS).logits, expected)
    # the loaded adapters train: every adapter parameter is trainable, nothing else
    assert trainable_report(fresh).adapter_trainable == sum(
        p.numel() for p in fresh.parameters() if p.requires_grad
    )


def test_shared_tensors_saved_once(tmp_path: Path) -> None:
    model = tiny_llama(layers=3)
    spec = spec_for("talklora")
    inject_adapters(model, spec)
    save_adapters(model, tmp_path, spec)
    with safe_open(str(tmp_path / ADAPTER_WEIGHTS), framework="pt") as f:
        keys = list(f.keys())
    shared = [k for k in keys if k.startswith("__shared__.")]
    assert sorted(shared) == sorted(f"__shared__.{t}.B.weight" for t in LLAMA_TARGETS)
    assert not [k for k in keys if k.endswith(".B.weight") and not k.startswith("__shared__.")]
    n_saved = sum(v.numel() for v in adapter_state_dict(model).values())
    assert n_saved == trainable_report(model).adapter_trainable


def test_load_into_mismatched_model_lists_keys_and_shapes(tmp_path: Path) -> None:
    model = tiny_llama(layers=2)
    spec = spec_for("talklora")
    inject_adapters(model, spec)
    save_adapters(model, tmp_path, spec)
    other = tiny_llama(layers=3, kv_heads=4)  # one more layer, k/v 32 -> 32 instead of 32 -> 16
    with pytest.raises(CheckpointError) as err:
        load_adapters(other, tmp_path)
    msg = str(err.value)
    assert "missing keys" in msg and "model.layers.2.self_attn.q_proj.A.weight" in msg
    assert (
        "shape conflicts" in msg
        and "__shared__.k_proj.B.weight: checkpoint (16, 8), model (32, 8)" in msg
    )
    assert not adapted_layers(other)  # the model is left as it was
    smaller = tiny_llama(layers=1)
    with pytest.raises(CheckpointError, match=r"unexpected keys.*model\.layers\.1\."):
        load_adapters(smaller, tmp_path)


def test_load_into_other_architecture_fails(tmp_path: Path) -> None:
    model = tiny_llama()
    spec = spec_for("talklora")
    inject_adapters(model, spec)
    save_adapters(model, tmp_path, spec)
    lora = tiny_llama()
    inject_adapters(lora, spec_for("lora"))
    with pytest.raises(CheckpointError, match="unexpected keys") as err:
        load_adapters(lora, tmp_path)
    assert "missing keys" in str(err.value) and "arch='lora'" in str(err.value)
    # same keys and shapes, different hyper-parameter (scale): still refused
    scaled = tiny_llama()
    inject_adapters(
        scaled,
        AdapterSpec(arch="talklora", targets=LLAMA_TARGETS, rank=8, shared_b=True, scale=2.0),
    )
    with pytest.raises(CheckpointError, match="hyper-parameters"):
        load_adapters(scaled, tmp_path)


def test_torn_checkpoint_and_head_roundtrip(tmp_path: Path) -> None:
    model = tiny_llama()
    spec = spec_for("lora")
    inject_adapters(model, spec)
    model.lm_head.weight.requires_grad_(True)  # a trainable task head
    randomize(model)
    with torch.no_grad():
        model.lm_head.weight.mul_(2.0)
    expected = model(TOKENS).logits
    save_adapters(model, tmp_path, spec, include_trainable_base=True, extra={"step": 3})
    fresh = tiny_llama()
    load_adapters(fresh, tmp_path)
    assert torch.equal(fresh(TOKENS).logits, expected) and fresh.lm_head.weight.requires_grad
    cfg = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    assert cfg["extra"] == {"step": 3}
    cfg["spec"]["rank"] = 4  # a config from another save than the weights
    (tmp_path / ADAPTER_CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="differs"):
        load_adapters(tiny_llama(), tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_adapters(tiny_llama(), tmp_path / "nowhere")


def test_adapted_linear_is_base_plus_delta() -> None:
    model = tiny_llama()
    layers = inject_adapters(model, spec_for("comol"))
    randomize(model)
    layer = layers["model.layers.1.mlp.down_proj"]
    assert isinstance(layer, AdaptedLinear) and layer.module_type == "down_proj"
    x = torch.randn(4, 48)
    assert torch.allclose(layer(x), layer.base(x) + layer.adapter(x), atol=1e-6)
