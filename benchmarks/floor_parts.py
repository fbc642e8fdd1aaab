"""Why HydraLoRA and CoMoL w/o CR sit above their MAC floor: their parts timed against LoRA's.

    .venv/bin/python benchmarks/floor_parts.py     # n = m = 1024, r = 32, E = N = 8, 4096 tokens

Each part is one matmul y = u Wᵀ with its backward to u and to W (the three products every linear
layer runs), timed round-robin (`measure.RoundRobin`) against the same part of LoRA. The parts are read
from each architecture's own MAC formula f = `adapter.macs_formula()` (layers built through the
registry, `layers.Layer`), split by what a token's multiply–adds scale with:

- x-side: ∂f/∂n rows reading the (tokens x n) input: LoRA's A (r = 32), HydraLoRA's [A; W_g]
  (r_e + E = 12), CoMoL w/o CR's [A; W_g] (r + N = 40);
- B side: ∂f/∂m, the (tokens x 32) latent times B (m x 32), the same in all three;
- the rest, f − n ∂f/∂n − m ∂f/∂m, on the latent: CoMoL's core mixing [M_1 … M_N] (g ⊗ h), N r²,
  a (tokens x N·r) by (r x N·r) product.

The MAC ratio of each part to LoRA's A against its time ratio shows which parts run below LoRA's
efficiency per multiply–add.
"""

from __future__ import annotations

import argparse

import sympy as sp
import torch
import torch.nn.functional as F
from layers import LORA, Layer, Shape
from measure import RoundRobin
from torch import Tensor

from moelora_core import symbols as S

Part = tuple[int, int]  # (input width, output rows) of one matmul


def formula_parts(layer: Layer, s: Shape) -> tuple[Part, Part, int]:
    """(x-side part, B-side part, latent MACs per token) of `layer` at shape s, from its MAC formula."""
    a = layer.build(s, device="meta")
    f, values = a.macs_formula(), a.subs()
    x_rows, b_rows = (int(sp.diff(f, v).subs(values)) for v in (S.n, S.m))
    latent = int(f.subs(values)) - x_rows * s.n - b_rows * s.m
    return (s.n, x_rows), (b_rows, s.m), latent


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--min-run-time", type=float, default=0.2)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    T, n, r, E = args.tokens, args.n, 32, 8
    s = Shape(n, n, E, r // E, T)
    gen = torch.Generator().manual_seed(0)
    rr = RoundRobin(1, torch.device("cpu"))
    lora_x, lora_b, _ = formula_parts(LORA, s)
    hydra_x, _, _ = formula_parts(Layer("HydraLoRA", "hydralora"), s)
    comol = Layer("CoMoL w/o CR", "comol", lambda s: {"core_router": False})
    comol_x, _, cores = formula_parts(comol, s)
    parts = {  # name: (input width, output rows)
        f"LoRA A (x-side, {lora_x[1]} rows)": lora_x,
        f"HydraLoRA [A; W_g] (x-side, {hydra_x[1]} rows)": hydra_x,
        f"CoMoL w/o CR [A; W_g] (x-side, {comol_x[1]} rows)": comol_x,
        f"B (latent side, {lora_b[0]} -> m)": lora_b,
        f"CoMoL cores (N·r = {cores // r} -> r)": (cores // r, r),  # N r² MACs: (N·r) x r
    }
    for name, (k, rows) in parts.items():
        u = torch.randn(T, k, generator=gen).requires_grad_()
        W = (torch.randn(rows, k, generator=gen) / k**0.5).requires_grad_()
        dy = torch.randn(T, rows, generator=gen)

        def f(t: Tensor, W: Tensor = W) -> Tensor:
            return F.linear(t, W)

        rr.add(name, f, u, dy, [W])
    rr.run(args.rounds, args.min_run_time)
    ref = next(iter(parts))  # LoRA's A
    print("| part | MACs/token | MAC ratio to LoRA's A | time ratio to LoRA's A | ms |")
    print("|---|---|---|---|---|")
    for name, (k, rows) in parts.items():
        mac = k * rows
        print(
            f"| {name} | {mac:,} | {mac / (lora_x[0] * lora_x[1]):.3f} | {rr.ratio(name, ref):.2f} "
            f"| {1e3 * rr.seconds(name):.2f} |"
        )


if __name__ == "__main__":
    main()
