"""Why HydraLoRA and CoMoL w/o CR sit above their MAC floor: their parts timed against LoRA's.

    .venv/bin/python benchmarks/floor_parts.py     # n = m = 1024, r = 32, E = N = 8, 4096 tokens

Each part is one matmul y = u Wᵀ with its backward to u and to W (the three products every linear
layer runs), timed round-robin (`measure.RoundRobin`) against the same part of LoRA:

- x-side: LoRA's A (32 rows) against HydraLoRA's [A; W_g] (r_e + E = 12 rows) and CoMoL w/o CR's
  [A; W_g] (r + N = 40 rows), each reading the (tokens x n) input;
- B side: the (tokens x 32) latent times B (m x 32), the same in all three;
- CoMoL's core mixing: [M_1 … M_N] (g ⊗ h), a (tokens x N·r) by (r x N·r) product.

The MAC ratio of each part to LoRA's A against its time ratio shows which parts run below LoRA's
efficiency per multiply–add.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from measure import RoundRobin
from torch import Tensor


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--min-run-time", type=float, default=0.2)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    T, n, r, E = args.tokens, args.n, 32, 8
    gen = torch.Generator().manual_seed(0)
    rr = RoundRobin(1, torch.device("cpu"))
    parts = {  # name: (input width, output rows, MACs per token)
        "LoRA A (x-side, 32 rows)": (n, r),
        "HydraLoRA [A; W_g] (x-side, 12 rows)": (n, r // E + E),
        "CoMoL w/o CR [A; W_g] (x-side, 40 rows)": (n, r + E),
        "B (latent side, 32 -> m)": (r, n),
        "CoMoL cores (N·r = 256 -> r)": (E * r, r),
    }
    for name, (k, rows) in parts.items():
        u = torch.randn(T, k, generator=gen).requires_grad_()
        W = (torch.randn(rows, k, generator=gen) / k**0.5).requires_grad_()
        dy = torch.randn(T, rows, generator=gen)

        def f(t: Tensor, W: Tensor = W) -> Tensor:
            return F.linear(t, W)

        rr.add(name, f, u, dy, [W])
    rr.run(args.rounds, args.min_run_time)
    ref = "LoRA A (x-side, 32 rows)"
    print("| part | MACs/token | MAC ratio to LoRA's A | time ratio to LoRA's A | ms |")
    print("|---|---|---|---|---|")
    for name, (k, rows) in parts.items():
        mac = k * rows
        print(
            f"| {name} | {mac:,} | {mac / (n * r):.3f} | {rr.ratio(name, ref):.2f} "
            f"| {1e3 * rr.seconds(name):.2f} |"
        )


if __name__ == "__main__":
    main()
