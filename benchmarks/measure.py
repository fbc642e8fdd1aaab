"""What every layer benchmark measures: time on `torch.utils.benchmark`, saved activations, peak memory.

One step is `torch.autograd.grad(f(x), [x, *params], dy)` (forward, then backward to the input and to every
trainable parameter, as for a layer in the middle of a network). Time is the median of
`Timer.blocked_autorange` at a fixed thread count; saved-activation bytes are the tensors autograd keeps
for backward (`saved_tensors_hooks`, each storage once); peak memory is the allocator's high-water mark
on CUDA and, on CPU, the largest running total of the profiler's allocation records during one step.
"""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile
from torch.utils.benchmark import Timer

Step = Callable[[], None]


@dataclass(frozen=True)
class Memory:
    saved_bytes: int  # autograd's saved tensors, each storage once
    peak_bytes: int  # high-water mark of one step


def make_step(
    f: Callable[[Tensor], Tensor], x: Tensor, dy: Tensor, params: Sequence[Tensor]
) -> Step:
    inputs = [x, *params]

    def step() -> None:
        torch.autograd.grad(f(x), inputs, dy)

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timer(step: Step, threads: int, device: torch.device) -> Timer:
    def synced() -> None:
        step()
        _sync(device)

    return Timer(stmt="synced()", globals={"synced": synced}, num_threads=threads)


def saved_bytes(f: Callable[[Tensor], Tensor], x: Tensor) -> int:
    """Bytes of the distinct storages autograd saves for backward during one forward of f."""
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    def unpack(t: Tensor) -> Tensor:
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        f(x)
    return sum(seen.values())


def peak_bytes(step: Step, device: torch.device) -> int:
    """High-water mark of memory allocated during one step, above what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    running = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.end):
        running += e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        peak = max(peak, running)
    return int(peak)


class RoundRobin:
    """Steps timed in turn: each round runs `blocked_autorange` on every step, so load from other
    processes falls on all of them alike; per-round ratios between steps are then robust to it."""

    def __init__(self, threads: int, device: torch.device) -> None:
        self.threads, self.device = threads, device
        self.timers: dict[str, Timer] = {}
        self.rounds: dict[str, list[float]] = {}

    def add(
        self,
        key: str,
        f: Callable[[Tensor], Tensor],
        x: Tensor,
        dy: Tensor,
        params: Sequence[Tensor],
    ) -> Step:
        step = make_step(f, x, dy, params)
        step()  # warm-up
        self.timers[key] = timer(step, self.threads, self.device)
        return step

    def run(self, rounds: int, min_run_time: float) -> None:
        self.rounds = {k: [] for k in self.timers}
        for _ in range(rounds):
            for k, t in self.timers.items():
                self.rounds[k].append(float(t.blocked_autorange(min_run_time=min_run_time).median))

    def seconds(self, key: str) -> float:
        return statistics.median(self.rounds[key])

    def ratio(self, key: str, ref: str) -> float:
        """Median over rounds of time(key) / time(ref)."""
        pairs = zip(self.rounds[key], self.rounds[ref], strict=True)
        return statistics.median(a / b for a, b in pairs)


def memory(f: Callable[[Tensor], Tensor], x: Tensor, step: Step) -> Memory:
    return Memory(saved_bytes(f, x), peak_bytes(step, x.device))


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x: the fitted scaling exponent."""
    lx = torch.tensor(xs, dtype=torch.float64).log()
    ly = torch.tensor(ys, dtype=torch.float64).log()
    dx = lx - lx.mean()
    return float((dx * (ly - ly.mean())).sum() / (dx * dx).sum())


def machine(device: torch.device, threads: int) -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": threads,
        "python": platform.python_version(),
        "device": str(device),
        "loadavg": os.getloadavg(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
