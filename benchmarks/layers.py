"""Layer benchmark on `torch.utils.benchmark`: every adapter against PEFT's LoRA and its own FLOP floor.

    .venv/bin/python benchmarks/layers.py                  # CPU, float32, full sweeps (make bench)
    .venv/bin/python benchmarks/layers.py --quick          # tiny sizes, seconds (the test runs this)
    .venv/bin/python benchmarks/layers.py --gpu            # CUDA, bfloat16 and float32
    .venv/bin/python benchmarks/layers.py --json out.json  # also write every number (atomically)

Equal total rank r = E·r_e (the width of the stacked latent that B reads): LoRA of rank r; MoELoRA E
experts of rank r_e; HydraLoRA a shared A of rank r_e and E heads; TalkLoRA rank r in E heads; CoMoL
rank r with N = E cores. One step is forward + backward to x and to every trainable parameter.

Every layer is built through the registry from one generic spec (`proofs_numeric.specs.LayerSpec`:
rank r, E experts of rank r_e, the scale, and the row's router / top-k), so a registered architecture
joins the table by one `Layer` row. Per layer: Δ ms (the adapter alone), the MAC ratio to LoRA from the
architecture's own formula (`adapter.macs_formula()`; on the sparse top-k rows
`adapter.sparse_macs_formula()`),
time ÷ floor = (Δ time / LoRA Δ time) ÷ MAC ratio (1.00 = as fast per multiply–add as LoRA's two
matmuls), the whole layer y = W0 x + Δ(x) against PEFT's LoRA layer on the same nn.Linear measured in
the same run, saved-activation bytes and peak memory. Sweeps over E (r_e fixed) and tokens fit the
scaling exponent of Δ time (log-log least squares). Ratios measured in one run are robust to load from
other processes; absolute times are not.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from measure import Memory, RoundRobin, loglog_slope, machine, memory
from torch import Tensor, nn

from moelora_core import Adapter, input_checks
from moelora_core.registry import create
from moelora_core.sparse import Mode, sparse_mode
from proofs_numeric.jsonio import write_json_atomic
from proofs_numeric.specs import LayerSpec, config_for

SCALE = 0.5


@dataclass(frozen=True)
class Shape:
    n: int
    m: int
    E: int
    re: int  # per-expert rank; total rank r = E·r_e
    tokens: int

    @property
    def r(self) -> int:
        return self.E * self.re


def _top(s: Shape) -> int:
    return min(2, s.E)


Options = Callable[[Shape], dict[str, Any]]


def _no_options(s: Shape) -> dict[str, Any]:
    return {}


def _top2(s: Shape) -> dict[str, Any]:
    return {"top_k": _top(s)}


@dataclass(frozen=True)
class Layer:
    """One row: a registered family, built at a shape from `LayerSpec(rank=r, experts=E,
    expert_rank=r_e, scale=SCALE, **options(shape))`."""

    key: str
    family: str
    options: Options = _no_options  # the row's router, top_k, core_router
    mode: Mode = "auto"  # sparse top-k path: forced dense, forced sparse, or the automatic choice

    def config(self, s: Shape) -> Any:
        spec = LayerSpec(rank=s.r, experts=s.E, expert_rank=s.re, scale=SCALE, **self.options(s))
        return config_for(self.family, spec, in_features=s.n, out_features=s.m)

    def build(self, s: Shape, device: str | None = None) -> Adapter:
        return create(self.config(s), device=device)


LORA = Layer("LoRA", "lora")
LAYERS = [
    LORA,
    Layer("MoELoRA input", "moelora"),
    Layer("MoELoRA latent", "moelora", lambda s: {"router": "latent"}),
    Layer("MoELoRA top-2 dense", "moelora", _top2, "dense"),
    Layer("MoELoRA top-2 sparse", "moelora", _top2, "sparse"),
    Layer("HydraLoRA", "hydralora"),
    Layer("HydraLoRA top-2 sparse", "hydralora", _top2, "sparse"),
    Layer("TalkLoRA", "talklora"),
    Layer("CoMoL core router", "comol"),
    Layer("CoMoL w/o CR", "comol", lambda s: {"core_router": False}),
]


def macs(mod: Adapter, mode: Mode) -> int:
    """Multiply–adds per token from the architecture's own formula (its sparse one on a forced-sparse
    row, where it has a sparse path)."""
    sparse = mod.sparse_macs_formula() if mode == "sparse" else None
    formula = sparse if sparse is not None else mod.macs_formula()
    return int(formula.subs(mod.subs()))


def peft_layer(base: nn.Linear, r: int) -> nn.Module:
    """PEFT's LoRA on `base` (rank r, the same scale), its base frozen as PEFT leaves it."""
    from peft import LoraConfig, get_peft_model

    holder = nn.Sequential()
    holder.add_module("proj", base)
    alpha = int(SCALE * r)  # s = alpha / r = SCALE (r even)
    model = get_peft_model(
        holder, LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"], lora_dropout=0.0)
    )
    return model.get_submodule("base_model.model.proj")


@dataclass(frozen=True)
class Row:
    key: str
    shape: dict[str, int]
    macs_per_token: int
    mac_ratio: float  # vs LoRA of rank r
    delta_s: float  # Δ alone, median over rounds
    over_floor: float  # median per-round (Δ time / LoRA Δ time), ÷ mac_ratio
    layer_s: float  # W0 x + Δ(x); NaN in sweeps
    vs_peft: float  # median per-round (layer time / PEFT LoRA layer time); NaN in sweeps
    peft_s: float
    memory: Memory | None  # None in sweeps


def _layer_fns(
    mod: Adapter, mode: Mode, base: nn.Linear
) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    def delta(t: Tensor) -> Tensor:
        with sparse_mode(mode), input_checks(False):
            out: Tensor = mod(t)
        return out

    def whole(t: Tensor) -> Tensor:
        return F.linear(t, base.weight) + delta(t)

    return delta, whole


def run_shape(
    s: Shape, layers: list[Layer], args: argparse.Namespace, *, sweep: bool = False
) -> list[Row]:
    """Every layer at shape s, timed round-robin. In a sweep only Δ is timed (the whole-layer, PEFT
    and memory columns come from the main table)."""
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(s.tokens, s.n, generator=gen).to(dtype=dtype, device=device).requires_grad_()
    dy = torch.randn(s.tokens, s.m, generator=gen).to(dtype=dtype, device=device)
    base = nn.Linear(s.n, s.m, bias=False).to(dtype=dtype, device=device).requires_grad_(False)
    rr = RoundRobin(args.threads, device)
    if not sweep:
        peft = peft_layer(base, s.r)
        rr.add("PEFT", peft, x, dy, [p for p in peft.parameters() if p.requires_grad])
    lora_macs = macs(LORA.build(s, device="meta"), "auto")
    built: list[tuple[Layer, Adapter, Memory | None]] = []
    for layer in layers:
        mod = layer.build(s).to(dtype=dtype, device=device).randomize_(args.seed)
        params = [p for p in mod.parameters() if p.requires_grad]
        delta, whole = _layer_fns(mod, layer.mode, base)
        step = rr.add(layer.key, delta, x, dy, params)
        if not sweep:
            rr.add(layer.key + "/layer", whole, x, dy, params)
        built.append((layer, mod, None if sweep else memory(delta, x, step)))
    rounds = args.rounds if not sweep else max(1, args.rounds // 2)
    rr.run(rounds, (args.sweep_run_time if sweep else args.min_run_time) / rounds)
    rows: list[Row] = []
    for layer, mod, mem in built:
        mac = macs(mod, layer.mode)
        nan = math.nan
        rows.append(
            Row(
                key=layer.key,
                shape=asdict(s),
                macs_per_token=mac,
                mac_ratio=mac / lora_macs,
                delta_s=rr.seconds(layer.key),
                over_floor=rr.ratio(layer.key, "LoRA") / (mac / lora_macs),
                layer_s=nan if sweep else rr.seconds(layer.key + "/layer"),
                vs_peft=nan if sweep else rr.ratio(layer.key + "/layer", "PEFT"),
                peft_s=nan if sweep else rr.seconds("PEFT"),
                memory=mem,
            )
        )
    print(f"  {asdict(s)} done", file=sys.stderr)
    return rows


def main_table(rows: list[Row]) -> list[str]:
    out = [
        "| layer | MACs/token | MAC ratio | Δ ms | time ÷ floor | layer ms | × PEFT LoRA | saved MiB | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem = r.memory or Memory(0, 0)
        out.append(
            f"| {r.key} | {r.macs_per_token:,} | {r.mac_ratio:.3f} | {1e3 * r.delta_s:.2f} "
            f"| {r.over_floor:.2f} | {1e3 * r.layer_s:.2f} | {r.vs_peft:.2f} "
            f"| {mem.saved_bytes / 2**20:.1f} | {mem.peak_bytes / 2**20:.1f} |"
        )
    if rows:
        out.append(f"\nPEFT LoRA layer (W0 x + LoRA): {1e3 * rows[0].peft_s:.2f} ms")
    return out


def sweep_table(rows: list[Row], axis: str) -> list[str]:
    values = sorted({r.shape[axis] for r in rows})
    keys = list(dict.fromkeys(r.key for r in rows))
    cell = {(r.key, r.shape[axis]): r for r in rows}
    head = f"| layer | {' | '.join(f'{axis}={v}' for v in values)} | exponent |"
    out = [
        f"Δ ms (time ÷ floor) against {axis}; exponent = fitted slope of log time on log {axis}",
        "",
        head,
        "|---" * (len(values) + 2) + "|",
    ]
    for k in keys:
        cells = [cell[(k, v)] for v in values]
        slope = loglog_slope([float(v) for v in values], [c.delta_s for c in cells])
        body = " | ".join(f"{1e3 * c.delta_s:.2f} ({c.over_floor:.2f})" for c in cells)
        out.append(f"| {k} | {body} | {slope:.2f} |")
    return out


PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "n": 1024,
        "m": 1024,
        "re": 4,
        "E": 8,
        "tokens": 4096,
        "experts": [2, 4, 8, 16, 32, 64],
        "token_sweep": [512, 2048, 8192, 32768],
        "min_run_time": 2.0,
        "rounds": 4,
    },
    "quick": {
        "n": 32,
        "m": 24,
        "re": 2,
        "E": 4,
        "tokens": 64,
        "experts": [2, 4],
        "token_sweep": [32, 64],
        "min_run_time": 0.01,
        "rounds": 2,
    },
}


def run(args: argparse.Namespace) -> dict[str, Any]:
    p = PRESETS["quick" if args.quick else "full"]
    if args.min_run_time is None:
        args.min_run_time = p["min_run_time"]
    if args.rounds is None:
        args.rounds = p["rounds"]
    if args.sweep_run_time is None:
        args.sweep_run_time = p["min_run_time"] / 2
    p = {**p, **{k: v for k, v in (("experts", args.experts), ("token_sweep", args.tokens)) if v}}
    torch.set_num_threads(args.threads)
    main_shape = Shape(p["n"], p["m"], p["E"], p["re"], p["tokens"])
    print(f"main {asdict(main_shape)}", file=sys.stderr)
    main_rows = run_shape(main_shape, LAYERS, args)
    sweep_layers = [] if args.main_only else LAYERS
    e_rows = [
        r
        for E in p["experts"]
        for r in run_shape(
            Shape(p["n"], p["m"], E, p["re"], p["tokens"]), sweep_layers, args, sweep=True
        )
    ]
    t_rows = [
        r
        for t in p["token_sweep"]
        for r in run_shape(
            Shape(p["n"], p["m"], p["E"], p["re"], t), sweep_layers, args, sweep=True
        )
    ]
    return {
        "machine": machine(torch.device(args.device), args.threads),
        "args": vars(args),
        "main": main_rows,
        "experts": e_rows,
        "tokens": t_rows,
    }


def report(res: dict[str, Any]) -> str:
    mach = res["machine"]
    lines = [
        f"## {res['args']['dtype']} on {mach['device']} ({mach.get('gpu', mach['cpu'])}, "
        f"{mach['threads']} threads, torch {mach['torch']}, load average {mach['loadavg'][0]:.2f})",
        "",
        *main_table(res["main"]),
    ]
    if res["experts"]:
        lines += ["", *sweep_table(res["experts"], "E")]
    if res["tokens"]:
        lines += ["", *sweep_table(res["tokens"], "tokens")]
    return "\n".join(lines)


def to_json(res: dict[str, Any]) -> dict[str, Any]:
    return {**res, **{k: [asdict(r) for r in res[k]] for k in ("main", "experts", "tokens")}}


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i] (device-agnostic code)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    ap.add_argument("--gpu", action="store_true", help="CUDA, bfloat16 then float32")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, short timings (tests)")
    ap.add_argument("--main-only", action="store_true", help="skip the E and token sweeps")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every timing")
    ap.add_argument(
        "--min-run-time", type=float, default=None, help="seconds per blocked_autorange"
    )
    ap.add_argument("--rounds", type=int, default=None, help="round-robin rounds (sweeps: half)")
    ap.add_argument("--sweep-run-time", type=float, default=None, help="seconds per sweep timing")
    ap.add_argument("--experts", type=int, nargs="+", help="E values of the sweep (default 2 … 64)")
    ap.add_argument("--tokens", type=int, nargs="+", help="token counts of the sweep (512 … 32768)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="OUT", help="also write every number to OUT")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    runs: list[dict[str, Any]] = []
    for dtype in ["bfloat16", "float32"] if args.gpu else [args.dtype]:
        a = argparse.Namespace(**{**vars(args), "dtype": dtype})
        if args.gpu:
            a.device = "cuda" if args.device == "cpu" else args.device
        res = run(a)
        print(report(res), flush=True)
        runs.append(to_json(res))
    if args.json:
        write_json_atomic(args.json, {"runs": runs}, indent=1)


if __name__ == "__main__":
    main()
