"""The embedding behind `moelora_in_comol` on one hand-built case, and its argument check."""

from __future__ import annotations

import pytest
import torch

from moelora_core.errors import ReductionError
from moelora_core.lora import LoRA, LoRAConfig
from moelora_core.moelora import MoELoRA, MoELoRAConfig
from moelora_core.reductions import moelora_to_comol


@pytest.mark.parametrize("router", ["latent", "input"])
def test_block_selector_cores(router: str) -> None:
    cfg = MoELoRAConfig(
        in_features=5,
        out_features=4,
        num_experts=3,
        expert_rank=2,
        router=router,
        top_k=2,  # type: ignore[arg-type]
    )
    mo = MoELoRA(cfg, dtype=torch.float64).randomize_(1)
    co = moelora_to_comol(mo)
    assert co.config.rank == 6 and co.config.core_router == (router == "latent")
    # M_2 selects rows/columns 2..3 only
    expected = torch.zeros(6, 6, dtype=torch.float64)
    expected[2:4, 2:4] = torch.eye(2, dtype=torch.float64)
    assert torch.equal(co.cores[1], expected)
    x = torch.randn(7, 5, dtype=torch.float64)
    torch.testing.assert_close(co(x), mo(x), rtol=0, atol=1e-12)


def test_rejects_other_adapters() -> None:
    with pytest.raises(ReductionError, match="expected a MoELoRA"):
        moelora_to_comol(LoRA(LoRAConfig(in_features=2, out_features=2, rank=1)))  # type: ignore[arg-type]
