"""The native loop's checkpoints: what `train.train` writes and resumes from.

`out/checkpoints/step-NNNNNNN/`: `trainable.safetensors` (the `requires_grad` parameters), `optimizer.pt`,
`scheduler.pt`, `rng-rank{k}.pt` (Python, NumPy, torch CPU and CUDA generators of each process) and
`state.json` (step, samples seen, epoch, losses, config). Each is written into a hidden temporary
directory, fsynced and renamed into place (`durable.publish_dir`); loading reads with
`weights_only=True` and refuses a config that would change the data order or the schedule.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from moelora_core.errors import ConfigError

if TYPE_CHECKING:
    from .train import TrainConfig

__all__ = ["RESUME_KEYS", "RunState", "checkpoints", "latest_checkpoint", "trainable"]

# a resumed run must agree on these (the data order, the schedule, the objective)
RESUME_KEYS = (
    "batch_size",
    "grad_accum",
    "lr",
    "weight_decay",
    "warmup_steps",
    "seed",
    "max_grad_norm",
    "aux_loss_weight",
)


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
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


class RunState:
    """State shared by the loop and the checkpoint writer."""

    def __init__(
        self, acc: Any, model: nn.Module, opt: Any, sched: Any, cfg: TrainConfig, out: Path
    ) -> None:
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
        torch.save(rng_state(), tmp / f"rng-rank{acc.process_index}.pt")
        if acc.is_main_process:
            weights = {
                k: v.detach().cpu().contiguous()
                for k, v in trainable(acc.unwrap_model(self.model)).items()
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

    def _check_resume_keys(self, saved: dict[str, Any], ckpt: Path) -> None:
        """The saved config agrees on RESUME_KEYS (a key older checkpoints lack: its default)."""
        defaults = {f.name: f.default for f in fields(self.cfg)}
        for key in RESUME_KEYS:
            was = saved.get(key, defaults[key])
            if was != getattr(self.cfg, key):
                raise ConfigError(
                    f"{key}={getattr(self.cfg, key)!r} but checkpoint {ckpt} was written with {was!r}; "
                    "expected the same training config to resume (or a fresh --out directory)"
                )

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
        self._check_resume_keys(saved, ckpt)
        if world != self.acc.num_processes or count != n:
            raise ConfigError(
                f"checkpoint {ckpt}: world_size={world}, num_examples={count}; "
                f"this run has {self.acc.num_processes} and {n}, expected equal to resume"
            )
        weights = load_safetensors(ckpt / "trainable.safetensors")
        params = trainable(self.acc.unwrap_model(self.model))
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
            set_rng_state(rng)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(
                f"checkpoint {ckpt}: its optimizer, scheduler or RNG state does not fit ({e})"
            ) from None
        self.losses = [float(v) for v in losses]
        return step
