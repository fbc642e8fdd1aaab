"""The study's plots (matplotlib, Agg): forest plot of paired differences, amplification against
‖T‖₂, routing entropy and dominance over training steps."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def forest(analysis: Mapping[str, Any], path: Path) -> Path | None:
    """One panel per metric; one row per comparison: d̄ with its t interval (bootstrap as a thin bar)."""
    comps = analysis.get("comparisons") or []
    if not comps:
        return None
    plt = _plt()
    metrics = list(dict.fromkeys(c["metric"] for c in comps))
    rows = {m: [c for c in comps if c["metric"] == m] for m in metrics}
    fig, axes = plt.subplots(
        len(metrics), 1, figsize=(8, 1.2 + 0.45 * len(comps) + 0.6 * len(metrics)), squeeze=False
    )
    for ax, m in zip(axes[:, 0], metrics, strict=True):
        cs = rows[m]
        y = list(range(len(cs)))[::-1]
        for yi, c in zip(y, cs, strict=True):
            color = {"supports": "tab:green", "contradicts": "tab:red"}.get(
                c["verdict"], "tab:gray"
            )
            ax.plot([c["boot_low"], c["boot_high"]], [yi - 0.15] * 2, color=color, lw=1, alpha=0.6)
            ax.errorbar(
                c["diff"],
                yi,
                xerr=[[c["diff"] - c["t_low"]], [c["t_high"] - c["diff"]]],
                fmt="o",
                color=color,
                capsize=3,
            )
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(
            y, [f"{c['a']} − {c['b']} ({c['task']}/{c['budget']})" for c in cs], fontsize=7
        )
        ax.set_title(f"{m}: paired difference, 95% t CI (bootstrap below)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def amp_vs_talk(cells: list[Mapping[str, Any]], path: Path) -> Path | None:
    pts = [p for c in cells for p in c.get("talk_points") or []]  # layers with a talking module
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=12, label="trained T")
    ax.scatter(
        [p[0] for p in pts], [p[2] for p in pts], s=12, marker="x", label="same weights, T = I"
    )
    ax.set_xlabel("‖T‖₂ (per TalkLoRA layer)")
    ax.set_ylabel("router amplification, ε = 0.1 (mean)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def dynamics(cells: list[Mapping[str, Any]], path: Path) -> Path | None:
    """Entropy and dominance (mean over layers, then over seeds) against the step, per arch."""
    groups: dict[tuple[str, str], dict[str, dict[int, list[tuple[float, float]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for c in cells:
        for s in c.get("trace") or []:
            if s.get("entropy") is not None:
                groups[(c["task"], c["budget"])][c["arch"]][int(s["step"])].append(
                    (float(s["entropy"]), float(s["max_share"]))
                )
    if not groups:
        return None
    plt = _plt()
    keys = sorted(groups)
    fig, axes = plt.subplots(len(keys), 2, figsize=(10, 3 * len(keys)), squeeze=False)
    for row, key in zip(axes, keys, strict=True):
        for arch, by_step in groups[key].items():
            steps = sorted(by_step)
            for j in (0, 1):
                ys = [sum(v[j] for v in by_step[s]) / len(by_step[s]) for s in steps]
                row[j].plot(steps, ys, marker=".", label=arch)
        row[0].set_title(f"{key[0]}/{key[1]}: routing entropy / log E", fontsize=9)
        row[1].set_title(f"{key[0]}/{key[1]}: dominance (max load share)", fontsize=9)
        for ax in row:
            ax.set_xlabel("step")
        row[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(metrics: Mapping[str, Any], analysis: Mapping[str, Any], out: Path) -> list[Path]:
    made = [
        forest(analysis, out / "forest.png"),
        amp_vs_talk(metrics["cells"], out / "amp_vs_talk_norm.png"),
        dynamics(metrics["cells"], out / "routing_dynamics.png"),
    ]
    return [p for p in made if p is not None]
