"""Down-projection kernels of MoELoRA's sparse top-k forward (input router), timed in pairs.

    .venv/bin/python benchmarks/sparse_kernels.py                  # E = 64, k = 2, r_e = 4, 2048 tokens
    .venv/bin/python benchmarks/sparse_kernels.py --experts 16 32 --expert-rank 4 16
    .venv/bin/python benchmarks/sparse_kernels.py --quick          # tiny sizes (tests)

With the input router only the k chosen experts' A_i x are needed. Each variant computes them, then the
same up-projection (`sparse.mix_columns`), fwd + bwd to x and every parameter:

- `dense-down`: [A; W_g] x for all E experts in one matmul, then the k chosen heads gathered;
- `padded-bmm`: the (token, slot) pairs sorted by expert, each expert's group padded to the largest
  one, one `bmm` of the (E, C, n) copy of x against the (E, n, r_e) stacked A_i (exact, nothing dropped);
- `grouped-mm`: the same sort without padding, `torch._grouped_mm` (float32 on CPU, row strides a
  multiple of 16 bytes);
- `dot-columns`: `sparse.dot_columns`, the chosen rows of A dotted with x per token (the kernel of
  embedding_bag's per-sample-weight gradient), no copy of x, no sort;
- `route-and-dot`: `sparse.route_and_dot`, the same with the router in one autograd node whose
  backward writes dx once (the library's gather path).

All variants, the dense top-k layer (`sparse_mode("dense")`), LoRA of rank E·r_e and the router alone
(x -> W_g x: fwd, dx, dW_g) run in turn, one step each, `--rounds` times; the table gives each one's
median of per-round ratios to the dense top-k layer, and `floor` = LoRA's ratio x the gather path's
MACs per token (E·n + k·r_e·(n + m)) over LoRA's (E·r_e·(n + m)).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from moelora_core import LoRA, LoRAConfig, MoELoRA, MoELoRAConfig, input_checks, sparse

Variant = Callable[[MoELoRA, Tensor], Tensor]


def _route(mod: MoELoRA, xf: Tensor) -> tuple[Tensor, Tensor]:
    return sparse.topk_route(F.linear(xf, mod.router.logits.dense()), sparse.top_k_of(mod.router))


def _up(mod: MoELoRA, idx: Tensor, w: Tensor, h: Tensor) -> Tensor:
    """s·Σ_j w_j B_{idx_j} h_j: h (T, k, r_e) -> (T, m)."""
    c = mod.config
    coef = (h * (c.scale * w).unsqueeze(-1)).flatten(-2)  # (T, k·r_e)
    cols = sparse.expert_columns(idx, c.expert_rank)
    return sparse.mix_columns(cols, coef, mod.B.weight.t().contiguous())


def _sorted_pairs(idx: Tensor, E: int) -> tuple[Tensor, Tensor, Tensor]:
    """(T, k) experts -> expert of each pair (T·k,), pair order sorted by expert, load per expert (E,)."""
    flat = idx.flatten()
    return flat, torch.argsort(flat, stable=True), torch.bincount(flat, minlength=E)


def dense_down(mod: MoELoRA, xf: Tensor) -> Tensor:
    c, E, d = mod.config, mod.config.num_experts, mod.config.expert_rank
    k = sparse.top_k_of(mod.router)
    W = torch.cat([mod.A.weight, mod.router.logits.dense()])
    hall, logits = F.linear(xf, W).split([c.rank, E], -1)  # (T, r), (T, E)
    idx, w = sparse.topk_route(logits, k)
    h = hall.gather(-1, sparse.expert_columns(idx, d)).unflatten(-1, (k, d))
    return _up(mod, idx, w, h)


def padded_bmm(mod: MoELoRA, xf: Tensor) -> Tensor:
    E, d = mod.config.num_experts, mod.config.expert_rank
    T, k = xf.shape[0], sparse.top_k_of(mod.router)
    idx, w = _route(mod, xf)
    flat, order, counts = _sorted_pairs(idx, E)
    C = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    slot = flat[order] * C + torch.arange(T * k) - starts[flat[order]]  # padded row of each pair
    src = torch.zeros(E * C, dtype=torch.long).index_copy_(0, slot, order // k)  # pads read token 0
    xp = xf.index_select(0, src).unflatten(0, (E, C))  # (E, C, n)
    hp = torch.bmm(xp, mod.A.weight.unflatten(0, (E, d)).transpose(1, 2)).flatten(0, 1)  # (E·C, d)
    rows = torch.empty_like(slot).index_copy_(0, order, slot)  # padded row of each (token, slot)
    return _up(mod, idx, w, hp.index_select(0, rows).unflatten(0, (T, k)))


def grouped_mm(mod: MoELoRA, xf: Tensor) -> Tensor:
    E, d = mod.config.num_experts, mod.config.expert_rank
    T, k = xf.shape[0], sparse.top_k_of(mod.router)
    idx, w = _route(mod, xf)
    _, order, counts = _sorted_pairs(idx, E)
    offs = torch.cumsum(counts, 0, dtype=torch.int32)  # end of each expert's group
    xs = xf.index_select(0, order // k)  # (T·k, n) sorted by expert
    At = mod.A.weight.unflatten(0, (E, d)).transpose(1, 2)  # (E, n, d)
    hs = torch._grouped_mm(xs, At, offs=offs)  # (T·k, d)
    h = torch.empty_like(hs).index_copy(0, order, hs).unflatten(0, (T, k))
    return _up(mod, idx, w, h)


def dot_columns(mod: MoELoRA, xf: Tensor) -> Tensor:
    d, k = mod.config.expert_rank, sparse.top_k_of(mod.router)
    idx, w = _route(mod, xf)
    h = sparse.dot_columns(xf, mod.A.weight, sparse.expert_columns(idx, d))
    return _up(mod, idx, w, h.unflatten(-1, (k, d)))


def route_and_dot(mod: MoELoRA, xf: Tensor) -> Tensor:
    d, k = mod.config.expert_rank, sparse.top_k_of(mod.router)
    W = mod.router.logits.dense()
    idx, w, _, h = sparse.route_and_dot(xf, W, mod.A.weight, k, d)
    return _up(mod, idx, w, h.unflatten(-1, (k, d)))


VARIANTS: dict[str, Variant] = {
    "dense-down": dense_down,
    "padded-bmm": padded_bmm,
    "grouped-mm": grouped_mm,
    "dot-columns": dot_columns,
    "route-and-dot": route_and_dot,
}


def dense_layer(mod: MoELoRA, xf: Tensor) -> Tensor:
    with sparse.sparse_mode("dense"):
        out: Tensor = mod(xf)
    return out


Entry = tuple[Callable[[Tensor], Tensor], list[Tensor], Tensor]  # step function, its inputs, dy


def compare(
    E: int, d: int, tokens: int, n: int, rounds: int, seed: int, names: list[str]
) -> dict[str, float]:
    """Median per-round ratio of each variant's fwd + bwd time to the dense top-2 layer's; also of
    LoRA at the same total rank E·r_e and of the router alone (x -> W_g x, its three passes over x)."""
    cfg = MoELoRAConfig(
        in_features=n, out_features=n, num_experts=E, expert_rank=d, top_k=2, scale=0.5
    )
    mod = MoELoRA(cfg)
    mod.randomize_(seed)
    lora = LoRA(LoRAConfig(in_features=n, out_features=n, rank=E * d, scale=0.5))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, n, generator=gen).requires_grad_()
    dy = torch.randn(tokens, n, generator=gen)
    params = [x, *mod.parameters()]
    Wg = mod.router.logits.dense().detach().requires_grad_()  # (E, n), a leaf like W_g
    entries: dict[str, Entry] = {"dense": (lambda t: dense_layer(mod, t), params, dy)}
    for name in names:
        entries[name] = (functools.partial(VARIANTS[name], mod), params, dy)
    entries["lora"] = (lora, [x, *lora.parameters()], dy)
    entries["router"] = (lambda t: F.linear(t, Wg), [x, Wg], torch.randn(tokens, E, generator=gen))
    with torch.no_grad():
        ref = dense_layer(mod, x)
        for name in names:
            err = float((VARIANTS[name](mod, x) - ref).abs().max())
            if err > 1e-4 * (1 + float(ref.abs().max())):
                raise AssertionError(f"variant={name}: max |Δ - dense| = {err:.3g}")
    times: dict[str, list[float]] = {name: [] for name in entries}
    with input_checks(False):
        for _ in range(rounds + 1):  # the first round warms up
            for name, (f, inputs, g) in entries.items():
                t0 = time.perf_counter()
                torch.autograd.grad(f(x), inputs, g, allow_unused=True)
                times[name].append(time.perf_counter() - t0)
    base = times["dense"][1:]
    out = {"dense_ms": 1e3 * statistics.median(base)}
    for name in entries:
        out[name] = statistics.median(a / b for a, b in zip(times[name][1:], base, strict=True))
    # the gather path's MAC floor: LoRA's time x (E·n + k·r_e·(n + m)) / LoRA's r·(n + m)
    out["floor"] = out["lora"] * (E * n + 2 * d * 2 * n) / (E * d * 2 * n)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--experts", type=int, nargs="+", default=[64])
    ap.add_argument("--expert-rank", type=int, nargs="+", default=[4])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--features", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        args.experts, args.expert_rank, args.tokens, args.features, args.rounds = (
            [8],
            [4],
            64,
            32,
            1,
        )
    print(
        f"## sparse down-projection ÷ dense top-2 layer, fwd + bwd, n = m = {args.features}, "
        f"{args.tokens} tokens, 1 thread, load average {os.getloadavg()[0]:.2f}\n"
    )
    cols = [*args.variants, "router", "floor"]
    print("| E | r_e | dense ms | " + " | ".join(cols) + " |")
    print("|---" * (3 + len(cols)) + "|")
    for E in args.experts:
        for d in args.expert_rank:
            print(f"  E={E} r_e={d}", file=sys.stderr)
            # torch._grouped_mm on CPU: float32 rows must be a multiple of 16 bytes (r_e % 4 == 0)
            names = [v for v in args.variants if v != "grouped-mm" or d % 4 == 0]
            r = compare(E, d, args.tokens, args.features, args.rounds, args.seed, names)
            cells = " | ".join(f"{r[name]:.2f}" if name in r else "–" for name in cols)
            print(f"| {E} | {d} | {r['dense_ms']:.1f} | {cells} |")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
