"""Routing along training: snapshots of entropy, load and dominance every few optimizer steps.

At each snapshot step the adapted layers' inputs X (N, n) at a fixed probe batch are captured
(`experiments.measure.capture_inputs`) and `proofs_numeric.bounds.routing_stats(g(X))` gives

    entropy_normalised = H(mean_t g_t) / log E,   max_load_share = max_i mean_t g_{t,i}  (dominance)

per routed layer; the snapshot keeps their means over layers and the per-layer values. One function
(`snapshot`) computes a snapshot from a model, so a shared dynamics harness can replace it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from moelora_core.errors import input_checks

from ..inject import AdaptedLinear
from ..measure import capture_inputs


@torch.no_grad()
def snapshot(
    model: nn.Module,
    probe: Sequence[Mapping[str, Tensor]],
    layers: Mapping[str, AdaptedLinear],
    step: int,
    max_tokens: int,
) -> dict[str, Any]:
    """{step, entropy, max_share, layers: {name: [entropy, max_share]}} (None values without a router)."""
    from proofs_numeric.bounds import routing_stats

    X = capture_inputs(model, probe, max_tokens=max_tokens, layers=layers)
    per: dict[str, list[float]] = {}
    with input_checks(False):
        for name, x in X.items():
            a = layers[name].adapter
            w = next(a.parameters())
            g = a.routing(x.to(w.device, w.dtype))
            if g is not None:
                s = routing_stats(g.to("cpu", torch.float64))
                per[name] = [s.entropy_normalised, s.max_load_share]
    if not per:
        return {"step": step, "entropy": None, "max_share": None, "layers": {}}
    n = len(per)
    return {
        "step": step,
        "entropy": sum(v[0] for v in per.values()) / n,
        "max_share": sum(v[1] for v in per.values()) / n,
        "layers": per,
    }
