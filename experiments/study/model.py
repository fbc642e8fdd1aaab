"""The study's classifier and its CPU thread count.

    logits = head(mean_t encoder_adapted(x)_t)        encoder frozen, adapters and head trained

The encoder is a fresh deep copy per cell (the shared pristine one is never modified); the adapters'
initialisation and the head's are seeded, so one seed gives every architecture the same head.
"""

from __future__ import annotations

import copy
import os

import torch
from torch import nn

from ..inject import AdapterSpec, inject_adapters
from ..tasks import MeanPoolClassifier


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
