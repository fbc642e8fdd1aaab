"""Durable, atomic directory writes and safe loading for training checkpoints.

A checkpoint is written into a hidden temporary directory, every file and the directory are fsynced,
the directory is renamed into place (`os.replace`) and the parent directory is fsynced, so after a crash
or power loss a checkpoint directory is either complete or absent. Temporary directories left by a
killed run are removed by the next save or resume (`remove_stale`).

`safe_torch_load` loads with `weights_only=True` (a planted pickle cannot run code), allowing only the
NumPy classes that a NumPy RNG state needs; every read error becomes a `CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from moelora_core.errors import MoELoRAError

__all__ = [
    "CheckpointError",
    "fsync_dir",
    "fsync_tree",
    "publish_dir",
    "read_json",
    "remove_stale",
    "safe_torch_load",
]


class CheckpointError(MoELoRAError):
    """A checkpoint does not fit the model (keys, shapes, architecture) or cannot be read."""


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory, so that the names created or renamed in it survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """fsync every file under `root`, then every directory (deepest first)."""
    dirs: list[str] = []
    for here, _, files in os.walk(root):
        dirs.append(here)
        for name in files:
            with open(os.path.join(here, name), "rb") as f:
                os.fsync(f.fileno())
    for d in reversed(dirs):
        fsync_dir(d)


def publish_dir(tmp: Path, final: Path) -> None:
    """Make the complete directory `tmp` durable and rename it to `final` (replacing an old one)."""
    fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def remove_stale(parent: Path, patterns: Iterable[str] = (".tmp-*",)) -> list[Path]:
    """Remove temporary directories a killed save left in `parent`; returns what was removed."""
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for pattern in patterns:
        for p in parent.glob(pattern):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def _numpy_rng_globals() -> list[Any]:
    """The classes a pickled NumPy RNG state (`np.random.get_state()`) refers to."""
    import numpy as np

    out: list[Any] = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    core = getattr(np, "_core", None) or np.core
    out.append(core.multiarray._reconstruct)
    return out


def safe_torch_load(path: Path, map_location: str | torch.device | None = "cpu") -> Any:
    """`torch.load(path, weights_only=True)` with the NumPy RNG classes allowed; CheckpointError on failure."""
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; expected a complete checkpoint directory")
    try:
        with torch.serialization.safe_globals(_numpy_rng_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle, zip and weights-only errors have no common base class
        first = (str(e).splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"{path}: cannot be loaded safely ({type(e).__name__}: {first}); "
            "the checkpoint is damaged or holds objects other than tensors and plain values"
        ) from None


def read_json(path: Path) -> Any:
    """Parsed JSON of a checkpoint file; CheckpointError if it is missing or not valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: not found; expected a complete checkpoint directory"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the checkpoint is damaged") from None


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; CheckpointError if it is missing or damaged."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path}: not found; expected a complete checkpoint directory")
    try:
        return load_file(str(path))
    except Exception as e:  # SafetensorError, OSError, ...
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({type(e).__name__}: {e}); the checkpoint is damaged"
        ) from None
