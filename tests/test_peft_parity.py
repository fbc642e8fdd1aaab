"""Our LoRA equals PEFT's LoRA on the same weights: s = lora_alpha / r, no dropout, same targets."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny_models import tiny_gpt2, tiny_llama
from torch import Tensor, nn

from moelora_experiments.inject import AdapterSpec, inject_adapters

TOKENS = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))


def peft_and_ours(
    base: nn.Module, targets: tuple[str, ...], r: int, alpha: float, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Logits of the base, of PEFT's LoRA and of ours carrying PEFT's A and B (with `scale`)."""
    ours = copy.deepcopy(base)
    with torch.no_grad():
        y0 = base(TOKENS).logits
    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=list(targets),
        lora_dropout=0.0,
        init_lora_weights=False,
    )
    torch.manual_seed(1)  # PEFT draws A and B (B random too: the update is not 0)
    peft_model = get_peft_model(copy.deepcopy(base), cfg).eval()
    layers = inject_adapters(ours, AdapterSpec(arch="lora", targets=targets, rank=r, scale=scale))
    peft_layers = {
        n: m
        for n, m in peft_model.named_modules()
        if hasattr(m, "lora_A") and "default" in m.lora_A
    }
    assert len(peft_layers) == len(layers)
    with torch.no_grad():
        for name, layer in layers.items():
            src = peft_layers[f"base_model.model.{name}"]
            layer.adapter.A.weight.copy_(src.lora_A["default"].weight)
            layer.adapter.B.weight.copy_(src.lora_B["default"].weight)
        return y0, peft_model(TOKENS).logits, ours(TOKENS).logits


def relative_error(ours: Tensor, ref: Tensor, base: Tensor) -> float:
    return float((ours - ref).abs().max() / (ref - base).abs().max())


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning")  # peft sets it
@pytest.mark.parametrize(
    ("make", "targets"),
    [
        (
            lambda: tiny_llama(dtype=torch.float64),
            ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj"),
        ),
        (
            lambda: tiny_gpt2(dtype=torch.float64),
            ("c_attn", "c_fc"),
        ),  # Conv1D layers (PEFT's fan_in_fan_out)
    ],
)
@pytest.mark.parametrize(("r", "alpha"), [(4, 8.0), (8, 8.0)])
def test_lora_matches_peft(make: object, targets: tuple[str, ...], r: int, alpha: float) -> None:
    base = make()  # type: ignore[operator]
    y0, ref, ours = peft_and_ours(base, targets, r, alpha, scale=alpha / r)
    assert float((ref - y0).abs().max()) > 1e-3  # PEFT's adapters change the output
    assert relative_error(ours, ref, y0) <= 1e-12
    if alpha != r:  # mutated twin: the scale taken as alpha (not alpha / r) is refuted
        _, ref2, wrong = peft_and_ours(base, targets, r, alpha, scale=alpha)
        assert torch.equal(ref2, ref) and relative_error(wrong, ref, y0) > 1e-3
