"""Measurements along a training run, from snapshots, and the statement the run can support.

TalkLoRA claims that expert communication "smooths routing dynamics" and mitigates "unstable routing,
expert dominance"; the bounds (docs/bounds.md) are static, at a fixed router. This harness measures the
dynamics: given snapshots `(step, state_dict)` of one adapter over a run and fixed probe inputs x_k
(K, n), it records per step (routing weights g_t(x_k) of the snapshot at step t):

    change_t      = mean_k ‖g_t(x_k) − g_{t−1}(x_k)‖₂        (routing change between checkpoints)
    top_share_t   = top-1 dominance: share of probes whose top expert is the most frequent one
                    (ties go to the lowest index, so uniform routing reads 1: judge by the load)
    max_load_t    = max_i mean_k g_t,i(x_k)                   (dominance by load: the criterion)
    entropy_t     = mean_k H(g_t(x_k)) / log E                 (normalised routing entropy)
    talk_norm_t   = ‖T‖₂ of TalkLoRA's talking module (head-perturbation factor; None otherwise)

`statement(run)` writes, next to these numbers, the sentences the run supports: "routing stabilised:
mean change fell from a to b" only when the late changes are at most `settle` times the early ones;
"routing did not stabilise" when they are not; "cannot resolve: ..." with too few checkpoints, or when
every change is below `resolution` (the run cannot tell stabilisation from no movement). It trains
nothing: a study produces the snapshots and calls `measure_run` and `statement`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from moelora_core.adapter import Adapter
from moelora_core.errors import ConfigError, ShapeError, require_positive_int

from .bounds.stats import routing_stats
from .jsonio import write_json_atomic

Snapshot = tuple[int, Mapping[str, Tensor]]


@dataclass(frozen=True)
class StepMeasure:
    step: int
    change: float | None  # mean_k ‖g_t − g_{t−1}‖₂ (None at the first snapshot)
    top_share: float
    max_load: float
    entropy: float  # normalised by log E
    talk_norm: float | None


@dataclass(frozen=True)
class RunMeasurements:
    family: str
    num_experts: int
    probes: int
    steps: list[StepMeasure]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _check(adapter: Adapter, snapshots: Sequence[Snapshot], probes: Tensor) -> None:
    if not isinstance(adapter, Adapter) or adapter.routing_kind == "none":
        raise ConfigError(f"adapter={type(adapter).__name__}: expected a routed Adapter")
    if not isinstance(probes, Tensor) or probes.dim() != 2 or probes.shape[0] < 1:
        shape = tuple(probes.shape) if isinstance(probes, Tensor) else type(probes).__name__
        raise ShapeError(f"probes={shape}: expected a tensor (K, n) with K >= 1")
    require_positive_int("len(snapshots)", len(snapshots))
    steps = [s for s, _ in snapshots]
    if any(not isinstance(s, int) for s in steps) or steps != sorted(set(steps)):
        raise ConfigError(f"snapshot steps={steps}: expected distinct increasing integers")


@torch.no_grad()
def measure_run(adapter: Adapter, snapshots: Sequence[Snapshot], probes: Tensor) -> RunMeasurements:
    """Load each snapshot into a copy of `adapter` and measure routing on `probes` (K, n)."""
    _check(adapter, snapshots, probes)
    work = copy.deepcopy(adapter)
    out: list[StepMeasure] = []
    prev: Tensor | None = None
    for step, state in snapshots:
        work.load_state_dict(dict(state))
        g = work.routing(probes)
        assert g is not None
        stats = routing_stats(g)
        change = None if prev is None else float(torch.linalg.vector_norm(g - prev, dim=-1).mean())
        talking = getattr(work, "talking", None)  # T, for an adapter that has one (HasTalking)
        talk = talking.spectral_norm() if talking is not None else None
        out.append(
            StepMeasure(
                step,
                change,
                stats.top1_dominance,
                stats.max_load_share,
                stats.entropy_normalised,
                talk,
            )
        )
        prev = g
    return RunMeasurements(adapter.family, adapter.num_experts, int(probes.shape[0]), out)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _stability(run: RunMeasurements, settle: float, resolution: float) -> str:
    changes = [s.change for s in run.steps if s.change is not None]
    if len(changes) < 2:
        return (
            f"cannot resolve routing stability: {len(run.steps)} checkpoints give {len(changes)} "
            "change(s); expected at least 3 checkpoints"
        )
    if max(changes) <= resolution:
        return (
            f"cannot resolve routing stability: every change is <= {resolution:g} "
            f"(max {max(changes):.3g}); the routing did not move measurably"
        )
    w = max(1, len(changes) // 3)
    early, late = _mean(changes[:w]), _mean(changes[-w:])
    span = f"(first {w} vs last {w} of {len(changes)} intervals)"
    if late <= settle * early:
        return f"routing stabilised: mean change fell from {early:.3g} to {late:.3g} {span}"
    return (
        f"routing did not stabilise: mean change went from {early:.3g} to {late:.3g} {span}, "
        f"above {settle:g} of its early value"
    )


def _dominance(run: RunMeasurements) -> str:
    E, first, last = run.num_experts, run.steps[0], run.steps[-1]
    uniform = 1.0 / E
    text = (
        f"top-expert share {first.top_share:.3f} -> {last.top_share:.3f}, max load "
        f"{first.max_load:.3f} -> {last.max_load:.3f} (balanced: {uniform:.3f}); normalised entropy "
        f"{first.entropy:.3f} -> {last.entropy:.3f}"
    )
    if E == 1:
        return "cannot resolve expert dominance: one expert; " + text
    if run.probes < 4 * E:
        return f"cannot resolve expert dominance: {run.probes} probes for {E} experts; " + text
    halfway = uniform + 0.5 * (1.0 - uniform)  # halfway from balanced to one expert taking all
    if last.max_load >= halfway and last.max_load > first.max_load:
        return f"expert dominance grew (max load above {halfway:.3f}): " + text
    return "no growing expert dominance: " + text


def _talk(run: RunMeasurements) -> str | None:
    norms = [(s.step, s.talk_norm) for s in run.steps if s.talk_norm is not None]
    if not norms:
        return None
    amplifying = [step for step, v in norms if v > 1.0]
    rng = f"‖T‖₂ from {norms[0][1]:.3f} (step {norms[0][0]}) to {norms[-1][1]:.3f} (step {norms[-1][0]})"
    if amplifying:
        return (
            f"the talking module amplifies head perturbations (‖T‖₂ > 1) at {len(amplifying)} of "
            f"{len(norms)} checkpoints, first at step {amplifying[0]}; {rng}"
        )
    return (
        f"the talking module never amplifies head perturbations at a checkpoint (‖T‖₂ <= 1); {rng}"
    )


def statement(run: RunMeasurements, *, settle: float = 0.5, resolution: float = 1e-6) -> str:
    """The sentences the measured run supports, one per line, after a table of what was measured."""
    if not 0.0 < settle < 1.0 or not math.isfinite(resolution) or resolution < 0:
        raise ConfigError(
            f"settle={settle}, resolution={resolution}: expected 0 < settle < 1 and resolution >= 0"
        )
    rows = [
        f"{'step':>8} {'change':>10} {'top share':>10} {'max load':>9} {'entropy':>8} {'‖T‖₂':>7}"
    ]
    for s in run.steps:
        change = "-" if s.change is None else f"{s.change:.4g}"
        talk = "-" if s.talk_norm is None else f"{s.talk_norm:.4f}"
        rows.append(
            f"{s.step:>8} {change:>10} {s.top_share:>10.3f} {s.max_load:>9.3f} {s.entropy:>8.3f} {talk:>7}"
        )
    lines = [_stability(run, settle, resolution), _dominance(run)]
    talk_line = _talk(run)
    if talk_line is not None:
        lines.append(talk_line)
    scope = (
        f"({run.family}, E={run.num_experts}, {run.probes} probes, {len(run.steps)} checkpoints: "
        "a statement about this run on these probes only)"
    )
    return "\n".join([*rows, "", *lines, scope])


def save_run(path: str | Path, run: RunMeasurements, **statement_kwargs: float) -> str:
    """Write the measurements and the statement they support to `path` as JSON (atomically); returns
    the statement."""
    text = statement(run, **statement_kwargs)
    write_json_atomic(path, {"measurements": run.to_dict(), "statement": text.splitlines()})
    return text
