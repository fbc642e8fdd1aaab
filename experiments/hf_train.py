"""`moelora train` on the standard stack: PEFT adapters trained by `transformers.Trainer` (accelerate underneath).

One process, DDP, FSDP or DeepSpeed come from how it is launched (`accelerate launch --config_file
experiments/configs/<name>.yaml -m moelora_experiments.cli train ...`); gradient accumulation, mixed precision,
gradient checkpointing, evaluation during training and trackers (`report_to`) are Trainer arguments.

Checkpoints (`out/train/checkpoint-N/`) hold the adapter only (`adapter_model.safetensors`,
`adapter_config.json`) with `optimizer.pt`, `scheduler.pt`, `rng_state*.pth` and `trainer_state.json`.
`DurableTrainer` writes each one into a hidden `.tmp-checkpoint-N/` directory, fsyncs every file and
directory and renames it into place, so a kill (even -9) never leaves a half-written checkpoint; a
temporary directory a kill left behind is removed by the next save or resume. Before resuming, every file
of the newest checkpoint is read with `weights_only=True` (`durable`), and a damaged one is reported as a
`CheckpointError`. Resuming with the same arguments on the CPU is bitwise identical to a run that was never
interrupted (tested); a finished run is extended by asking for more `--steps`.

Progress: tqdm on a terminal; otherwise (a batch job's log) one plain line per logging step on stderr.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from torch import nn

from moelora_core.adapter import Adapter
from moelora_core.errors import ConfigError

from .auxiliary import AUX_LOSS_WEIGHT, adapters_of, check_weight, with_auxiliary
from .durable import CheckpointError, load_safetensors, publish_dir, read_json, remove_stale
from .durable import safe_torch_load as _safe_load
from .inject import AdapterSpec
from .loading import Placement
from .train import TrainConfig, resolve_mixed_precision

STAGING = ".tmp-checkpoint-"


def _trainer_cls() -> Any:
    from transformers import Trainer

    class DurableTrainer(Trainer):
        """Trainer whose checkpoints are atomic and durable (staged, fsynced, renamed), and whose
        training loss adds `aux_loss_weight` · Σ the adapters' auxiliary losses."""

        _staging: Path | None = None
        aux_loss_weight: float = AUX_LOSS_WEIGHT
        _adapters: list[Adapter] | None = None

        def compute_loss(
            self,
            model: nn.Module,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            out = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
            if not model.training:  # evaluation reports the task loss alone
                return out
            if self._adapters is None:
                self._adapters = adapters_of(model)
            if isinstance(out, tuple):  # return_outputs: (loss, outputs)
                return with_auxiliary(out[0], self._adapters, self.aux_loss_weight), out[1]
            return with_auxiliary(out, self._adapters, self.aux_loss_weight)

        def _get_output_dir(self, trial: Any) -> str:
            if self._staging is not None:
                return str(self._staging)
            out: str = super()._get_output_dir(trial=trial)
            return out

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            run_dir = Path(super()._get_output_dir(trial=trial))
            step = self.state.global_step
            staging = run_dir / f"{STAGING}{step}"
            if self.args.should_save:
                remove_stale(run_dir, (f"{STAGING}*",))
                staging.mkdir(parents=True)
            self.accelerator.wait_for_everyone()
            self._staging = staging
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging = None
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                from transformers.trainer_utils import rotate_checkpoints

                publish_dir(staging / f"checkpoint-{step}", run_dir / f"checkpoint-{step}")
                remove_stale(run_dir, (f"{STAGING}*",))
                rotate_checkpoints(
                    output_dir=str(run_dir), save_total_limit=self.args.save_total_limit
                )
            self.accelerator.wait_for_everyone()

    return DurableTrainer


def _plain_progress(stream: TextIO) -> Any:
    from transformers import TrainerCallback

    class PlainProgress(TrainerCallback):
        """One line per log event on `stream` (for logs that are not a terminal)."""

        def __init__(self) -> None:
            self.t0 = time.perf_counter()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            keys = ("loss", "eval_loss", "learning_rate", "grad_norm")
            vals = [f"{k} {float(logs[k]):.4g}" for k in keys if k in (logs or {})]
            if not state.is_world_process_zero or not vals:
                return
            pct = 100.0 * state.global_step / max(1, state.max_steps)
            elapsed = time.perf_counter() - self.t0
            line = f"step {state.global_step}/{state.max_steps} ({pct:.0f}%) " + " ".join(vals)
            print(f"{line} {elapsed:.0f}s", file=stream, flush=True)

    return PlainProgress()


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete `checkpoint-N` (after removing temporary directories a kill left)."""
    remove_stale(run_dir, (f"{STAGING}*",))
    found = [p for p in run_dir.glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()]
    return max(found, key=lambda p: int(p.name[11:])) if found else None


def validate_checkpoint(ckpt: Path) -> int:
    """Read every file of a Trainer checkpoint safely; its step. CheckpointError if damaged."""
    state = read_json(ckpt / "trainer_state.json")
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        raise CheckpointError(f"{ckpt / 'trainer_state.json'}: no integer global_step; damaged")
    read_json(ckpt / "adapter_config.json")
    load_safetensors(ckpt / "adapter_model.safetensors")
    for name in ("optimizer.pt", "scheduler.pt"):
        _safe_load(ckpt / name)
    for rng in sorted(ckpt.glob("rng_state*.pth")):
        _safe_load(rng)
    return int(state["global_step"])


@dataclass
class HFRunOptions:
    """What Trainer needs beyond TrainConfig."""

    placement: Placement = field(default_factory=Placement)
    gradient_checkpointing: bool = False
    eval_steps: int | None = None
    report_to: str = "none"
    logging_steps: int = 10
    progress_stream: TextIO | None = None  # None: stderr


def training_args(cfg: TrainConfig, run_dir: Path, opts: HFRunOptions, has_eval: bool) -> Any:
    from transformers import TrainingArguments

    mp = resolve_mixed_precision(cfg.mixed_precision)
    if mp != "no" and opts.placement.torch_device.type == "cpu":
        raise ConfigError(f"mixed_precision={mp!r} on the CPU: expected 'no' or 'auto' there")
    stream = opts.progress_stream or sys.stderr
    return TrainingArguments(
        output_dir=str(run_dir),
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        lr_scheduler_type="linear",
        max_grad_norm=cfg.max_grad_norm or 0.0,
        seed=cfg.seed,
        data_seed=cfg.seed,
        save_strategy="steps",
        save_steps=cfg.checkpoint_every,
        save_total_limit=cfg.keep_checkpoints,
        logging_steps=opts.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=opts.eval_steps or cfg.checkpoint_every if has_eval else None,
        bf16=mp == "bf16",
        fp16=mp == "fp16",
        use_cpu=opts.placement.torch_device.type == "cpu",
        **_checkpointing_args(opts.gradient_checkpointing),
        report_to=opts.report_to,
        disable_tqdm=not (cfg.progress and stream.isatty()),
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
    )


def _checkpointing_args(enabled: bool) -> dict[str, Any]:
    """Gradient checkpointing under the argument names of the installed transformers (v5 renamed them)."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    stem = (
        "activation_checkpointing"
        if "activation_checkpointing" in names
        else "gradient_checkpointing"
    )
    return {stem: enabled, f"{stem}_kwargs": {"use_reentrant": False}}


def make_trainer(
    model: Any,
    args: Any,
    train_ds: Any,
    eval_ds: Any,
    data_collator: Any,
    *,
    progress: bool = True,
    stream: TextIO | None = None,
    aux_loss_weight: float = AUX_LOSS_WEIGHT,
) -> Any:
    """A DurableTrainer with plain progress lines when the stream is not a terminal; its training
    loss adds `aux_loss_weight` · Σ the adapters' auxiliary losses."""
    from transformers.trainer_callback import PrinterCallback

    trainer = _trainer_cls()(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=data_collator,
    )
    trainer.aux_loss_weight = check_weight(aux_loss_weight)
    if progress and not (stream or sys.stderr).isatty():
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(_plain_progress(stream or sys.stderr))
    return trainer


def resume_point(run_dir: Path, steps: int) -> Path | None:
    """The checkpoint to resume from (validated), or None; refuses to shorten a run."""
    last = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if last is None:
        return None
    step = validate_checkpoint(last)
    if steps < step:
        raise ConfigError(
            f"steps={steps} but {last} is at step {step}; expected steps >= {step} "
            "(a run can be extended, not shortened)"
        )
    return last


@dataclass
class HFResult:
    steps: int
    resumed_from: int
    losses: list[float]
    eval_losses: list[float]
    main_process: bool
    adapter_dir: Path | None = None


def run_trainer(trainer: Any, run_dir: Path, steps: int) -> HFResult:
    """Train (resuming from the newest checkpoint under `run_dir`); the losses logged.

    A run whose checkpoint already reached `steps` is not stepped again (Trainer would take one more
    step): its adapter weights and log are loaded from the checkpoint.
    """
    last = resume_point(run_dir, steps)
    start = int(last.name[11:]) if last is not None else 0
    if last is not None and start >= steps:
        from peft.utils import load_peft_weights, set_peft_model_state_dict
        from transformers import TrainerState

        set_peft_model_state_dict(trainer.model, load_peft_weights(str(last)))
        state = TrainerState.load_from_json(str(last / "trainer_state.json"))
        hist, done = state.log_history, int(state.global_step)
    else:
        trainer.train(resume_from_checkpoint=str(last) if last is not None else None)
        hist, done = trainer.state.log_history, int(trainer.state.global_step)
    return HFResult(
        steps=done,
        resumed_from=start,
        losses=[float(h["loss"]) for h in hist if "loss" in h],
        eval_losses=[float(h["eval_loss"]) for h in hist if "eval_loss" in h],
        main_process=bool(trainer.is_world_process_zero()),
    )


def spec_targets(targets: str, target_regex: str | None) -> dict[str, Any]:
    """AdapterSpec target fields from the CLI: comma-separated suffixes, 'all-linear', or a regex."""
    if target_regex is not None:
        return {"target_regex": target_regex}
    return {"targets": tuple(t.strip() for t in targets.split(",") if t.strip())}


def build_peft_model(base: Any, spec: AdapterSpec, seed: int, kbit: bool, ckpt: bool) -> Any:
    """Seeded PEFT model of `spec` on `base` (a k-bit base prepared for training first)."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    from .peft_bridge import peft_config_for

    if kbit:
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=ckpt)
    set_seed(seed)
    return get_peft_model(base, peft_config_for(spec))
