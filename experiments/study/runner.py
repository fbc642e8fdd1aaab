"""Run (or resume) a study: every cell trained, measured and written atomically, then summarised.

Layout under `out/`: `cells/<task>/<budget>/<arch>/seed<k>.json` (one finished cell each, written by
`proofs_numeric.jsonio.write_json_atomic`), `work/` (the training checkpoints of the cell in progress,
deleted when it is done), then `metrics.json`, `report.md` and the plots. A re-run loads every finished
cell and recomputes none; a cell interrupted mid-training restarts from step 0 (its routing snapshots
along training must come from one uninterrupted run).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moelora_core.errors import ConfigError
from proofs_numeric.jsonio import write_json_atomic
from proofs_numeric.threads import torch_threads

from ..inject import AdapterSpec, adapted_layers, trainable_report
from ..measure import capture_inputs, measure_layer
from ..tasks import (
    MINILM,
    TextTask,
    accuracy,
    encode_texts,
    load_encoder,
    model_config,
    text_batches,
)
from ..train import TrainConfig, TrainResult, train
from .data import load_task
from .dynamics import Recorder
from .grid import StudyConfig, budget_specs, target_regex
from .model import auto_threads, build_classifier

AMP_EPS = "0.1"


@dataclass
class Shared:
    encoder: nn.Module
    tokenizer: Any
    hidden: int
    tasks: dict[str, TextTask]


def cell_path(out: Path, task: str, budget: str, arch: str, seed: int) -> Path:
    return out / "cells" / task / budget / arch / f"seed{seed}.json"


def _loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(batch["input_ids"], batch["attention_mask"])
    return nn.functional.cross_entropy(logits.float(), batch["labels"])


def summarise(layers: dict[str, Any]) -> dict[str, float | None]:
    """Scalars per cell (means / maxima over adapted layers) that the statistics compare."""

    def vals(f: Callable[[dict[str, Any]], Any]) -> list[float]:
        out = []
        for m in layers.values():
            try:
                v = f(m)
            except (KeyError, TypeError):
                continue
            if isinstance(v, int | float):
                out.append(float(v))
        return out

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    return {
        "amp": mean(vals(lambda m: m["amplification"][AMP_EPS]["mean"])),
        "amp_identity_talk": mean(
            vals(lambda m: m["amplification_identity_talk"][AMP_EPS]["mean"])
        ),
        "certified_max": max(vals(lambda m: m["bounds"]["upper_centred"]), default=None),
        "searched_max": max(vals(lambda m: m["bounds"]["lower"]), default=None),
        "entropy": mean(vals(lambda m: m["routing"]["entropy_normalised"])),
        "max_share": mean(vals(lambda m: m["routing"]["max_load_share"])),
        "talk_norm": mean(vals(lambda m: m["bounds"]["talk"]["talk_norm"])),
    }


def talk_points(layers: dict[str, Any]) -> list[list[float]]:
    """[‖T‖₂, amp, amp with T = I] per TalkLoRA layer (for the amplification-vs-‖T‖₂ plot)."""
    pts = []
    for m in layers.values():
        try:
            pts.append(
                [
                    float(m["bounds"]["talk"]["talk_norm"]),
                    float(m["amplification"][AMP_EPS]["mean"]),
                    float(m["amplification_identity_talk"][AMP_EPS]["mean"]),
                ]
            )
        except (KeyError, TypeError):
            continue
    return pts


def run_cell(
    cfg: StudyConfig,
    sh: Shared,
    task: str,
    budget: str,
    arch: str,
    seed: int,
    spec: AdapterSpec | None,
    work: Path,
) -> dict[str, Any]:
    """Train one (task, budget, arch, seed) from scratch, measure it, return its record."""
    t0 = time.perf_counter()
    shutil.rmtree(work, ignore_errors=True)
    tk = sh.tasks[task]
    model = build_classifier(sh.encoder, sh.hidden, spec, seed)
    layers = adapted_layers(model)
    tr, (trace, sentences) = _train_cell(cfg, sh, tk, model, seed, work, arch)
    model.eval()
    acc = accuracy(model, sh.tokenizer, tk.test, cfg.max_length)
    t_train = time.perf_counter() - t0
    X = capture_inputs(
        model,
        text_batches(sh.tokenizer, [t for t, _ in tk.test[: cfg.measure_texts]], cfg.max_length),
        max_tokens=cfg.max_tokens,
        layers=layers,
    )
    measured = {
        n: measure_layer(layers[n].adapter, x, seed=seed, scales=cfg.noise) for n, x in X.items()
    }
    shutil.rmtree(work, ignore_errors=True)
    return {
        "task": task,
        "budget": budget,
        "arch": arch,
        "seed": seed,
        "spec": spec.to_dict() if spec is not None else None,
        "trainable": trainable_report(model).to_dict(),
        "accuracy": acc,
        "summary": summarise(measured),
        "talk_points": talk_points(measured),
        "trace": trace,
        "dynamics": sentences,
        "losses": tr.losses,
        "layers": measured,
        "seconds": {"train_eval": round(t_train, 2), "total": round(time.perf_counter() - t0, 2)},
        "device": str(next(model.parameters()).device),
    }


def _train_cell(
    cfg: StudyConfig, sh: Shared, tk: TextTask, model: nn.Module, seed: int, work: Path, arch: str
) -> tuple[TrainResult, tuple[list[dict[str, Any]], dict[str, list[str]]]]:
    """Train `model` on the task, recording routing snapshots along training; (result, trace)."""
    layers = adapted_layers(model)
    texts, labels = [t for t, _ in tk.train], torch.tensor([y for _, y in tk.train])
    probe = text_batches(sh.tokenizer, [t for t, _ in tk.test[: cfg.probe_texts]], cfg.max_length)
    rec = Recorder(layers, capture_inputs(model, probe, max_tokens=cfg.max_tokens, layers=layers))
    rec.record(0)

    def make_batch(idx: list[int]) -> dict[str, torch.Tensor]:
        return {
            **encode_texts(sh.tokenizer, [texts[i] for i in idx], cfg.max_length),
            "labels": labels[idx],
        }

    def on_step(step: int, loss: float) -> None:
        if step % cfg.snapshot_every == 0 or step == cfg.steps:
            rec.record(step)

    tcfg = TrainConfig(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        warmup_steps=min(10, cfg.steps - 1),
        seed=seed,
        checkpoint_every=cfg.steps,
        mixed_precision="no",
        progress=False,
    )
    tr = train(model, len(texts), make_batch, _loss, tcfg, work, on_step=on_step, desc=arch)
    return tr, rec.result()


def load_shared(cfg: StudyConfig) -> Shared:
    if cfg.model != MINILM and not Path(cfg.model).is_dir():
        raise ConfigError(
            f"model={cfg.model!r}: expected {MINILM!r} or a local model directory (offline)"
        )
    tasks = {t: load_task(t, cfg.per_task, cfg.data) for t in cfg.tasks}
    try:
        encoder, tokenizer = load_encoder(cfg.model)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model={cfg.model!r}: not a loadable model directory ({e})") from None
    encoder.float().requires_grad_(False)  # a float16 copy (the GPU run's) trains in float32
    return Shared(encoder, tokenizer, int(model_config(encoder).hidden_size), tasks)


def plan(
    cfg: StudyConfig, hidden: int, num_layers: int
) -> list[tuple[str, str, str, int, AdapterSpec | None, int]]:
    """Cells in run order: task, budget, seed, arch (so partial runs hold complete seed pairs); with
    `cfg.head_only`, first the head trained alone on the frozen encoder (budget "head"), per seed: the
    reference the adapters must beat."""
    cells: list[tuple[str, str, str, int, AdapterSpec | None, int]] = []
    regex = target_regex(num_layers, cfg.adapt_last)
    for task in cfg.tasks:
        if cfg.head_only:
            cells += [(task, "head", "head-only", seed, None, 0) for seed in cfg.seeds]
        for budget in cfg.budgets:
            specs = budget_specs(budget, hidden, cfg.rank, cfg.archs, regex)
            for seed in cfg.seeds:
                for arch in cfg.archs:
                    spec, params = specs[arch]
                    cells.append((task, budget, arch, seed, spec, params))
    return cells


def run_study(
    cfg: StudyConfig,
    out: Path,
    *,
    progress: bool = True,
    report: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> dict[str, Any]:
    """Run the missing cells of the grid, then write metrics.json (and report.md and plots).

    `shard=(i, k)`: run only the cells whose index is i mod k (k processes can share one GPU and the
    CPU measurements; each writes its own cells, then `rebuild_report` gathers them)."""
    i_shard, k_shard = shard
    if not 0 <= i_shard < k_shard:
        raise ConfigError(f"shard={i_shard}/{k_shard}: expected 0 <= i < k")
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    threads = cfg.threads or auto_threads()
    with torch_threads(threads):
        sh = load_shared(cfg)
        cells = plan(cfg, sh.hidden, int(model_config(sh.encoder).num_hidden_layers))
        records, computed = [], 0
        for i, (task, budget, arch, seed, spec, params) in enumerate(cells, 1):
            if (i - 1) % k_shard != i_shard:
                continue
            path = cell_path(out, task, budget, arch, seed)
            if path.exists():
                rec = json.loads(path.read_text(encoding="utf-8"))
            else:
                rec = run_cell(cfg, sh, task, budget, arch, seed, spec, out / f"work{i_shard}")
                rec["params_per_layer"] = params
                write_json_atomic(path, rec)
                computed += 1
                if progress:
                    print(
                        f"[{i}/{len(cells)}] {task}/{budget}/{arch}/seed{seed}: accuracy "
                        f"{rec['accuracy']:.4f}, {rec['seconds']['total']:.1f} s",
                        file=sys.stderr,
                        flush=True,
                    )
            records.append(rec)
    tasks = {k: v.describe() for k, v in sh.tasks.items()}
    return finish(cfg, out, records, computed, time.perf_counter() - t0, threads, tasks, report)


def finish(
    cfg: StudyConfig,
    out: Path,
    records: list[dict[str, Any]],
    computed: int,
    seconds: float,
    threads: int,
    tasks: dict[str, Any],
    report: bool = True,
) -> dict[str, Any]:
    """metrics.json (cells without their per-layer details), the analysis, report.md and plots."""
    metrics: dict[str, Any] = {
        "config": cfg.to_dict(),
        "tasks": tasks,
        "environment": {
            "torch": torch.__version__,
            "threads": threads,
            "device": records[0]["device"] if records else "cpu",
            "machine": platform.machine(),
            "python": platform.python_version(),
            "load_average": list(os.getloadavg()),
        },
        "cells_computed_this_call": computed,
        "seconds_this_call": round(seconds, 2),
        "cells": [{k: v for k, v in r.items() if k != "layers"} for r in records],
    }
    if report:
        from .report import analyse, write_report

        metrics["analysis"] = analyse(metrics)
    write_json_atomic(out / "metrics.json", metrics)
    if report:
        write_report(metrics, out)
    return metrics


def rebuild_report(cfg: StudyConfig, out: Path) -> dict[str, Any]:
    """metrics.json, report.md and plots from the finished cells in `out` that belong to `cfg`."""
    t0 = time.perf_counter()
    keys = [  # `plan`'s order: per task, the head alone (if trained) first, then budget, seed, arch
        key
        for task in cfg.tasks
        for key in (
            [(task, "head", "head-only", seed) for seed in cfg.seeds] if cfg.head_only else []
        )
        + [(task, b, a, seed) for b in cfg.budgets for seed in cfg.seeds for a in cfg.archs]
    ]
    records = [
        json.loads(p.read_text(encoding="utf-8"))
        for p in (cell_path(out, *key) for key in keys)
        if p.exists()
    ]
    old = out / "metrics.json"
    prior: dict[str, Any] = json.loads(old.read_text(encoding="utf-8")) if old.exists() else {}
    if not records:  # e.g. a GPU run's metrics.json alone, analysed where scipy is installed
        wanted = set(keys)
        records = [
            c
            for c in prior.get("cells", [])
            if (c["task"], c["budget"], c["arch"], c["seed"]) in wanted
        ]
    if not records:
        raise ConfigError(f"out={out}: no finished cell of this study (cells/ or metrics.json)")
    return finish(cfg, out, records, 0, time.perf_counter() - t0, 0, prior.get("tasks", {}))
