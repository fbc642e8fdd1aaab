"""`moelora train`: PEFT adapters on a causal LM with `transformers.Trainer` (see `hf_train`).

    moelora train --model DIR --data train.json --arch talklora --targets q_proj,v_proj --steps 1000
    accelerate launch --config_file experiments/configs/ddp.yaml -m moelora_experiments.cli train ...

Writes `out/train/checkpoint-N/` (resumable; adapter-only) and, at the end, `out/adapter/` (PEFT's
`save_pretrained`: `adapter_config.json` naming the method, `adapter_model.safetensors`) with
`moelora_run.json` (data, examples, max_length, steps) beside it for `moelora bounds`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from moelora_core.errors import MoELoRAError

from . import options as opt
from .hf_train import HFResult, HFRunOptions
from .inject import AdapterSpec
from .loading import Placement
from .train import TrainConfig

RUN_INFO = "moelora_run.json"


def finetune_causal_lm(
    model_name: str,
    spec: AdapterSpec,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    data: str | None = None,
    hf_dataset: str | None = None,
    split: str = "train",
    limit: int | None = None,
    max_length: int = 256,
    eval_data: str | None = None,
    eval_fraction: float = 0.0,
    opts: HFRunOptions | None = None,
) -> HFResult:
    """Fine-tune `spec` adapters on a causal LM and save them to out/adapter (resumes out/train)."""
    from transformers import AutoModelForCausalLM

    from .hf_data import collator, instruction_dataset
    from .hf_train import build_peft_model, make_trainer, run_trainer, training_args
    from .loading import from_pretrained, load_tokenizer

    opts = opts or HFRunOptions()
    if not (opts.progress_stream or sys.stderr).isatty():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no carriage-return bars in a batch job's log
    if not 0.0 <= eval_fraction < 1.0:
        raise MoELoRAError(f"eval_fraction={eval_fraction}: expected a value in [0, 1)")
    tok = load_tokenizer(model_name)
    kw: dict[str, Any] = {"data": data, "hf_dataset": hf_dataset, "split": split, "limit": limit}
    train_ds = instruction_dataset(tok, max_length, **kw)
    eval_ds = None
    if eval_data is not None:
        eval_ds = instruction_dataset(tok, max_length, data=eval_data)
    elif eval_fraction > 0:
        parts = train_ds.train_test_split(test_size=eval_fraction, seed=cfg.seed)
        train_ds, eval_ds = parts["train"], parts["test"]
    base = from_pretrained(AutoModelForCausalLM, model_name, opts.placement)
    model = build_peft_model(
        base, spec, cfg.seed, opts.placement.load_in_4bit, opts.gradient_checkpointing
    )
    out = Path(out_dir)
    args = training_args(cfg, out / "train", opts, eval_ds is not None)
    trainer = make_trainer(
        model,
        args,
        train_ds,
        eval_ds,
        collator(tok),
        progress=cfg.progress,
        stream=opts.progress_stream,
    )
    result = run_trainer(trainer, out / "train", cfg.steps)
    if result.main_process:
        total, trainable = _counts(model)
        print(f"{len(train_ds)} examples; trainable {trainable:,} of {total:,} parameters")
    trainer.save_model(str(out / "adapter"))  # PEFT save_pretrained (gathered under FSDP/ZeRO-3)
    if result.main_process:
        info = {
            "base_model": model_name,
            "data": data or f"hf:{hf_dataset}[{split}]",
            "examples": len(train_ds),
            "max_length": max_length,
            "step": result.steps,
            "spec": spec.to_dict(),
        }
        from proofs_numeric.jsonio import write_json_atomic

        write_json_atomic(out / "adapter" / RUN_INFO, info)
        result.adapter_dir = out / "adapter"
    return result


def _counts(model: Any) -> tuple[int, int]:
    trainable, total = model.get_nb_trainable_parameters()
    return int(total), int(trainable)


def train_command(
    model: str = typer.Option(..., "--model", help="Causal LM: a local directory or a hub name."),
    data: str | None = typer.Option(None, "--data", help="LLM-Adapters .json/.jsonl file."),
    hf_dataset: str | None = typer.Option(
        None, "--hf-dataset", help="Or a Hugging Face dataset name."
    ),
    split: str = typer.Option("train", "--split", help="Split of --hf-dataset."),
    limit: int | None = typer.Option(None, "--limit", help="Use the first N records only."),
    eval_data: str | None = typer.Option(None, "--eval-data", help="Held-out .json/.jsonl file."),
    eval_fraction: float = typer.Option(
        0.0, "--eval-fraction", help="Or hold out this fraction of --data for evaluation."
    ),
    eval_steps: int | None = typer.Option(
        None, "--eval-steps", help="Evaluate every N steps (default: --checkpoint-every)."
    ),
    out: str = typer.Option(
        "runs/train", "--out", help="Output directory (resumed if it has checkpoints)."
    ),
    arch: str = typer.Option(
        "talklora", "--arch", help="lora, moelora, hydralora, talklora or comol."
    ),
    targets: str = typer.Option(
        "q_proj,v_proj", "--targets", help="Comma-separated module-name suffixes, or all-linear."
    ),
    target_regex: str | None = typer.Option(
        None, "--target-regex", help="Or one regex, full-matched against module names."
    ),
    rank: int = opt.RANK,
    experts: int = typer.Option(
        4, "--experts", help="Experts E (MoE, TalkLoRA) or cores N (CoMoL)."
    ),
    expert_rank: int | None = opt.EXPERT_RANK,
    router: str = opt.ROUTER,
    top_k: int | None = opt.TOP_K,
    core_router: bool = opt.CORE_ROUTER,
    shared_b: bool = opt.SHARED_B,
    shared_ab: bool = opt.SHARED_AB,
    scale: float = typer.Option(1.0, "--scale", help="s = alpha / r."),
    steps: int = typer.Option(1000, "--steps", help="Optimizer steps (raise it to extend a run)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Per process and micro-batch."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per step."),
    lr: float = typer.Option(3e-4, "--lr", help="Peak learning rate (AdamW)."),
    warmup: int = typer.Option(100, "--warmup", help="Linear warm-up steps."),
    max_length: int = typer.Option(256, "--max-length", help="Tokens per example (truncated)."),
    seed: int = typer.Option(0, "--seed", help="Seed of adapter init and data order."),
    checkpoint_every: int = typer.Option(
        200, "--checkpoint-every", help="Checkpoint every N steps."
    ),
    keep_checkpoints: int = typer.Option(2, "--keep-checkpoints", help="Newest N kept."),
    mixed_precision: str = typer.Option(
        "auto", "--mixed-precision", help="auto, no, bf16 or fp16."
    ),
    gradient_checkpointing: bool = typer.Option(
        False, "--gradient-checkpointing", help="Recompute activations (less memory)."
    ),
    report_to: str = typer.Option(
        "none", "--report-to", help="Trackers: none, all, or e.g. tensorboard,wandb."
    ),
    logging_steps: int = typer.Option(10, "--logging-steps", help="Log every N steps."),
    device: str = opt.DEVICE,
    dtype: str = opt.DTYPE,
    device_map: str | None = opt.DEVICE_MAP,
    load_in_4bit: bool = opt.LOAD_IN_4BIT,
) -> None:
    """Fine-tune adapters on a causal LM with Trainer + PEFT (CPU, GPU, DDP/FSDP/DeepSpeed via accelerate)."""
    try:
        spec = AdapterSpec(
            arch=arch, **spec_targets_cli(targets, target_regex), rank=rank, experts=experts,
            expert_rank=expert_rank, router=router, top_k=top_k, core_router=core_router,
            shared_b=shared_b, shared_ab=shared_ab, scale=scale,
        )  # fmt: skip
        cfg = TrainConfig(
            steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
            warmup_steps=min(warmup, steps - 1) if steps > 1 else 0, seed=seed,
            checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
            mixed_precision=mixed_precision,
        )  # fmt: skip
        placement = Placement(
            device=device, dtype=dtype, device_map=device_map, load_in_4bit=load_in_4bit
        )
        opts = HFRunOptions(
            placement=placement, gradient_checkpointing=gradient_checkpointing,
            eval_steps=eval_steps, report_to=report_to, logging_steps=logging_steps,
        )  # fmt: skip
        r = finetune_causal_lm(
            model, spec, cfg, out, data=data, hf_dataset=hf_dataset, split=split, limit=limit,
            max_length=max_length, eval_data=eval_data, eval_fraction=eval_fraction, opts=opts,
        )  # fmt: skip
    except MoELoRAError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if not r.main_process:
        return
    final = f"{r.losses[-1]:.4f}" if r.losses else "n/a"
    evals = f", eval loss {r.eval_losses[-1]:.4f}" if r.eval_losses else ""
    typer.echo(
        f"{r.steps} steps (resumed from {r.resumed_from}), last logged loss {final}{evals}; "
        f"adapter in {out}/adapter"
    )


def spec_targets_cli(targets: str, target_regex: str | None) -> dict[str, Any]:
    from .hf_train import spec_targets

    return spec_targets(targets, target_regex)
