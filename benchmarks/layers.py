"""Layer benchmark: forward+backward time of every adapter, against LoRA at equal total rank and against
a per-expert Python loop of the same maths.

    .venv/bin/python benchmarks/layers.py                      # n = m = 1024, r = 32, E = 8, 8x512 tokens
    .venv/bin/python benchmarks/layers.py --json results.json  # also write every sample

Equal total rank r (the sum of the experts' ranks, i.e. the width of the stacked latent that B reads):
  LoRA              A: r x n, B: m x r
  MoELoRA (all)     E experts of rank r_e = r/E           (A = [A_1; ...; A_E] r x n, B m x r)
  HydraLoRA         shared A of rank r_e = r/E, E heads B_i: m x r_e   (B = [B_1 ... B_E] m x r)
  TalkLoRA          A: r x n split into E heads of r/E, K_i: r/E x r/E, B_i: m x r/E
  CoMoL             A: r x n, B: m x r, N = E cores r x r (router on A x, or on x for "w/o CR")

One timed step is `torch.autograd.grad(Δ(x), [x, *params], dy)`: forward, then backward to the input and
to every trainable parameter, as for a layer in the middle of a network. The frozen W0 x is not part of
Δ; its time is printed once for scale. Variants run round-robin in a shuffled order per repeat, so that
load from other processes spreads over all of them; the per-call input checks are off for every timed
variant alike (`input_checks(False)`), and their cost is measured once more with them on.

The loop baselines compute Δ(x) = Σ_i g_i(x) P_i x literally: one expert at a time, each expert's output
(of size m) weighted and summed, with only the factors that every expert shares (A x for a shared A)
computed once. Before any timing each loop is checked equal to the vectorised module (outputs and
gradients, float64, random non-zero parameters).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.benchmark import Timer

from moelora_core import (
    Adapter,
    CoMoL,
    CoMoLConfig,
    HydraLoRA,
    HydraLoRAConfig,
    LoRA,
    LoRAConfig,
    MoELoRA,
    MoELoRAConfig,
    TalkLoRA,
    TalkLoRAConfig,
    input_checks,
)
from proofs_numeric.jsonio import write_json_atomic

SCALE = 0.5  # s = alpha / r; not 1, so that the scaling is exercised by the equality checks

LoopFn = Callable[[Any, Tensor], Tensor]


@dataclass(frozen=True)
class Sizes:
    n: int  # in_features
    m: int  # out_features
    r: int  # total rank
    E: int  # experts (CoMoL: cores N)


# ----- the per-expert loop baselines -----------------------------------------------------------------
def gate(logits: Tensor, top_k: int | None) -> Tensor:
    """softmax over experts; with top_k, softmax over the k largest logits (the rest get 0)."""
    if top_k is None or top_k == logits.shape[-1]:
        return torch.softmax(logits, dim=-1)
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return torch.softmax(logits.masked_fill(logits < kth, float("-inf")), dim=-1)


def loop_lora(mod: LoRA, x: Tensor) -> Tensor:
    return mod.config.scale * F.linear(F.linear(x, mod.A.weight), mod.B.weight)


def loop_moelora(mod: MoELoRA, x: Tensor) -> Tensor:
    c = mod.config
    assert mod.router is not None
    hs = [F.linear(x, mod.expert_A(i)) for i in range(c.num_experts)]  # A_i x, (..., r_e) each
    z = x if c.router == "input" else torch.cat(hs, dim=-1)
    g = gate(F.linear(z, mod.router.logits.dense()), c.top_k)  # (..., E)
    out = torch.zeros(*x.shape[:-1], c.out_features, dtype=x.dtype)
    for i in range(c.num_experts):
        out = out + g[..., i : i + 1] * (c.scale * F.linear(hs[i], mod.expert_B(i)))
    return out


def loop_moelora_dispatch(mod: MoELoRA, x: Tensor) -> Tensor:
    """Top-k as sparse dispatch: each expert runs only on the tokens routed to it (gather, index_add)."""
    c = mod.config
    assert mod.router is not None and c.router == "input"
    xf = x.reshape(-1, c.in_features)  # (T, n)
    g = gate(F.linear(xf, mod.router.logits.dense()), c.top_k)  # (T, E)
    out = torch.zeros(xf.shape[0], c.out_features, dtype=x.dtype)
    for i in range(c.num_experts):
        idx = torch.nonzero(g[:, i] > 0).squeeze(-1)
        yi = c.scale * F.linear(F.linear(xf[idx], mod.expert_A(i)), mod.expert_B(i))
        out = out.index_add(0, idx, g[idx, i : i + 1] * yi)
    return out.reshape(*x.shape[:-1], c.out_features)


def loop_hydralora(mod: HydraLoRA, x: Tensor) -> Tensor:
    c = mod.config
    assert mod.router is not None
    h = F.linear(x, mod.A.weight)  # shared A x, (..., r_e)
    g = gate(F.linear(x, mod.router.logits.dense()), c.top_k)
    out = torch.zeros(*x.shape[:-1], c.out_features, dtype=x.dtype)
    for i in range(c.num_experts):
        out = out + g[..., i : i + 1] * (c.scale * F.linear(h, mod.expert_B(i)))
    return out


def loop_talklora(mod: TalkLoRA, x: Tensor) -> Tensor:
    c = mod.config
    assert mod.router is not None
    E, d = c.num_experts, c.head_dim
    h = F.linear(x, mod.A.weight)
    heads = [h[..., j * d : (j + 1) * d] for j in range(E)]  # h_j, (..., d) each
    H = torch.stack(heads, dim=-1)  # (..., d, E)
    talked = [H @ mod.T.weight[i] for i in range(E)]  # h̃_i = Σ_j T_ij h_j
    g = gate(F.linear(torch.cat(talked, dim=-1), mod.router.logits.dense()), c.top_k)
    out = torch.zeros(*x.shape[:-1], c.out_features, dtype=x.dtype)
    for i in range(E):
        yi = F.linear(F.linear(heads[i], mod.K.weight[i]), mod.expert_B(i))  # B_i K_i h_i
        out = out + g[..., i : i + 1] * (c.scale * yi)
    return out


def _comol_route(mod: CoMoL, x: Tensor) -> tuple[Tensor, Tensor]:
    assert mod.router is not None
    h = F.linear(x, mod.A.weight)  # shared A x, (..., r)
    z = h if mod.config.core_router else x
    return h, gate(F.linear(z, mod.router.logits.dense()), mod.config.top_k)


def loop_comol(mod: CoMoL, x: Tensor) -> Tensor:
    c = mod.config
    h, g = _comol_route(mod, x)
    out = torch.zeros(*x.shape[:-1], c.out_features, dtype=x.dtype)
    for i in range(c.num_cores):
        out = out + g[..., i : i + 1] * (
            c.scale * F.linear(F.linear(h, mod.cores[i]), mod.B.weight)
        )
    return out


def loop_comol_latent(mod: CoMoL, x: Tensor) -> Tensor:
    """The cheaper loop: mix the core outputs in R^r, apply B once."""
    c = mod.config
    h, g = _comol_route(mod, x)
    merged = torch.zeros(*x.shape[:-1], c.rank, dtype=x.dtype)
    for i in range(c.num_cores):
        merged = merged + g[..., i : i + 1] * F.linear(h, mod.cores[i])
    return c.scale * F.linear(merged, mod.B.weight)


def materialised_comol(mod: CoMoL, x: Tensor) -> Tensor:
    return mod.forward_materialised(x)


# ----- the variants ----------------------------------------------------------------------------------
def macs_per_token(key: str, s: Sizes) -> int:
    """Forward multiply-adds per token that the maths implies (matmuls + router + per-expert scaling)."""
    n, m, r, E = s.n, s.m, s.r, s.E
    re = r // E
    table = {
        "lora": r * (n + m),
        "moelora-input": r * (n + m) + E * n + r,  # + router W_g x, + g_i scaling of the r latents
        "moelora-latent": r * (n + m) + E * r + r,  # + router W_r h
        "moelora-top2": r * (n + m) + E * n + r,
        "hydralora": re * n + E * n + E * re + E * re * m,  # A x, router, g ⊗ A x, B
        "talklora": r * n + r * r // E + E * r + E * r + r + r * m,  # A, K, T⊗I, W_r, scaling, B
        "comol-cr": r * (n + m) + E * r + E * r * r + E * r,  # A, B, router W_c h, cores, mixing
        "comol-nocr": r * (n + m) + E * n + E * r * r + E * r,  # router W_g x instead
    }
    return table[key]


@dataclass
class Variant:
    key: str
    label: str
    build: Callable[[Sizes], Adapter]
    loop: LoopFn
    extra: dict[str, LoopFn] = field(default_factory=dict)  # other implementations of the same Δ


def variants(s: Sizes) -> list[Variant]:
    re = s.r // s.E
    top = min(2, s.E)
    return [
        Variant("lora", "LoRA", lambda s: LoRA(LoRAConfig(s.n, s.m, s.r, SCALE)), loop_lora),
        Variant(
            "moelora-input",
            "MoELoRA input router",
            lambda s: MoELoRA(MoELoRAConfig(s.n, s.m, s.E, re, "input", None, SCALE)),
            loop_moelora,
        ),
        Variant(
            "moelora-latent",
            "MoELoRA latent router",
            lambda s: MoELoRA(MoELoRAConfig(s.n, s.m, s.E, re, "latent", None, SCALE)),
            loop_moelora,
        ),
        Variant(
            "moelora-top2",
            f"MoELoRA top-{top}",
            lambda s: MoELoRA(MoELoRAConfig(s.n, s.m, s.E, re, "input", top, SCALE)),
            loop_moelora,
            {"sparse-dispatch loop": loop_moelora_dispatch},
        ),
        Variant(
            "hydralora",
            "HydraLoRA",
            lambda s: HydraLoRA(HydraLoRAConfig(s.n, s.m, s.E, re, None, SCALE)),
            loop_hydralora,
        ),
        Variant(
            "talklora",
            "TalkLoRA",
            lambda s: TalkLoRA(TalkLoRAConfig(s.n, s.m, s.r, s.E, None, SCALE)),
            loop_talklora,
        ),
        Variant(
            "comol-cr",
            "CoMoL core router",
            lambda s: CoMoL(CoMoLConfig(s.n, s.m, s.r, s.E, True, None, SCALE)),
            loop_comol,
            {"latent loop": loop_comol_latent, "materialised core": materialised_comol},
        ),
        Variant(
            "comol-nocr",
            "CoMoL w/o core router",
            lambda s: CoMoL(CoMoLConfig(s.n, s.m, s.r, s.E, False, None, SCALE)),
            loop_comol,
            {"latent loop": loop_comol_latent, "materialised core": materialised_comol},
        ),
    ]


# ----- equality of the loops and the modules ---------------------------------------------------------
def check_equal(v: Variant, s: Sizes, seed: int = 0) -> None:
    """Loop == module on a small float64 case: outputs and gradients to x and to every parameter."""
    small = Sizes(n=24, m=20, r=s.r, E=s.E)
    mod = v.build(small).to(torch.float64).randomize_(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(2, 3, small.n, generator=gen, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 3, small.m, generator=gen, dtype=torch.float64)
    inputs = [x, *mod.parameters()]
    ref = mod(x)
    ref_grads = torch.autograd.grad(ref, inputs, dy)
    for name, fn in {"loop": v.loop, **v.extra}.items():
        out = fn(mod, x)
        torch.testing.assert_close(
            out, ref, rtol=1e-10, atol=1e-12, msg=lambda e, n=name: f"{v.key} {n}: {e}"
        )
        for a, b in zip(torch.autograd.grad(out, inputs, dy), ref_grads, strict=True):
            torch.testing.assert_close(
                a, b, rtol=1e-10, atol=1e-12, msg=lambda e, n=name: f"{v.key} {n} grad: {e}"
            )


# ----- timing ----------------------------------------------------------------------------------------
def make_step(
    fn: Callable[[Tensor], Tensor], x: Tensor, dy: Tensor, params: list[Tensor], checks: bool
) -> Callable[[], None]:
    inputs = [x, *params]

    def step() -> None:
        with input_checks(checks):
            torch.autograd.grad(fn(x), inputs, dy)

    return step


def summary(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=4) if len(samples) >= 2 else [samples[0]] * 3
    return {
        "median_ms": 1e3 * statistics.median(samples),
        "min_ms": 1e3 * min(samples),
        "q1_ms": 1e3 * q[0],
        "q3_ms": 1e3 * q[2],
    }


class OtherLoad:
    """CPU time that other processes use between construction and `cores()`, in cores (Linux
    /proc/stat busy time minus this process's CPU time, over the wall time); NaN where unavailable."""

    def __init__(self) -> None:
        self.t0, self.busy0, self.own0 = time.perf_counter(), _busy_seconds(), time.process_time()

    def cores(self) -> float:
        wall = time.perf_counter() - self.t0
        busy = _busy_seconds() - self.busy0
        own = time.process_time() - self.own0
        return max(0.0, busy - own) / wall if wall > 0 else math.nan


def _busy_seconds() -> float:
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return math.nan
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # up to steal; guest is in user


def count_subnormal(mod: Adapter, x: Tensor) -> int:
    """Subnormal routing weights on the timed input: they would slow float maths for a spurious reason
    (x86 without flush-to-zero), so the timed parameters are drawn to keep router logits O(1)."""
    with torch.no_grad(), input_checks(False):
        g = mod.routing(x)
    if g is None or not g.is_floating_point():
        return 0
    tiny = torch.finfo(g.dtype).tiny
    return int(((g != 0) & (g.abs() < tiny)).sum())


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(args: argparse.Namespace) -> dict[str, Any]:
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    s = Sizes(args.n, args.m, args.rank, args.experts)
    if s.r % s.E != 0:
        raise SystemExit(
            f"--rank={s.r}: expected a multiple of --experts={s.E} (per-expert rank r/E)"
        )
    if args.tokens % args.batch != 0:
        raise SystemExit(f"--tokens={args.tokens}: expected a multiple of --batch={args.batch}")
    vs = variants(s)
    for v in vs:
        check_equal(v, s)
    print(
        f"loops == modules (float64, outputs and gradients): {len(vs)} architectures checked",
        file=sys.stderr,
    )

    torch.manual_seed(args.seed)
    x = torch.randn(args.batch, args.tokens // args.batch, s.n, dtype=dtype, requires_grad=True)
    dy = torch.randn(args.batch, args.tokens // args.batch, s.m, dtype=dtype)
    steps: dict[tuple[str, str], Callable[[], None]] = {}
    subnormal: dict[str, int] = {}
    for v in vs:
        mod = v.build(s).to(dtype).randomize_(args.seed)  # std 1/sqrt(fan_in): O(1) router logits
        subnormal[v.key] = count_subnormal(mod, x)
        params = [p for p in mod.parameters() if p.requires_grad]
        steps[(v.key, "module")] = make_step(mod, x, dy, params, checks=False)
        steps[(v.key, "checks on")] = make_step(mod, x, dy, params, checks=True)
        steps[(v.key, "loop")] = make_step(
            lambda t, f=v.loop, a=mod: f(a, t), x, dy, params, checks=False
        )
        for name, fn in v.extra.items():
            steps[(v.key, name)] = make_step(
                lambda t, f=fn, a=mod: f(a, t), x, dy, params, checks=False
            )
    W0 = torch.randn(s.m, s.n, dtype=dtype) / math.sqrt(s.n)  # frozen base layer, for scale only
    steps[("base", "frozen W0 x")] = make_step(lambda t: F.linear(t, W0), x, dy, [], checks=False)

    clock = time.perf_counter if args.timer == "wall" else time.process_time
    timers = {
        k: Timer(stmt="step()", globals={"step": f}, timer=clock, num_threads=args.threads)
        for k, f in steps.items()
    }
    for t in timers.values():
        t.timeit(args.warmup)
    samples: dict[tuple[str, str], list[float]] = {k: [] for k in timers}
    order = list(timers)
    rng = random.Random(args.seed)
    load_before = os.getloadavg()
    others: list[float] = []  # per repeat: CPU used by other processes, in cores
    for rep in range(args.repeats):
        rng.shuffle(order)
        probe = OtherLoad()
        for k in order:
            samples[k].append(timers[k].timeit(args.number).median)
        others.append(probe.cores())
        print(f"\rrepeat {rep + 1}/{args.repeats}", end="", file=sys.stderr)
    print(file=sys.stderr)
    load_after = os.getloadavg()

    quiet = [i for i, o in enumerate(others) if o <= args.quiet]
    quiet_rows = None
    if len(quiet) >= 5 and len(quiet) < len(others):
        quiet_stats = {k: summary([v[i] for i in quiet]) for k, v in samples.items()}
        quiet_rows = result_rows(quiet_stats, vs, s)
    stats = {k: summary(v) for k, v in samples.items()}
    return {
        "machine": {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "threads": args.threads,
            "python": platform.python_version(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
        "args": vars(args),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "sizes": {
            "n": s.n,
            "m": s.m,
            "rank": s.r,
            "experts": s.E,
            "tokens": args.tokens,
            "dtype": args.dtype,
        },
        "base_frozen_W0": stats[("base", "frozen W0 x")],
        "subnormal_routing_weights": subnormal,
        "other_load_cores_per_repeat": others,
        "rows": result_rows(stats, vs, s),
        "quiet_repeats": quiet,
        "rows_quiet": quiet_rows,
        "samples_ms": {f"{k[0]}/{k[1]}": [1e3 * t for t in v] for k, v in samples.items()},
    }


def result_rows(
    stats: dict[tuple[str, str], dict[str, float]], vs: list[Variant], s: Sizes
) -> list[dict[str, Any]]:
    """One row per architecture: medians, ratios against LoRA and against the loop, targets."""
    lora_ms = stats[("lora", "module")]["median_ms"]
    lora_macs = macs_per_token("lora", s)
    rows = []
    for v in vs:
        mod_ms = stats[(v.key, "module")]["median_ms"]
        loop_ms = stats[(v.key, "loop")]["median_ms"]
        macs = macs_per_token(v.key, s)
        rows.append(
            {
                "key": v.key,
                "arch": v.label,
                "macs_per_token_fwd": macs,
                "mac_ratio_vs_lora": macs / lora_macs,
                "module": stats[(v.key, "module")],
                "ratio_vs_lora": mod_ms / lora_ms,
                "loop": stats[(v.key, "loop")],
                "speedup_vs_loop": loop_ms / mod_ms,
                "checks_on": stats[(v.key, "checks on")],
                "checks_overhead_ms": stats[(v.key, "checks on")]["median_ms"] - mod_ms,
                "extra": {name: stats[(v.key, name)] for name in v.extra},
                "meets_lora_target": v.key == "lora" or mod_ms / lora_ms <= 1.3,
                "meets_loop_target": None
                if s.E < 8 or v.key == "lora"
                else loop_ms / mod_ms >= 2.0,
            }
        )
    return rows


def rows_table(rows: list[dict[str, Any]]) -> list[str]:
    head = (
        "| arch | MACs/token fwd | MAC ratio | ms fwd+bwd (median [q1, q3]) | ratio vs LoRA "
        "| loop ms | speed-up vs loop | checks on, +ms |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        mo, lo = r["module"], r["loop"]
        lines.append(
            f"| {r['arch']} | {r['macs_per_token_fwd']:,} | {r['mac_ratio_vs_lora']:.3f} "
            f"| {mo['median_ms']:.2f} [{mo['q1_ms']:.2f}, {mo['q3_ms']:.2f}] | {r['ratio_vs_lora']:.2f}"
            f"{'' if r['meets_lora_target'] else ' (miss)'} | {lo['median_ms']:.2f} | {r['speedup_vs_loop']:.2f}"
            f"{' (miss)' if r['meets_loop_target'] is False else ''} | {r['checks_overhead_ms']:+.2f} |"
        )
    extra = [
        f"| {r['arch']} | {name} | {st['median_ms']:.2f} | {st['median_ms'] / r['module']['median_ms']:.2f} |"
        for r in rows
        for name, st in r["extra"].items()
    ]
    if extra:
        lines += [
            "",
            "| arch | other implementation | ms fwd+bwd | x module |",
            "|---|---|---|---|",
            *extra,
        ]
    return lines


def table(res: dict[str, Any]) -> str:
    lines = rows_table(res["rows"])
    b, mach, others = res["base_frozen_W0"], res["machine"], res["other_load_cores_per_repeat"]
    lines += [
        "",
        f"frozen W0 x alone (n x m dense, input grad only): {b['median_ms']:.2f} ms",
        f"load average before/after: {mach['loadavg_before'][0]:.2f} / {mach['loadavg_after'][0]:.2f} "
        f"on {mach['cpu_count']} CPUs ({mach['cpu']}), torch {mach['torch']}, "
        f"{mach['threads']} threads, {res['args']['timer']} clock",
        f"other processes per repeat (cores): median {statistics.median(others):.2f}, "
        f"max {max(others):.2f}; quiet (<= {res['args']['quiet']}): "
        f"{len(res['quiet_repeats'])} of {len(others)} repeats",
    ]
    if res["rows_quiet"] is not None:
        lines += ["", f"Over the {len(res['quiet_repeats'])} quiet repeats only:", ""]
        lines += rows_table(res["rows_quiet"])
    bad = {k: v for k, v in res["subnormal_routing_weights"].items() if v}
    if bad:
        lines.append(f"WARNING: subnormal routing weights {bad}: times may be inflated")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=1024, help="in_features")
    p.add_argument("--m", type=int, default=1024, help="out_features")
    p.add_argument("--rank", type=int, default=32, help="total rank r (per-expert rank r/E)")
    p.add_argument("--experts", type=int, default=8, help="experts E (CoMoL: cores N)")
    p.add_argument("--tokens", type=int, default=4096, help="tokens per step (batch x sequence)")
    p.add_argument("--batch", type=int, default=8, help="sequences the tokens are split into")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    p.add_argument(
        "--threads", type=int, default=2, help="torch.set_num_threads, same for every variant"
    )
    p.add_argument("--repeats", type=int, default=30, help="timed rounds over all variants")
    p.add_argument("--number", type=int, default=1, help="steps per timed sample")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quiet",
        type=float,
        default=0.1,
        help="a repeat is quiet if other processes used at most this many cores during it; when "
        "some repeats are not, a second table over the quiet ones is printed",
    )
    p.add_argument(
        "--timer",
        choices=["wall", "process"],
        default="wall",
        help="wall clock, or the process's CPU time (all threads; less sensitive to other load)",
    )
    p.add_argument("--json", metavar="OUT", help="also write the results and every sample to OUT")
    args = p.parse_args(argv)
    res = run(args)
    print(table(res))
    if args.json:
        write_json_atomic(args.json, res, indent=1)


if __name__ == "__main__":
    main()
