"""Every architecture as a PEFT method, table-driven on tiny models built from configs (PEFT's own
test_custom_models style): get_peft_model, counting, disable_adapter, save/load (adapter-only), named
adapters, modules_to_save, target forms, merge_and_unload."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from tiny_models import tiny_gpt2, tiny_llama
from torch import Tensor, nn

from moelora_core.adapter import Adapter
from moelora_core.errors import ConfigError
from moelora_experiments.peft_methods import (
    CoMoLPeftConfig,
    HydraLoRAPeftConfig,
    MoELoRAPeftConfig,
    NotMergeableError,
    TalkLoRAPeftConfig,
    routed_layers,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning"),
]

TOKENS = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))


QV = ["q_proj", "v_proj"]
CASES: dict[str, Callable[[], PeftConfig]] = {
    "lora": lambda: LoraConfig(r=8, lora_alpha=16, target_modules=QV),
    "moelora-input": lambda: MoELoRAPeftConfig(target_modules=QV, r=8, num_experts=4),
    "moelora-latent-top2": lambda: MoELoRAPeftConfig(
        target_modules=QV, r=8, router="latent", top_k=2
    ),
    "hydralora": lambda: HydraLoRAPeftConfig(target_modules=QV, r=8, num_experts=2),
    "talklora": lambda: TalkLoRAPeftConfig(target_modules=QV, r=8, num_experts=4),
    "talklora-shared-b": lambda: TalkLoRAPeftConfig(target_modules=QV, r=8, share_b=True),
    "comol": lambda: CoMoLPeftConfig(target_modules=QV, r=4, num_experts=3),
    "comol-no-core-router": lambda: CoMoLPeftConfig(target_modules=QV, r=4, core_router=False),
    "comol-shared-ab": lambda: CoMoLPeftConfig(target_modules=QV, r=4, share_ab=True, top_k=2),
}


def perturb_(model: nn.Module, seed: int = 1) -> None:
    """Random trainable weights (B starts at 0, which would make every comparison trivial)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def logits(model: nn.Module) -> Tensor:
    with torch.no_grad():
        out: Tensor = model(TOKENS).logits
    return out


def expected_trainable(model: nn.Module) -> int:
    """Σ over layers of the closed-form count + each module type's shared part once."""
    total, types = 0, set()
    for layer in routed_layers(model).values():
        a = layer.adapters["default"]
        assert isinstance(a, Adapter)  # the PEFT layer wraps the moelora_core module
        total += a.param_formula_value()
        key = (type(a), a.in_features, a.out_features)
        if key not in types:
            types.add(key)
            total += int(a.shared_param_formula().subs(a.subs()))
    return total


@pytest.mark.parametrize("case", list(CASES))
def test_get_peft_model_counts_and_disables(case: str) -> None:
    base = tiny_llama()
    y0 = logits(base)
    model = get_peft_model(tiny_llama(), CASES[case]())
    assert torch.equal(logits(model), y0)  # B = 0 at initialisation: Δ = 0
    trainable, _ = model.get_nb_trainable_parameters()
    if case != "lora":
        assert trainable == expected_trainable(model)  # shared tensors counted once
    perturb_(model)
    y = logits(model)
    assert float((y - y0).abs().max()) > 1e-3
    with model.disable_adapter():
        assert torch.equal(logits(model), y0)
    assert torch.equal(logits(model), y)


@pytest.mark.parametrize("case", list(CASES))
def test_save_and_reload_adapter_only(case: str, tmp_path: Path) -> None:
    model = get_peft_model(tiny_llama(), CASES[case]())
    perturb_(model)
    y = logits(model)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == case.split("-")[0].upper()
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    n_trainable, _ = model.get_nb_trainable_parameters()
    assert sum(v.numel() for v in saved.values()) == n_trainable  # adapter-only, shared once
    reloaded = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    assert torch.equal(logits(reloaded), y)
    if case.endswith("shared-b") or case.endswith("shared-ab"):  # the aliases are one tensor again
        a0, a1 = (
            layer.adapters["default"] for layer in list(routed_layers(reloaded).values())[::2]
        )
        assert a0.B.weight is a1.B.weight
    # loaded under another name, then switched to
    reloaded.load_adapter(str(tmp_path), adapter_name="other")
    reloaded.set_adapter("other")
    assert torch.equal(logits(reloaded), y)


@pytest.mark.parametrize("case", ["moelora-input", "talklora-shared-b", "comol-shared-ab"])
def test_named_adapters_switch(case: str) -> None:
    model = get_peft_model(tiny_llama(), CASES[case]())
    perturb_(model, seed=1)
    y_a = logits(model)
    model.add_adapter("b", CASES[case]())
    model.set_adapter("b")
    assert all(p.requires_grad == (".b." in n) for n, p in model.named_parameters() if "_" in n)
    perturb_(model, seed=2)
    y_b = logits(model)
    assert float((y_a - y_b).abs().max()) > 1e-3
    model.set_adapter("default")
    assert torch.equal(logits(model), y_a)
    model.delete_adapter("b")
    assert torch.equal(logits(model), y_a)


@pytest.mark.parametrize("case", list(CASES))
def test_merge_and_unload(case: str) -> None:
    model = get_peft_model(tiny_llama(), CASES[case]())
    perturb_(model)
    y = logits(model)
    if case == "lora":
        merged = model.merge_and_unload()
        assert float((logits(merged) - y).abs().max()) < 1e-5
        return
    with pytest.raises(NotMergeableError, match="cannot be merged into a static weight"):
        model.merge_and_unload()
    assert torch.equal(logits(model), y)  # nothing was touched
    plain = model.unload()  # dropping the adapter is always possible
    assert not routed_layers(plain) and torch.equal(logits(plain), logits(tiny_llama()))


def test_modules_to_save_round_trip(tmp_path: Path) -> None:
    cfg = TalkLoRAPeftConfig(target_modules=QV, r=8, modules_to_save=["lm_head"])
    model = get_peft_model(tiny_llama(), cfg)
    perturb_(model)
    y = logits(model)
    model.save_pretrained(tmp_path)
    keys = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert any("lm_head" in k for k in keys)
    assert torch.equal(logits(PeftModel.from_pretrained(tiny_llama(), tmp_path)), y)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("all-linear", 14),  # 7 linear layers per block, lm_head excluded (as PEFT's LoRA)
        (r".*\.(q_proj|down_proj)", 4),
        (["q_proj"], 2),
    ],
)
def test_target_forms(target: Any, expected: int) -> None:
    model = get_peft_model(tiny_llama(), HydraLoRAPeftConfig(target_modules=target, r=4))
    assert len(routed_layers(model)) == expected


def test_gpt2_conv1d_and_two_c_proj_kinds(tmp_path: Path) -> None:
    """GPT-2's attention and MLP c_proj differ in shape: shared parts are per (name, shape)."""
    cfg = CoMoLPeftConfig(target_modules=["c_attn", "c_proj"], r=4, share_ab=True)
    model = get_peft_model(tiny_gpt2(), cfg)
    store = model.base_model.comol_shared["default"]
    assert sorted(store) == ["c_attn_32x96", "c_proj_128x32", "c_proj_32x32"]
    perturb_(model)
    y = logits(model)
    model.save_pretrained(tmp_path)
    assert torch.equal(logits(PeftModel.from_pretrained(tiny_gpt2(), tmp_path)), y)


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ConfigError, match="rank=6"):
        TalkLoRAPeftConfig(target_modules=QV, r=6, num_experts=4)
    with pytest.raises(ConfigError, match="top_k"):
        MoELoRAPeftConfig(target_modules=QV, top_k=5, num_experts=4)
    with pytest.raises(ConfigError, match="bias="):
        CoMoLPeftConfig(target_modules=QV, bias="all")
    with pytest.raises(ConfigError, match="lora_dropout"):
        HydraLoRAPeftConfig(target_modules=QV, lora_dropout=1.5)


def test_bf16_base_gets_fp32_adapters() -> None:
    base = tiny_llama().to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(base, TalkLoRAPeftConfig(target_modules=QV, r=8))
    dtypes = {p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert dtypes == {torch.float32}
    assert logits(model).dtype == torch.bfloat16


def test_talklora_state_dict_holds_t_once(tmp_path: Path) -> None:
    """`T` and `talk.talk` are one Dense: the state dict holds it once, and safetensors can save it."""
    from safetensors.torch import save_file

    from moelora_core import TalkLoRA, TalkLoRAConfig

    t = TalkLoRA(TalkLoRAConfig(in_features=8, out_features=8, rank=4, num_experts=2))
    state = t.state_dict()
    assert "T.weight" in state and "talk.talk.weight" not in state
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "t.safetensors"))
    twin = TalkLoRA(TalkLoRAConfig(in_features=8, out_features=8, rank=4, num_experts=2))
    twin.load_state_dict(load_file(str(tmp_path / "t.safetensors")))  # strict: no missing alias
    assert twin.talk.talk is twin.T and torch.equal(twin.T.weight, t.T.weight)


def test_inject_adapter_in_model_is_refused_clearly() -> None:
    from peft import inject_adapter_in_model

    with pytest.raises(ValueError, match="get_peft_model"):
        inject_adapter_in_model(TalkLoRAPeftConfig(target_modules=QV, r=8), tiny_llama())
