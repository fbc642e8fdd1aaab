"""Bound-report benchmark: wall time of `layer_report` for one layer, and its parts.

    .venv/bin/python benchmarks/bounds.py                    # n = m = 4096, r = 32, E = 8, 1024 inputs
    .venv/bin/python benchmarks/bounds.py --threads 1        # single-threaded
    .venv/bin/python benchmarks/bounds.py --json out.json    # also write every sample (atomically)

The layer is a float32 TalkLoRA (n = m = 4096, r = 32, E = 8, head dim 4) with random A, K, T, W_r and
B ~ N(0, 0.02²) (B = 0 at initialisation would make every local bound trivial); the inputs are 1024
standard normal rows. Cases: the given points (radius None), balls of radius 1 around them, and the
same points for the other routed architectures at equal total rank (MoELoRA latent and input routers
with r_e = 4, HydraLoRA r_e = 4, CoMoL r = 32 with N = 8 cores). Each case runs once to warm up
(first use of forward-mode AD loads torch's decompositions, ~0.5 s once per process), then `--repeats`
times; the minimum and the median wall time are printed, with the process CPU time and the report's
own per-part timings of the fastest run. Wall time on a shared machine varies with other processes
(with two threads and one core taken, OpenMP's barriers can cost several times the work): the
minimum is the cost of the work, and the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Any, Literal

import torch

from moelora_core import (
    Adapter,
    CoMoLConfig,
    HydraLoRAConfig,
    MoELoRAConfig,
    TalkLoRAConfig,
    create,
)
from proofs_numeric.bounds import LayerBoundReport, layer_report
from proofs_numeric.jsonio import write_json_atomic
from proofs_numeric.threads import torch_threads


def layer_config(kind: str, n: int, m: int, r: int = 32, E: int = 8) -> Any:
    """The config of one benchmark layer n -> m of total rank r with E experts (or cores)."""
    if kind == "talklora":
        return TalkLoRAConfig(in_features=n, out_features=m, rank=r, num_experts=E)
    if kind in ("moelora-latent", "moelora-input"):
        router: Literal["input", "latent"] = "latent" if kind == "moelora-latent" else "input"
        return MoELoRAConfig(
            in_features=n, out_features=m, num_experts=E, expert_rank=r // E, router=router
        )
    if kind == "hydralora":
        return HydraLoRAConfig(in_features=n, out_features=m, num_experts=E, expert_rank=r // E)
    return CoMoLConfig(in_features=n, out_features=m, rank=r, num_cores=E)


def build_layer(kind: str, n: int, m: int, r: int = 32, E: int = 8) -> Adapter:
    """A random float32 adapter n -> m (total rank r, E experts), B ~ N(0, 0.02²) so Δ != 0."""
    a = create(layer_config(kind, n, m, r, E))
    with torch.no_grad():
        for name, p in a.named_parameters():
            if name.startswith("B."):
                p.normal_(0, 0.02)
    return a


def _time(a: Adapter, X: torch.Tensor, radius: float | None, repeats: int) -> dict[str, Any]:
    layer_report(a, X, radius=radius)  # warm-up
    runs: list[tuple[float, float, LayerBoundReport]] = []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        rep = layer_report(a, X, radius=radius)
        runs.append((time.perf_counter() - t, time.process_time() - c, rep))
    best_t, best_cpu, best = min(runs, key=lambda r: r[0])
    return {
        "min_s": best_t,
        "cpu_s_of_min": best_cpu,
        "median_s": statistics.median(t for t, _, _ in runs),
        "samples_s": [t for t, _, _ in runs],
        "parts_s": best.timings,
        "upper": best.upper,
        "lower": best.lower,
        "gap": best.gap_ratio,
        "local_upper": best.local.adaptive if best.local else None,
        "local_lower": best.local.lower if best.local else None,
    }


def _print_case(kind: str, radius: float | None, res: dict[str, Any]) -> None:
    parts = "  ".join(f"{k} {v * 1e3:.0f}" for k, v in res["parts_s"].items())
    domain = "points" if radius is None else f"balls R={radius:g}"
    print(
        f"{kind:<15} {domain:<12} min {res['min_s']:.3f}s (cpu {res['cpu_s_of_min']:.3f}s)  "
        f"median {res['median_s']:.3f}s  | parts (ms): {parts}",
        flush=True,
    )
    local = (
        f"; local Lip(Δ) <= {res['local_upper']:.4g}, found {res['local_lower']:.4g}"
        if res["local_upper"] is not None
        else ""
    )
    print(
        f"{'':<28} Lip(g) <= {res['upper']:.4g}, found {res['lower']:.4g} (gap {res['gap']:.3f})"
        + local
    )


def _run(args: argparse.Namespace) -> list[dict[str, Any]]:
    X = torch.randn(args.inputs, args.n, generator=torch.Generator().manual_seed(0))
    cases: list[tuple[str, float | None]] = [("talklora", None), ("talklora", 1.0)]
    if not args.only_main:
        cases += [(k, None) for k in ("moelora-latent", "moelora-input", "hydralora", "comol")]
    print(
        f"layer_report: n = m = {args.n}, r = {args.rank}, E = {args.experts}, "
        f"{args.inputs} inputs, float32, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), {args.repeats} repeats, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    results = []
    for kind, radius in cases:
        torch.manual_seed(0)
        a = build_layer(kind, args.n, args.n, args.rank, args.experts)
        res = _time(a, X, radius, args.repeats)
        res.update(kind=kind, radius=radius)
        results.append(res)
        _print_case(kind, radius, res)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--inputs", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only-main", action="store_true", help="only the TalkLoRA cases")
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args(argv)
    with torch_threads(args.threads):
        results = _run(args)
        threads = torch.get_num_threads()
    if args.json_out:
        payload = {
            "machine": platform.processor() or platform.machine(),
            "threads": threads,
            "load_average": os.getloadavg(),
            "torch": torch.__version__,
            "args": vars(args),
            "results": results,
        }
        write_json_atomic(args.json_out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
