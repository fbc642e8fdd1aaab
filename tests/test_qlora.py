"""QLoRA: a 4-bit (bitsandbytes NF4) base trains fp32 routed adapters and is counted correctly.

Runs on the CPU with bitsandbytes >= 0.49 (layer widths must be multiples of its 64-wide blocks);
skipped where bitsandbytes is not installed (`pip install 'moelora-verify[qlora]'`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("bitsandbytes")

from moelora_experiments.hf_train import build_peft_model
from moelora_experiments.inject import AdapterSpec
from moelora_experiments.loading import Placement, from_pretrained

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.mark.parametrize("arch", ["talklora", "comol"])
def test_4bit_base_trains_fp32_adapters(arch: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from moelora_experiments.tasks import write_tiny_causal_lm

    write_tiny_causal_lm(tmp_path, hidden=128, layers=1)
    spec = AdapterSpec(arch=arch, targets=("q_proj", "v_proj"), rank=4, experts=2)
    quant = Placement(device="cpu", dtype="bfloat16", load_in_4bit=True)
    model = build_peft_model(
        from_pretrained(AutoModelForCausalLM, str(tmp_path), quant), spec, 0, True, False
    )
    plain = build_peft_model(
        from_pretrained(AutoModelForCausalLM, str(tmp_path), Placement(device="cpu")),
        spec, 0, False, False,
    )  # fmt: skip
    q_trainable, q_total = model.get_nb_trainable_parameters()
    p_trainable, p_total = plain.get_nb_trainable_parameters()
    assert q_trainable == p_trainable and q_total == p_total  # packed 4-bit weights counted whole
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    model.train()
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads if g is not None)
