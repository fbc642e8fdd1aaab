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
from proofs_numeric.jsonio import write_json_atomic

from . import options as opt
from . import train_options as to
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

    from .hf_data import collator
    from .hf_train import build_peft_model, make_trainer, run_trainer, training_args
    from .loading import from_pretrained, load_tokenizer

    opts = opts or HFRunOptions()
    _quiet_unless_terminal(opts.progress_stream or sys.stderr)
    tok = load_tokenizer(model_name)
    where = {"data": data, "hf_dataset": hf_dataset, "split": split, "limit": limit}
    train_ds, eval_ds = _datasets(tok, max_length, where, eval_data, eval_fraction, cfg.seed)
    base = from_pretrained(AutoModelForCausalLM, model_name, opts.placement)
    model = build_peft_model(
        base, spec, cfg.seed, opts.placement.load_in_4bit, opts.gradient_checkpointing
    )
    out = Path(out_dir)
    trainer = make_trainer(
        model,
        training_args(cfg, out / "train", opts, eval_ds is not None),
        train_ds,
        eval_ds,
        collator(tok),
        progress=cfg.progress,
        stream=opts.progress_stream,
        aux_loss_weight=cfg.aux_loss_weight,
    )
    result = run_trainer(trainer, out / "train", cfg.steps)
    if result.main_process:
        trainable, total = model.get_nb_trainable_parameters()
        print(
            f"{len(train_ds)} examples; trainable {int(trainable):,} of {int(total):,} parameters"
        )
    trainer.save_model(str(out / "adapter"))  # PEFT save_pretrained (gathered under FSDP/ZeRO-3)
    if result.main_process:
        info: dict[str, Any] = {
            "base_model": model_name,
            "data": data or f"hf:{hf_dataset}[{split}]",
        }
        info.update(examples=len(train_ds), max_length=max_length, step=result.steps)
        info.update(spec=spec.to_dict(), aux_loss_weight=cfg.aux_loss_weight)
        write_json_atomic(out / "adapter" / RUN_INFO, info)
        result.adapter_dir = out / "adapter"
    return result


def _quiet_unless_terminal(stream: Any) -> None:
    """No carriage-return progress bars of transformers in a batch job's log."""
    if not stream.isatty():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _datasets(
    tok: Any,
    max_length: int,
    where: dict[str, Any],
    eval_data: str | None,
    eval_fraction: float,
    seed: int,
) -> tuple[Any, Any]:
    """(train, eval or None): `where`'s records, evaluated on `eval_data` or a held-out fraction."""
    from .hf_data import instruction_dataset

    if not 0.0 <= eval_fraction < 1.0:
        raise MoELoRAError(f"eval_fraction={eval_fraction}: expected a value in [0, 1)")
    train_ds = instruction_dataset(tok, max_length, **where)
    if eval_data is not None:
        return train_ds, instruction_dataset(tok, max_length, data=eval_data)
    if eval_fraction > 0:
        parts = train_ds.train_test_split(test_size=eval_fraction, seed=seed)
        return parts["train"], parts["test"]
    return train_ds, None


def train_command(
    model: str = to.MODEL,
    data: str | None = to.DATA,
    hf_dataset: str | None = to.HF_DATASET,
    split: str = to.SPLIT,
    limit: int | None = to.LIMIT,
    eval_data: str | None = to.EVAL_DATA,
    eval_fraction: float = to.EVAL_FRACTION,
    eval_steps: int | None = to.EVAL_STEPS,
    out: str = to.OUT,
    arch: str = opt.arch_option("talklora"),
    targets: str = to.TARGETS,
    target_regex: str | None = to.TARGET_REGEX,
    rank: int = opt.RANK,
    experts: int = to.EXPERTS,
    expert_rank: int | None = opt.EXPERT_RANK,
    router: str = opt.ROUTER,
    top_k: int | None = opt.TOP_K,
    core_router: bool = opt.CORE_ROUTER,
    shared: bool = opt.SHARED,
    shared_b: bool = opt.SHARED_B,
    shared_ab: bool = opt.SHARED_AB,
    option: opt.OptionList = None,
    scale: float = to.SCALE,
    aux_loss_weight: float = to.AUX_LOSS,
    steps: int = to.STEPS,
    batch_size: int = to.BATCH_SIZE,
    grad_accum: int = to.GRAD_ACCUM,
    lr: float = to.LR,
    warmup: int = to.WARMUP,
    max_length: int = to.MAX_LENGTH,
    seed: int = to.SEED,
    checkpoint_every: int = to.CHECKPOINT_EVERY,
    keep_checkpoints: int = to.KEEP_CHECKPOINTS,
    mixed_precision: str = to.MIXED_PRECISION,
    gradient_checkpointing: bool = to.GRADIENT_CHECKPOINTING,
    report_to: str = to.REPORT_TO,
    logging_steps: int = to.LOGGING_STEPS,
    device: str = opt.DEVICE,
    dtype: str = opt.DTYPE,
    device_map: str | None = opt.DEVICE_MAP,
    load_in_4bit: bool = opt.LOAD_IN_4BIT,
) -> None:
    """Fine-tune adapters on a causal LM with Trainer + PEFT (CPU, GPU, DDP/FSDP/DeepSpeed via accelerate)."""
    _train_from_options(dict(locals()))  # every option by its name


def _train_from_options(args: dict[str, Any]) -> None:
    """`finetune_causal_lm` with the command's options; one line and exit status 2 on bad input."""
    out = args["out"]
    try:
        r = finetune_causal_lm(
            args["model"],
            _spec(args),
            _train_config(args),
            out,
            **{k: args[k] for k in ("data", "hf_dataset", "split", "limit", "max_length")},
            **{k: args[k] for k in ("eval_data", "eval_fraction")},
            opts=_run_options(args),
        )
    except (MoELoRAError, opt.OptionError) as e:
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


# the options `options.spec_kwargs` reads (targets and scale aside)
SPEC_OPTIONS = (
    *("arch", "rank", "experts", "expert_rank", "router", "top_k", "core_router"),
    *("shared", "shared_b", "shared_ab", "option"),
)


def _spec(args: dict[str, Any]) -> AdapterSpec:
    from .hf_train import spec_targets

    kw = opt.spec_kwargs(**{k: args[k] for k in SPEC_OPTIONS})
    kw.update(spec_targets(args["targets"], args["target_regex"]), scale=args["scale"])
    return AdapterSpec(**kw)


def _train_config(args: dict[str, Any]) -> TrainConfig:
    steps = args["steps"]
    return TrainConfig(
        steps=steps,
        batch_size=args["batch_size"],
        grad_accum=args["grad_accum"],
        lr=args["lr"],
        warmup_steps=min(args["warmup"], steps - 1) if steps > 1 else 0,
        seed=args["seed"],
        checkpoint_every=args["checkpoint_every"],
        keep_checkpoints=args["keep_checkpoints"],
        mixed_precision=args["mixed_precision"],
        aux_loss_weight=args["aux_loss_weight"],
    )


def _run_options(args: dict[str, Any]) -> HFRunOptions:
    placement = Placement(**{k: args[k] for k in ("device", "dtype", "device_map", "load_in_4bit")})
    return HFRunOptions(
        placement=placement,
        gradient_checkpointing=args["gradient_checkpointing"],
        eval_steps=args["eval_steps"],
        report_to=args["report_to"],
        logging_steps=args["logging_steps"],
    )
