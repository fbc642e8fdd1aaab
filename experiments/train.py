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

import json
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from moelora_core.errors import ConfigError, MoELoRAError, input_checks

MakeBatch = Callable[[list[int]], dict[str, Tensor]]  # example indices -> batch of CPU tensors
LossFn = Callable[[nn.Module, dict[str, Tensor]], Tensor]  # (model, batch on device) -> scalar loss
OnStep = Callable[[int, float], None]  # (completed step, loss) -> None

_RESUME_KEYS = (
    "batch_size",
    "grad_accum",
    "lr",
    "weight_decay",
    "warmup_steps",
    "seed",
    "max_grad_norm",
)


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


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories under `out_dir/checkpoints`, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = checkpoints(out_dir)
    return found[-1] if found else None


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


class _Run:
    """State shared by the loop and the checkpoint writer."""

    def __init__(
        self, acc: Any, model: nn.Module, opt: Any, sched: Any, cfg: TrainConfig, out: Path
    ):
        self.acc, self.model, self.opt, self.sched = acc, model, opt, sched
        self.cfg, self.out = cfg, out
        self.losses: list[float] = []

    @property
    def global_batch(self) -> int:
        return self.cfg.batch_size * self.cfg.grad_accum * int(self.acc.num_processes)

    def save(self, step: int, n: int) -> Path:
        from safetensors.torch import save_file

        from .durable import publish_dir, remove_stale

        acc = self.acc
        root = self.out / "checkpoints"
        final = root / f"step-{step:07d}"
        tmp = root / f".tmp-step-{step:07d}"
        if acc.is_main_process:
            remove_stale(root)  # left by a run killed while saving
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        torch.save(_rng_state(), tmp / f"rng-rank{acc.process_index}.pt")
        if acc.is_main_process:
            weights = {
                k: v.detach().cpu().contiguous()
                for k, v in _trainable(acc.unwrap_model(self.model)).items()
            }
            save_file(weights, str(tmp / "trainable.safetensors"))
            torch.save(self.opt.state_dict(), tmp / "optimizer.pt")
            torch.save(self.sched.state_dict(), tmp / "scheduler.pt")
            seen = step * self.global_batch
            state = {
                "step": step,
                "samples_seen": seen,
                "epoch": seen // n,
                "num_examples": n,
                "world_size": int(acc.num_processes),
                "losses": self.losses,
                "config": asdict(self.cfg),
            }
            (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        acc.wait_for_everyone()
        if acc.is_main_process:
            publish_dir(tmp, final)  # every file and both directories fsynced, then renamed
            for old in checkpoints(self.out)[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load(self, ckpt: Path, n: int) -> int:
        from .durable import CheckpointError, load_safetensors, read_json, safe_torch_load

        state = read_json(ckpt / "state.json")
        try:
            saved, step = state["config"], int(state["step"])
            world, count, losses = state["world_size"], state["num_examples"], state["losses"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"{ckpt / 'state.json'}: missing or invalid field ({e}); the checkpoint is damaged"
            ) from None
        if not isinstance(saved, dict):
            raise CheckpointError(f"{ckpt / 'state.json'}: config is not an object; damaged")
        if self.cfg.steps < step:
            raise ConfigError(
                f"steps={self.cfg.steps} but checkpoint {ckpt} is at step {step}; expected steps >= "
                f"{step} (a run can be extended, not shortened)"
            )
        for key in _RESUME_KEYS:
            if saved.get(key) != getattr(self.cfg, key):
                raise ConfigError(
                    f"{key}={getattr(self.cfg, key)!r} but checkpoint {ckpt} was written with {saved.get(key)!r}; "
                    "expected the same training config to resume (or a fresh --out directory)"
                )
        if world != self.acc.num_processes or count != n:
            raise ConfigError(
                f"checkpoint {ckpt}: world_size={world}, num_examples={count}; "
                f"this run has {self.acc.num_processes} and {n}, expected equal to resume"
            )
        weights = load_safetensors(ckpt / "trainable.safetensors")
        params = _trainable(self.acc.unwrap_model(self.model))
        if set(weights) != set(params):
            raise ConfigError(
                f"checkpoint {ckpt}: trainable parameters {sorted(set(weights) ^ set(params))[:5]} differ; "
                "expected the same model and adapter spec"
            )
        optim = safe_torch_load(ckpt / "optimizer.pt")
        sched = safe_torch_load(ckpt / "scheduler.pt")
        rng = safe_torch_load(ckpt / f"rng-rank{self.acc.process_index}.pt")
        try:
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(weights[k].to(p.device, p.dtype))
            self.opt.load_state_dict(optim)
            self.sched.load_state_dict(sched)
            _set_rng_state(rng)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(
                f"checkpoint {ckpt}: its optimizer, scheduler or RNG state does not fit ({e})"
            ) from None
        self.losses = [float(v) for v in losses]
        return step


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
    """Train the `requires_grad` parameters of `model` for `cfg.steps` optimizer steps (AdamW).

    Resumes from the newest checkpoint in `out_dir`. The caller seeds and builds the model identically
    each time (the checkpoint then overwrites the trainable weights). Raises TrainingInterrupted after a
    SIGTERM/SIGINT, once the completed step is checkpointed.
    """
    from accelerate.utils import set_seed

    if num_examples < 1:
        raise ConfigError(f"num_examples={num_examples}: expected >= 1")
    acc = accelerator or make_accelerator(cfg.mixed_precision)
    out = Path(out_dir)
    params = list(_trainable(model).values())
    if not params:
        raise ConfigError(
            "model has no trainable parameter: expected adapters (or a head) with requires_grad"
        )
    set_seed(cfg.seed)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    model, opt = acc.prepare(model, opt)
    run = _Run(acc, model, opt, sched, cfg, out)
    if acc.is_main_process:
        from .durable import remove_stale

        remove_stale(out / "checkpoints")  # temporary directories of a run killed while saving
    acc.wait_for_everyone()
    ckpt = latest_checkpoint(out)
    start = run.load(ckpt, num_examples) if ckpt is not None else 0
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
    model.train()
    width = cfg.batch_size * acc.num_processes  # stream positions per micro-batch, all processes
    last: Path | None = ckpt
    with _stop_signals() as flag, input_checks(False):  # per-call checks off in the hot loop
        for step in range(start, cfg.steps):
            first = step * run.global_batch
            total = 0.0
            for a in range(cfg.grad_accum):
                micro = stream_indices(first + a * width, width, num_examples, cfg.seed)
                mine = micro[acc.process_index :: acc.num_processes]
                batch = {k: v.to(acc.device) for k, v in make_batch(mine).items()}
                with acc.autocast():
                    loss = loss_fn(model, batch) / cfg.grad_accum
                acc.backward(loss)
                total += float(acc.reduce(loss.detach(), reduction="mean"))
            if cfg.max_grad_norm is not None:
                acc.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            run.losses.append(total)
            done = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{total:.4f}")
            if on_step is not None:
                on_step(done, total)
            stop = flag["stop"]
            if acc.num_processes > 1:
                stop = bool(
                    acc.reduce(torch.tensor(float(stop), device=acc.device), reduction="sum") > 0
                )
            if stop or done % cfg.checkpoint_every == 0 or done == cfg.steps:
                last = run.save(done, num_examples)
            if stop:
                bar.close()
                assert last is not None
                raise TrainingInterrupted(done, last)
    bar.close()
    result.steps, result.losses, result.checkpoint = cfg.steps, run.losses, last
    result.seconds = time.perf_counter() - t0
    return result
