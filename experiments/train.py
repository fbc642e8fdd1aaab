"""A resumable training loop on `accelerate`: CPU, one GPU (bf16 where supported) or DDP processes.

Only the parameters with `requires_grad` are trained, checkpointed and restored (adapters, a task head).

Data order. Examples are drawn from an endless stream: epoch e is a permutation of range(num_examples)
seeded by (seed, e), epochs concatenated. Step t (0-based) consumes stream positions
[t·G, (t+1)·G) with G = batch_size · grad_accum · world_size; micro-batch a of process k takes every
world_size-th index of its slice. The data position is therefore a function of the step, and a resumed
run sees exactly the batches it would have seen.

Checkpoints. Every `checkpoint_every` steps, at the end, and when SIGTERM / SIGINT arrives (after the
step in progress completes), `out_dir/checkpoints/step-NNNNNNN/` is written: `trainable.safetensors`,
`optimizer.pt`, `scheduler.pt`, `rng-rank{k}.pt` (Python, NumPy, torch CPU and CUDA generator states of
each process) and `state.json` (step, samples seen, epoch, losses, config). It is written to a hidden
temporary directory, fsynced (files and directories) and renamed into place (`os.replace`), so a
checkpoint directory is always complete, even after a power loss; a temporary directory left by a kill
is removed on the next save or resume. Resuming loads with `weights_only=True` (`durable.safe_torch_load`:
a planted pickle cannot run code) and reports a damaged checkpoint as a `CheckpointError`.
`train` resumes from the newest one; with the same config the result is bit-identical on CPU to a run
that was never interrupted.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import Tensor, nn

from moelora_core.errors import ConfigError, MoELoRAError, input_checks

from .auxiliary import AUX_LOSS_WEIGHT, adapters_of, check_weight, with_auxiliary
from .train_state import RunState, checkpoints, latest_checkpoint, trainable

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "checkpoints",
    "latest_checkpoint",
    "make_accelerator",
    "stream_indices",
    "train",
]

MakeBatch = Callable[[list[int]], dict[str, Tensor]]  # example indices -> batch of CPU tensors
LossFn = Callable[[nn.Module, dict[str, Tensor]], Tensor]  # (model, batch on device) -> scalar loss
OnStep = Callable[[int, float], None]  # (completed step, loss) -> None


class TrainingInterrupted(MoELoRAError):
    """Raised after SIGTERM/SIGINT once the current step is checkpointed; `step` steps are saved."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(f"training interrupted after step {step}; resume from {checkpoint}")
        self.step, self.checkpoint = step, checkpoint


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int = 32  # per process and micro-batch
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear warm-up, then linear decay to 0 at `steps`
    max_grad_norm: float | None = 1.0
    seed: int = 0
    checkpoint_every: int = 50
    keep_checkpoints: int = 1
    mixed_precision: str = (
        "auto"  # "auto" (bf16 on a bf16-capable GPU, else "no") | "bf16" | "fp16"
    )
    progress: bool = True
    aux_loss_weight: float = AUX_LOSS_WEIGHT  # w in L = L_task + w Σ adapter.auxiliary_loss()

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name}={v!r}: expected an integer >= 1")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ConfigError(
                f"mixed_precision={self.mixed_precision!r}: expected auto, no, bf16 or fp16"
            )
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr}: expected > 0")
        check_weight(self.aux_loss_weight)


@dataclass
class TrainResult:
    steps: int
    losses: list[float] = field(default_factory=list)  # one mean loss per step, from step 1
    seconds: float = 0.0  # wall time of this call (not of earlier, resumed-from calls)
    resumed_from: int = 0
    checkpoint: Path | None = None
    world_size: int = 1
    mixed_precision: str = "no"
    main_process: bool = True


def resolve_mixed_precision(choice: str) -> str:
    """'auto' -> 'bf16' on a CUDA device that supports it, else 'no'."""
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def make_accelerator(mixed_precision: str = "auto") -> Any:
    from accelerate import Accelerator

    return Accelerator(
        mixed_precision=resolve_mixed_precision(mixed_precision), cpu=not torch.cuda.is_available()
    )


def _permutation(n: int, seed: int, epoch: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


def stream_indices(start: int, count: int, n: int, seed: int) -> list[int]:
    """Positions [start, start+count) of the endless seeded stream of example indices."""
    out: list[int] = []
    cache: dict[int, list[int]] = {}
    for q in range(start, start + count):
        e = q // n
        if e not in cache:
            cache[e] = _permutation(n, seed, e)
        out.append(cache[e][q % n])
    return out


@contextmanager
def _stop_signals() -> Iterator[dict[str, bool]]:
    """Record SIGTERM/SIGINT in a flag instead of dying mid-step (main thread only)."""
    flag = {"stop": False}

    def handler(signum: int, frame: FrameType | None) -> None:
        flag["stop"] = True

    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        return max(0.0, (cfg.steps - step) / max(1, cfg.steps - cfg.warmup_steps))

    return f


def train(
    model: nn.Module,
    num_examples: int,
    make_batch: MakeBatch,
    loss_fn: LossFn,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    accelerator: Any = None,
    on_step: OnStep | None = None,
    desc: str = "train",
) -> TrainResult:
    """Train the `requires_grad` parameters of `model` for `cfg.steps` optimizer steps (AdamW) on
    `loss_fn` + `cfg.aux_loss_weight` · Σ the adapters' auxiliary losses.

    Resumes from the newest checkpoint in `out_dir`. The caller seeds and builds the model identically
    each time (the checkpoint then overwrites the trainable weights). Raises TrainingInterrupted after a
    SIGTERM/SIGINT, once the completed step is checkpointed.
    """
    if num_examples < 1:
        raise ConfigError(f"num_examples={num_examples}: expected >= 1")
    run = _prepare(model, cfg, Path(out_dir), accelerator)
    ckpt = latest_checkpoint(run.out)
    start = run.load(ckpt, num_examples) if ckpt is not None else 0
    acc = run.acc
    result = TrainResult(
        steps=start,
        resumed_from=start,
        world_size=int(acc.num_processes),
        mixed_precision=str(acc.mixed_precision),
        main_process=bool(acc.is_main_process),
    )
    t0 = time.perf_counter()
    if start >= cfg.steps:
        result.losses, result.checkpoint = run.losses, ckpt
        return result
    from tqdm.auto import tqdm

    show = cfg.progress and acc.is_main_process and sys.stderr.isatty()
    bar = tqdm(total=cfg.steps, initial=start, desc=desc, disable=not show, dynamic_ncols=True)
    step = _Stepper(run, num_examples, make_batch, loss_fn)
    last: Path | None = ckpt
    with _stop_signals() as flag, input_checks(False):  # per-call checks off in the hot loop
        for done in range(start + 1, cfg.steps + 1):
            total = step(done - 1)
            bar.update(1)
            bar.set_postfix(loss=f"{total:.4f}")
            if on_step is not None:
                on_step(done, total)
            stop = _any_process(acc, flag["stop"])
            if stop or done % cfg.checkpoint_every == 0 or done == cfg.steps:
                last = run.save(done, num_examples)
                if stop:
                    bar.close()
                    raise TrainingInterrupted(done, last)
    bar.close()
    result.steps, result.losses, result.checkpoint = cfg.steps, run.losses, last
    result.seconds = time.perf_counter() - t0
    return result


def _prepare(model: nn.Module, cfg: TrainConfig, out: Path, accelerator: Any) -> RunState:
    """Seed, build AdamW and its schedule, `accelerate.prepare`, clear a killed save's leftovers."""
    from accelerate.utils import set_seed

    acc = accelerator or make_accelerator(cfg.mixed_precision)
    params = list(trainable(model).values())
    if not params:
        raise ConfigError(
            "model has no trainable parameter: expected adapters (or a head) with requires_grad"
        )
    set_seed(cfg.seed)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    model, opt = acc.prepare(model, opt)
    if acc.is_main_process:
        from .durable import remove_stale

        remove_stale(out / "checkpoints")  # temporary directories of a run killed while saving
    acc.wait_for_everyone()
    model.train()
    return RunState(acc, model, opt, sched, cfg, out)


def _any_process(acc: Any, stop: bool) -> bool:
    """True when any process received a stop signal (all processes then checkpoint together)."""
    if acc.num_processes == 1:
        return stop
    flag = torch.tensor(float(stop), device=acc.device)
    return bool(acc.reduce(flag, reduction="sum") > 0)


class _Stepper:
    """One optimizer step: `grad_accum` micro-batches of the seeded stream, clip, AdamW, schedule."""

    def __init__(
        self, run: RunState, num_examples: int, make_batch: MakeBatch, loss_fn: LossFn
    ) -> None:
        self.run, self.n, self.make_batch, self.loss_fn = run, num_examples, make_batch, loss_fn
        self.params = [p for p in run.model.parameters() if p.requires_grad]
        self.adapters = adapters_of(run.model)

    def __call__(self, step: int) -> float:
        """Run step `step` (0-based); its loss, averaged over micro-batches and processes."""
        run, cfg, acc = self.run, self.run.cfg, self.run.acc
        width = (
            cfg.batch_size * acc.num_processes
        )  # stream positions per micro-batch, all processes
        first = step * run.global_batch
        total = 0.0
        for a in range(cfg.grad_accum):
            micro = stream_indices(first + a * width, width, self.n, cfg.seed)
            mine = micro[acc.process_index :: acc.num_processes]
            batch = {k: v.to(acc.device) for k, v in self.make_batch(mine).items()}
            with acc.autocast():
                loss = self.loss_fn(run.model, batch)
                loss = with_auxiliary(loss, self.adapters, cfg.aux_loss_weight) / cfg.grad_accum
            acc.backward(loss)
            total += float(acc.reduce(loss.detach(), reduction="mean"))
        if cfg.max_grad_norm is not None:
            acc.clip_grad_norm_(self.params, cfg.max_grad_norm)
        run.opt.step()
        run.sched.step()
        run.opt.zero_grad(set_to_none=True)
        run.losses.append(total)
        return total
