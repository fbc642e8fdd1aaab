"""Init conventions and shared-parameter counts (`pytest -m theorems`).

Δ = 0 at initialisation for every architecture (A drawn, B = 0, as LoRA does: fine-tuning starts from
the frozen model), and L layers that share B (TalkLoRA) or A, B (CoMoL) own exactly their per-layer
parameters: the shared ones are counted once per module type, never once per layer.
"""

from __future__ import annotations

import pytest
import torch

from moelora_core import symbols as S
from moelora_core.adapter import Adapter
from moelora_core.comol import CoMoL, CoMoLConfig
from moelora_core.hydralora import HydraLoRA, HydraLoRAConfig
from moelora_core.lora import LoRA, LoRAConfig
from moelora_core.moelora import MoELoRA, MoELoRAConfig
from moelora_core.talklora import TalkLoRA, TalkLoRAConfig

pytestmark = pytest.mark.theorems
F64 = torch.float64


def _fresh() -> list[Adapter]:
    talk_shared = TalkLoRAConfig(in_features=6, out_features=5, rank=4, num_experts=2, share_b=True)
    comol_shared = CoMoLConfig(in_features=6, out_features=5, rank=3, num_cores=3, share_ab=True)
    return [
        LoRA(LoRAConfig(in_features=6, out_features=5, rank=3), dtype=F64),
        MoELoRA(
            MoELoRAConfig(in_features=6, out_features=5, num_experts=3, expert_rank=2), dtype=F64
        ),
        MoELoRA(
            MoELoRAConfig(
                in_features=6, out_features=5, num_experts=3, expert_rank=2, router="latent"
            ),
            dtype=F64,
        ),
        HydraLoRA(
            HydraLoRAConfig(in_features=6, out_features=5, num_experts=3, expert_rank=2),
            dtype=F64,
        ),
        TalkLoRA(TalkLoRAConfig(in_features=6, out_features=5, rank=4, num_experts=2), dtype=F64),
        TalkLoRA(talk_shared, b=TalkLoRA.shared_b(talk_shared, dtype=F64), dtype=F64),
        CoMoL(CoMoLConfig(in_features=6, out_features=5, rank=3, num_cores=3), dtype=F64),
        CoMoL(
            CoMoLConfig(in_features=6, out_features=5, rank=3, num_cores=3, core_router=False),
            dtype=F64,
        ),
        CoMoL(comol_shared, ab=CoMoL.shared_ab(comol_shared, dtype=F64), dtype=F64),
    ]


IDS = [
    "lora",
    "moelora-input",
    "moelora-latent",
    "hydralora",
    "talklora",
    "talklora-shared-b",
    "comol",
    "comol-no-core-router",
    "comol-shared-ab",
]


@pytest.mark.parametrize("adapter", _fresh(), ids=IDS)
def test_delta_is_zero_at_initialisation(adapter: Adapter) -> None:
    x = torch.randn(7, adapter.in_features, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.equal(adapter(x), torch.zeros(7, adapter.out_features, dtype=F64))
    assert torch.equal(adapter.expert_matrices(), torch.zeros_like(adapter.expert_matrices()))
    A = getattr(adapter, "A").weight  # noqa: B009
    assert bool((A != 0).any()), "A must be drawn at init (only B is zero)"


@pytest.mark.parametrize("L", [1, 2, 3])
def test_shared_b_is_counted_once_across_layers(L: int) -> None:
    cfg = TalkLoRAConfig(in_features=6, out_features=5, rank=4, num_experts=2, share_b=True)
    b = TalkLoRA.shared_b(cfg, dtype=F64)
    layers = [TalkLoRA(cfg, b=b, dtype=F64) for _ in range(L)]
    own = sum(layer.num_trainable_params() for layer in layers)
    unique = sum(p.numel() for p in torch.nn.ModuleList(layers).parameters())
    assert own + b.weight.numel() == unique
    per_layer = int(layers[0].param_formula().subs(layers[0].param_subs()))
    assert layers[0].num_trainable_params() == per_layer
    assert unique == L * per_layer + cfg.rank * cfg.out_features
    unshared = TalkLoRA(TalkLoRAConfig(in_features=6, out_features=5, rank=4, num_experts=2))
    assert unshared.num_trainable_params() == per_layer + cfg.rank * cfg.out_features


@pytest.mark.parametrize("L", [1, 2, 3])
def test_shared_ab_is_counted_once_across_layers(L: int) -> None:
    cfg = CoMoLConfig(in_features=6, out_features=5, rank=3, num_cores=2, share_ab=True)
    ab = CoMoL.shared_ab(cfg, dtype=F64)
    layers = [CoMoL(cfg, ab=ab, dtype=F64) for _ in range(L)]
    own = sum(layer.num_trainable_params() for layer in layers)
    unique = sum(p.numel() for p in torch.nn.ModuleList(layers).parameters())
    shared = sum(m.weight.numel() for m in ab)
    assert own + shared == unique
    per_layer = int(layers[0].param_formula().subs(layers[0].param_subs()))
    assert layers[0].num_trainable_params() == per_layer
    assert unique == L * per_layer + int((S.r * (S.n + S.m)).subs(layers[0].param_subs()))
