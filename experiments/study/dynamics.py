"""Routing along training, through the shared harness `proofs_numeric.dynamics`.

`Recorder` keeps a CPU copy of every routed adapter's state at the snapshot steps (step 0 included)
and, after training, hands each layer's snapshots to `proofs_numeric.dynamics.measure_run` with fixed
probes: the layer's inputs X (K, n) at held-out text, captured before training. Per step it reports the
means over routed layers of

    entropy   = mean_k H(g_t(x_k)) / log E,    max_share = max_i mean_k g_t,i(x_k)   (dominance)
    change    = mean_k ‖g_t(x_k) − g_{t−1}(x_k)‖₂,   talk_norm = ‖T‖₂ (TalkLoRA)

and, per layer, the sentences `proofs_numeric.dynamics.statement` supports (stabilisation, dominance,
the talking module's amplification).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from proofs_numeric.dynamics import measure_run, statement

from ..inject import AdaptedLinear


class Recorder:
    """Snapshots of the routed adapters of a model during one uninterrupted training run."""

    def __init__(self, layers: Mapping[str, AdaptedLinear], probes: Mapping[str, Tensor]) -> None:
        self.layers = {n: lyr for n, lyr in layers.items() if lyr.adapter.router is not None}
        self.probes = {n: probes[n] for n in self.layers if n in probes}
        self.snaps: dict[str, list[tuple[int, dict[str, Tensor]]]] = {n: [] for n in self.probes}

    @torch.no_grad()
    def record(self, step: int) -> None:
        for n in self.snaps:
            state = self.layers[n].adapter.state_dict()
            self.snaps[n].append(
                (step, {k: v.detach().to("cpu", copy=True) for k, v in state.items()})
            )

    def result(self) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
        """(trace: one dict per snapshot step, means over layers; {layer: statement sentences})."""
        per_step: dict[int, list[Any]] = {}
        sentences: dict[str, list[str]] = {}
        for n, snaps in self.snaps.items():
            a = self.layers[n].adapter
            w = next(a.parameters())
            run = measure_run(a, snaps, self.probes[n].to(w.device, w.dtype))
            for s in run.steps:
                per_step.setdefault(s.step, []).append(s)
            text = statement(run).split("\n\n", 1)[-1]
            sentences[n] = [line for line in text.splitlines() if line]
        trace = []
        for step in sorted(per_step):
            ss = per_step[step]

            def mean(xs: list[float | None]) -> float | None:
                v = [x for x in xs if x is not None]
                return sum(v) / len(v) if v else None

            trace.append({
                "step": step,
                "entropy": mean([s.entropy for s in ss]),
                "max_share": mean([s.max_load for s in ss]),
                "change": mean([s.change for s in ss]),
                "talk_norm": mean([s.talk_norm for s in ss]),
            })  # fmt: skip
        return trace, sentences
