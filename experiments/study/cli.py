"""`moelora study [--preset tiny|cpu|gpu|demo] [--out DIR] [overrides]` (argparse; lazily imported)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moelora_core.errors import ConfigError, MoELoRAError

from .grid import PRESETS, preset


def _tuple(cast: type, s: str | None) -> tuple[object, ...] | None:
    return None if s is None else tuple(cast(x) for x in s.split(",") if x)


def _shard(s: str) -> tuple[int, int]:
    i, sep, k = s.partition("/")
    if not (sep and i.isdigit() and k.isdigit() and int(i) < int(k)):
        raise ConfigError(f"--shard={s!r}: expected i/k with 0 <= i < k, e.g. 0/4")
    return int(i), int(k)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="moelora study",
        description="Fine-tune every architecture over seeds, tasks and budgets; measure bounds, "
        "amplification and routing (also along training); compare with paired statistics. "
        "Re-runs skip finished cells.",
    )
    p.add_argument("--preset", default="cpu", choices=list(PRESETS))
    p.add_argument("--out", default=None, help="run directory (default runs/study-<preset>)")
    p.add_argument("--model", default=None, help="encoder directory (default: packaged MiniLM)")
    p.add_argument("--data", default=None, help="tasks JSON from --export-tasks (offline machines)")
    p.add_argument("--archs", default=None, help="comma-separated subset")
    p.add_argument("--seeds", default=None, help="comma-separated seeds")
    p.add_argument("--tasks", default=None, help="comma-separated: vader, multi")
    p.add_argument("--budgets", default=None, help="comma-separated: equal-rank, equal-params")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--shard", default="0/1", help="i/k: run the cells with index i mod k only")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (0: auto)")
    p.add_argument(
        "--report-only", action="store_true", help="only rebuild metrics/report from cells"
    )
    p.add_argument(
        "--export-tasks",
        default=None,
        metavar="JSON",
        help="write the preset's tasks to JSON and exit",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        cfg = preset(
            a.preset,
            model=a.model,
            data=a.data,
            archs=_tuple(str, a.archs),
            seeds=_tuple(int, a.seeds),
            tasks=_tuple(str, a.tasks),
            budgets=_tuple(str, a.budgets),
            steps=a.steps,
            threads=a.threads,
        )
        if a.export_tasks:
            from .data import export_tasks

            print(export_tasks(a.export_tasks, cfg.tasks, cfg.per_task))
            return 0
        from .runner import run_study

        out = Path(a.out or f"runs/study-{a.preset}")
        if a.report_only:
            from .runner import rebuild_report

            m = rebuild_report(cfg, out)
        else:
            shard = _shard(a.shard)  # shards leave the report to a final --report-only
            m = run_study(cfg, out, shard=shard, report=shard[1] == 1)
    except MoELoRAError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for c in (m.get("analysis") or {}).get("comparisons", []):
        print(
            f"{c['verdict']:>15}  {c['claim']} [{c['task']}/{c['budget']}] {c['metric']}: "
            f"{c['a']} − {c['b']} = {c['diff']:+.4g} [{c['t_low']:+.3g}, {c['t_high']:+.3g}]"
        )
    print(f"wrote {out / 'metrics.json'} and {out / 'report.md'} ({m['seconds_this_call']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
