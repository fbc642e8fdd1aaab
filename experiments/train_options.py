"""The options of `moelora train` (one constant each, so that the command's signature reads as a list)."""

from __future__ import annotations

import typer

from .auxiliary import AUX_LOSS_WEIGHT

MODEL = typer.Option(..., "--model", help="Causal LM: a local directory or a hub name.")
DATA = typer.Option(None, "--data", help="LLM-Adapters .json/.jsonl file.")
HF_DATASET = typer.Option(None, "--hf-dataset", help="Or a Hugging Face dataset name.")
SPLIT = typer.Option("train", "--split", help="Split of --hf-dataset.")
LIMIT = typer.Option(None, "--limit", help="Use the first N records only.")
EVAL_DATA = typer.Option(None, "--eval-data", help="Held-out .json/.jsonl file.")
EVAL_FRACTION = typer.Option(
    0.0, "--eval-fraction", help="Or hold out this fraction of --data for evaluation."
)
EVAL_STEPS = typer.Option(
    None, "--eval-steps", help="Evaluate every N steps (default: --checkpoint-every)."
)
OUT = typer.Option("runs/train", "--out", help="Output directory (resumed if it has checkpoints).")
TARGETS = typer.Option(
    "q_proj,v_proj", "--targets", help="Comma-separated module-name suffixes, or all-linear."
)
TARGET_REGEX = typer.Option(
    None, "--target-regex", help="Or one regex, full-matched against module names."
)
EXPERTS = typer.Option(4, "--experts", help="Experts E (MoE, TalkLoRA) or cores N (CoMoL).")
SCALE = typer.Option(1.0, "--scale", help="s = alpha / r.")
AUX_LOSS = typer.Option(
    AUX_LOSS_WEIGHT,
    "--aux-loss-weight",
    help="w in loss + w * sum of the adapters' auxiliary losses (e.g. load balancing).",
)
STEPS = typer.Option(1000, "--steps", help="Optimizer steps (raise it to extend a run).")
BATCH_SIZE = typer.Option(4, "--batch-size", help="Per process and micro-batch.")
GRAD_ACCUM = typer.Option(1, "--grad-accum", help="Micro-batches per step.")
LR = typer.Option(3e-4, "--lr", help="Peak learning rate (AdamW).")
WARMUP = typer.Option(100, "--warmup", help="Linear warm-up steps.")
MAX_LENGTH = typer.Option(256, "--max-length", help="Tokens per example (truncated).")
SEED = typer.Option(0, "--seed", help="Seed of adapter init and data order.")
CHECKPOINT_EVERY = typer.Option(200, "--checkpoint-every", help="Checkpoint every N steps.")
KEEP_CHECKPOINTS = typer.Option(2, "--keep-checkpoints", help="Newest N kept.")
MIXED_PRECISION = typer.Option("auto", "--mixed-precision", help="auto, no, bf16 or fp16.")
GRADIENT_CHECKPOINTING = typer.Option(
    False, "--gradient-checkpointing", help="Recompute activations (less memory)."
)
REPORT_TO = typer.Option(
    "none", "--report-to", help="Trackers: none, all, or e.g. tensorboard,wandb."
)
LOGGING_STEPS = typer.Option(10, "--logging-steps", help="Log every N steps.")
