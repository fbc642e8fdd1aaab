"""Train every architecture with `transformers.Trainer` + PEFT, save, reload, and measure its bounds.

    python docs/examples/peft_train_and_measure.py [OUT_DIR] [STEPS]

A tiny Llama is built from a config (no download), each adapter is a PEFT method (LoRA is PEFT's own
`LoraConfig`; the routed ones come from `moelora_experiments.peft_methods`), trained by a plain `Trainer` on a few
instruction records with completion-only labels, saved with `save_pretrained` (adapter only), reloaded
with `PeftModel.from_pretrained` (the outputs must be identical) and measured with `moelora bounds`.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from moelora_experiments.cli import app
from moelora_experiments.hf_data import collator, instruction_dataset
from moelora_experiments.loading import load_tokenizer
from moelora_experiments.peft_methods import (
    CoMoLPeftConfig,
    HydraLoRAPeftConfig,
    MoELoRAPeftConfig,
    TalkLoRAPeftConfig,
)
from moelora_experiments.tasks import write_tiny_causal_lm

TARGETS = ["q_proj", "v_proj"]
CONFIGS: dict[str, Any] = {
    "lora": lambda: LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS),
    "moelora": lambda: MoELoRAPeftConfig(target_modules=TARGETS, r=4, num_experts=2, top_k=1),
    "hydralora": lambda: HydraLoRAPeftConfig(target_modules=TARGETS, r=4, num_experts=2),
    "talklora": lambda: TalkLoRAPeftConfig(
        target_modules=TARGETS, r=4, num_experts=2, share_b=True
    ),
    "comol": lambda: CoMoLPeftConfig(target_modules=TARGETS, r=4, num_experts=2, share_ab=True),
}
RECORDS = [
    {"instruction": f"What is {i} plus one?", "input": "", "output": str(i + 1)} for i in range(24)
]


def train_one(arch: str, model_dir: Path, data: Path, out: Path, steps: int) -> Path:
    """Trainer + PEFT for `steps` steps; returns the saved adapter directory (checked on reload)."""
    tok = load_tokenizer(str(model_dir))
    dataset = instruction_dataset(tok, 256, data=str(data))
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), CONFIGS[arch]())
    model.print_trainable_parameters()
    args = TrainingArguments(
        output_dir=str(out / arch / "trainer"), max_steps=steps, per_device_train_batch_size=4,
        learning_rate=1e-2, logging_steps=max(1, steps // 2), save_strategy="no", report_to="none",
        use_cpu=True, disable_tqdm=True, remove_unused_columns=False,
    )  # fmt: skip
    Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator(tok)).train()
    adapter = out / arch / "adapter"
    model.save_pretrained(adapter)
    tokens = torch.arange(5, 17).reshape(2, 6)
    model.eval()
    with torch.no_grad():
        before = model(input_ids=tokens).logits
        base = AutoModelForCausalLM.from_pretrained(model_dir)
        after = PeftModel.from_pretrained(base, adapter).eval()(input_ids=tokens).logits
    assert torch.equal(before, after), f"{arch}: the reloaded adapter computes something else"
    return adapter


def main(out: Path, steps: int = 20) -> dict[str, Any]:
    model_dir = write_tiny_causal_lm(out / "tiny-llama", hidden=32, layers=2)
    data = out / "train.json"
    data.write_text(json.dumps(RECORDS), encoding="utf-8")
    results: dict[str, Any] = {}
    for arch in CONFIGS:
        adapter = train_one(arch, model_dir, data, out, steps)
        report = out / arch / "bounds.json"
        args = ["bounds", str(adapter), "--data", str(data), "--texts", "8", "--json", str(report)]
        app(args, standalone_mode=False)  # the `moelora bounds` command line, in this process
        (result,) = json.loads(report.read_text(encoding="utf-8")).values()
        results[arch] = result["layers"]
    return results


if __name__ == "__main__":
    target = (
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="peft-example-"))
    )
    main(target, int(sys.argv[2]) if len(sys.argv) > 2 else 20)
    print(f"adapters and bound reports in {target}")
