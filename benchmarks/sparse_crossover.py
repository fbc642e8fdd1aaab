"""Where sparse top-k beats the dense top-k forward: paired timings over E at k = 2.

    .venv/bin/python benchmarks/sparse_crossover.py            # n = m = 1024, r_e = 4, 2048 tokens
    .venv/bin/python benchmarks/sparse_crossover.py --quick    # tiny sizes (tests)

For each routed architecture and E, the dense path (`sparse_mode("dense")`), the sparse path
(`sparse_mode("sparse")`) and LoRA of the same total rank r = E·r_e run in turn, one fwd+bwd step each,
`--pairs` times (`torch.utils.benchmark.Timer`, fixed threads); the ratios are the medians of the
per-round ratios, which other processes' load moves far less than the times. sparse ÷ floor is
(sparse time / LoRA time) ÷ (sparse MACs / LoRA MACs). The crossovers (`SPARSE_MAX_FRACTION`, `COMOL_MAX_FRACTION` in
`moelora_core.sparse`) are the largest k/E at which sparse is faster.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from typing import Any

import torch
from layers import LORA, Layer, Shape, macs
from measure import machine, make_step, timer
from torch import Tensor

from moelora_core import Adapter, input_checks
from moelora_core.sparse import (
    COMOL_MAX_FRACTION,
    SPARSE_MAX_FRACTION,
    SPARSE_MIN_TOKENS,
    Mode,
    sparse_mode,
)
from proofs_numeric.jsonio import write_json_atomic

K = 2
ARCHS: list[Layer] = [  # every row at top-k = K, built through the registry (layers.Layer)
    Layer("MoELoRA input", "moelora", lambda s: {"top_k": K}),
    Layer("MoELoRA latent", "moelora", lambda s: {"router": "latent", "top_k": K}),
    Layer("HydraLoRA", "hydralora", lambda s: {"top_k": K}),
    Layer("TalkLoRA", "talklora", lambda s: {"top_k": K}),
    Layer("CoMoL w/o CR", "comol", lambda s: {"core_router": False, "top_k": K}),
]


def paired(s: Shape, layer: Layer, args: argparse.Namespace) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(s.tokens, s.n, generator=gen).requires_grad_()
    dy = torch.randn(s.tokens, s.m, generator=gen)
    lora = LORA.build(s)
    mod = layer.build(s).randomize_(args.seed)

    def f(a: Adapter, mode: Mode) -> Callable[[Tensor], Tensor]:
        def g(t: Tensor) -> Tensor:
            with sparse_mode(mode), input_checks(False):
                out: Tensor = a(t)
            return out

        return g

    steps = {
        "dense": make_step(f(mod, "dense"), x, dy, list(mod.parameters())),
        "sparse": make_step(f(mod, "sparse"), x, dy, list(mod.parameters())),
        "lora": make_step(f(lora, "auto"), x, dy, list(lora.parameters())),
    }
    timers = {k: timer(st, args.threads, x.device) for k, st in steps.items()}
    for st in steps.values():
        st()
    rounds: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.pairs):
        for k, t in timers.items():
            rounds[k].append(t.timeit(1).median)
    ratio = statistics.median(a / b for a, b in zip(rounds["sparse"], rounds["dense"], strict=True))
    vs_lora = statistics.median(
        a / b for a, b in zip(rounds["sparse"], rounds["lora"], strict=True)
    )
    mac_ratio = macs(mod, "sparse") / macs(lora, "auto")
    return {
        "E": s.E,
        "sparse_ms": 1e3 * statistics.median(rounds["sparse"]),
        "dense_ms": 1e3 * statistics.median(rounds["dense"]),
        "sparse_over_dense": ratio,
        "sparse_mac_ratio": mac_ratio,
        "sparse_over_floor": vs_lora / mac_ratio,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--experts", type=int, nargs="+", help="E values (default 4 8 16 32 64)")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, re_, experts = (32, 2, [8]) if args.quick else (1024, 4, [4, 8, 16, 32, 64])
    experts = args.experts or experts
    tokens = 64 if args.quick else args.tokens
    if args.quick:
        args.pairs = 1
    rows: dict[str, list[dict[str, Any]]] = {}
    for layer in ARCHS:
        for E in experts:
            print(f"  {layer.key} E={E}", file=sys.stderr)
            rows.setdefault(layer.key, []).append(paired(Shape(n, n, E, re_, tokens), layer, args))
    mach = machine(torch.device("cpu"), args.threads)
    print(
        f"## sparse ÷ dense top-{K} time (sparse ÷ its floor), n = m = {n}, r_e = {re_}, "
        f"{tokens} tokens, {args.threads} thread(s), load average {mach['loadavg'][0]:.2f}\n"
    )
    print("| layer | " + " | ".join(f"E={E}" for E in experts) + " |")
    print("|---" * (len(experts) + 1) + "|")
    for name, rs in rows.items():
        cells = " | ".join(
            f"{r['sparse_over_dense']:.2f} ({r['sparse_over_floor']:.2f})" for r in rs
        )
        print(f"| {name} | {cells} |")
    print()
    for name, rs in rows.items():
        wins = [r["E"] for r in rs if r["sparse_over_dense"] < 1]
        print(
            f"- {name}: sparse faster at E >= {min(wins)} (k/E <= {K / min(wins):.4f})"
            if wins
            else f"- {name}: sparse not faster at any E measured"
        )
    print(
        f"\nconfigured: SPARSE_MAX_FRACTION = {SPARSE_MAX_FRACTION}, "
        f"COMOL_MAX_FRACTION = {COMOL_MAX_FRACTION}, SPARSE_MIN_TOKENS = {SPARSE_MIN_TOKENS}"
    )
    if args.json:
        write_json_atomic(args.json, {"machine": mach, "args": vars(args), "rows": rows}, indent=1)


if __name__ == "__main__":
    main()
