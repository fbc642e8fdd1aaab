"""Reports of a demo run: summary tables (rich), `report.md` and PNG plots (matplotlib, Agg).

Everything here reads the metrics dictionary that `moelora_experiments.demo.run_demo` writes to metrics.json
(per architecture: spec, trainable counts, accuracy, training losses and, per adapted layer, the
`measure.measure_layer` results); nothing is recomputed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from statistics import mean
from typing import Any

from rich.table import Table

AMP_KEY = "0.1"  # the noise scale shown in tables


def short_name(layer: str) -> str:
    """'encoder.encoder.layer.3.attention.self.query' -> 'L3.query' (any model: last index + leaf)."""
    idx = re.findall(r"\.(\d+)\.", f".{layer}.")
    leaf = layer.rsplit(".", 1)[-1]
    return f"L{idx[-1]}.{leaf}" if idx else leaf


def _fmt(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}g}"


def _vals(layers: Mapping[str, Any], *path: str) -> list[float]:
    out = []
    for m in layers.values():
        v: Any = m
        for k in path:
            v = v.get(k) if isinstance(v, Mapping) else None
        if isinstance(v, int | float):
            out.append(float(v))
    return out


def _mean(xs: list[float]) -> float | None:
    return mean(xs) if xs else None


def layer_row(m: Mapping[str, Any]) -> dict[str, float | None]:
    """The numbers shown for one layer (None where the architecture has no router or no T)."""
    b = m.get("bounds") or {}
    amp = (m.get("amplification") or {}).get(AMP_KEY) or {}
    amp_all = [v["max"] for v in (m.get("amplification") or {}).values()]
    talk = b.get("talk") or {}
    r = m.get("routing") or {}
    return {
        "centred": b.get("upper_centred"),
        "effective": b.get("upper_effective"),
        "product": b.get("upper_product"),
        "lower": b.get("lower"),
        "gap": b.get("gap_ratio"),
        "amp_mean": amp.get("mean"),
        "amp_max": max(amp_all) if amp_all else None,
        "entropy": r.get("entropy_normalised"),
        "max_share": r.get("max_load_share"),
        "talk_norm": talk.get("talk_norm"),
    }


def soundness(layers: Mapping[str, Any]) -> list[str]:
    """Layers where a measured ratio (amplification or searched lower bound) exceeds the certified bound."""
    bad = []
    for name, m in layers.items():
        row = layer_row(m)
        up = row["centred"]
        for what in ("amp_max", "lower"):
            v = row[what]
            if up is not None and v is not None and v > up * (1 + 1e-9):
                bad.append(f"{short_name(name)}: {what} {v:.6g} > certified {up:.6g}")
    return bad


def arch_summary(res: Mapping[str, Any]) -> dict[str, Any]:
    layers = res.get("layers") or {}
    rows = [layer_row(m) for m in layers.values()]

    def col(k: str) -> list[float]:
        return [float(v) for r in rows if (v := r[k]) is not None]

    return {
        "trainable": res["trainable"]["adapter_trainable"],
        "with_head": res["trainable"]["total_trainable"],
        "accuracy": res["accuracy"],
        "centred_max": max(col("centred"), default=None),
        "product_max": max(col("product"), default=None),
        "lower_max": max(col("lower"), default=None),
        "gap_mean": _mean(col("gap")),
        "amp_mean": _mean(col("amp_mean")),
        "entropy_mean": _mean(col("entropy")),
        "max_share_mean": _mean(col("max_share")),
        "talk_norm_mean": _mean(col("talk_norm")),
        "violations": soundness(layers),
    }


def summary_table(metrics: Mapping[str, Any]) -> Table:
    t = Table(
        title=f"{metrics['task']['name']} on {metrics['model']}: test accuracy and router bounds"
    )
    for c in (
        "arch",
        "adapter params",
        "accuracy",
        "Lip(g) ≤ (max)",
        "product (max)",
        "found ≥ (max)",
        "gap (mean)",
        f"amp ε={AMP_KEY}",
        "entropy/logE",
        "max load",
        "‖T‖₂ (mean)",
    ):
        if c == "arch":  # names must read in full ("moelora-input" vs "moelora-latent")
            t.add_column(c, justify="left", no_wrap=True, min_width=14)
        else:
            t.add_column(c, justify="right")
    for arch, res in metrics["archs"].items():
        s = arch_summary(res)
        t.add_row(
            arch, f"{s['trainable']:,}", f"{s['accuracy']:.4f}", _fmt(s["centred_max"]), _fmt(s["product_max"]),
            _fmt(s["lower_max"]), _fmt(s["gap_mean"]), _fmt(s["amp_mean"]), _fmt(s["entropy_mean"]),
            _fmt(s["max_share_mean"]), _fmt(s["talk_norm_mean"]),
        )  # fmt: skip
    head = metrics.get("head_only_accuracy")
    if head is not None:
        t.caption = f"head only (frozen encoder, no adapter): accuracy {head:.4f}"
    return t


def bounds_table(label: str, layers: Mapping[str, Any], caption: str = "") -> Table:
    t = Table(title=f"{label}: per-layer router bounds", caption=caption or None)
    for c in (
        "layer",
        "Lip(g) ≤",
        "effective",
        "product",
        "found ≥",
        "gap",
        f"amp ε={AMP_KEY}",
        "amp max",
        "entropy/logE",
        "max load",
        "‖T‖₂",
    ):
        t.add_column(c, justify="left" if c == "layer" else "right")
    for name, m in layers.items():
        r = layer_row(m)
        t.add_row(short_name(name), *(_fmt(r[k]) for k in ("centred", "effective", "product", "lower", "gap",
                  "amp_mean", "amp_max", "entropy", "max_share", "talk_norm")))  # fmt: skip
    return t


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(metrics: Mapping[str, Any], plots: list[str]) -> str:
    task, cfg = metrics["task"], metrics["config"]
    out = [
        "# MoE-LoRA demo: accuracy and router bounds at real hidden states",
        "",
        f"Task: {task['name']} — {task['train']} train / {task['test']} test entries, "
        f"{100 * task['positive_share']:.1f}% positive. Model: {metrics['model']} (frozen), adapters on "
        f"query/value of every layer, mean pooling, linear head. {cfg['steps']} steps of batch "
        f"{cfg['batch_size']}, lr {cfg['lr']}, seed {cfg['seed']}, {metrics['environment']['threads']} CPU threads.",
        f"Head only (no adapter): accuracy {metrics.get('head_only_accuracy', float('nan')):.4f}. "
        f"Binomial standard error of an accuracy near 0.9 on {task['test']} test entries: "
        f"{math.sqrt(0.09 / task['test']):.4f} (one seed; smaller differences are noise). "
        f"Wall time of this call: {metrics['seconds']['total_this_call']:.0f} s.",
        "",
        "Bounds are on the router g: Lip(g) ≤ ½‖ΠL‖₂ (centred, certified), ½‖L‖₂ (effective), ½∏‖F_k‖₂ "
        "(product); *found ≥* is the largest Jacobian norm / pair ratio found at the captured hidden "
        f"states; gap = found / certified. *amp ε={AMP_KEY}* is the mean of ‖g(x+δ)−g(x)‖/‖δ‖ with "
        "δ = ε·rms(x)·N(0, I); *max load* the largest mean routing weight of one expert.",
        "",
    ]
    header = ["arch", "adapter params", "accuracy", "Lip(g) ≤ (max)", "product (max)", "found ≥ (max)",
              "gap (mean)", f"amp ε={AMP_KEY}", "entropy/logE", "max load", "‖T‖₂ (mean)"]  # fmt: skip
    rows, notes = [], []
    for arch, res in metrics["archs"].items():
        s = arch_summary(res)
        rows.append([arch, f"{s['trainable']:,}", f"{s['accuracy']:.4f}"] + [
            _fmt(s[k]) for k in ("centred_max", "product_max", "lower_max", "gap_mean", "amp_mean",
                                 "entropy_mean", "max_share_mean", "talk_norm_mean")])  # fmt: skip
        notes += [f"- **{arch}**: {v}" for v in s["violations"]]
    out += [_md_table(header, rows), ""]
    out += ["## Soundness", ""]
    out += notes or [
        "No measured ratio (noise amplification, searched lower bound) exceeds its certified bound.",
        "",
    ]
    out += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    for arch, res in metrics["archs"].items():
        layers = res.get("layers") or {}
        out += [
            f"## {arch}",
            "",
            f"Spec: `{json.dumps(res['spec'])}`; trainable per module type: {res['trainable']['per_type']}.",
            "",
        ]
        if not any(m.get("bounds") for m in layers.values()):
            out += ["No router: no router bounds (LoRA).", ""]
            continue
        lrows = []
        for name, m in layers.items():
            r = layer_row(m)
            lrows.append([short_name(name)] + [_fmt(r[k]) for k in ("centred", "product", "lower", "gap",
                         "amp_mean", "entropy", "max_share", "talk_norm")])  # fmt: skip
        out += [_md_table(["layer", "Lip(g) ≤", "product", "found ≥", "gap", f"amp ε={AMP_KEY}",
                           "entropy/logE", "max load", "‖T‖₂"], lrows), ""]  # fmt: skip
    return "\n".join(out) + "\n"


def write_report(metrics: Mapping[str, Any], out: str | Path, plots: bool = True) -> list[Path]:
    """Write report.md and (unless `plots` is False) the PNG plots into `out`; returns the files."""
    d = Path(out)
    pngs = write_plots(metrics, d) if plots else []
    md = d / "report.md"
    tmp = md.with_name(".report.md.tmp")
    tmp.write_text(markdown(metrics, [p.name for p in pngs]), encoding="utf-8")
    tmp.replace(md)
    return [md, *pngs]


# ----- plots -------------------------------------------------------------------------------------

ARCH_COLOURS = {"lora": "#7f7f7f", "moelora-input": "#1f77b4", "moelora-latent": "#17becf",
                "talklora": "#d62728", "comol": "#2ca02c"}  # fmt: skip


def _routed(metrics: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {
        a: r["layers"]
        for a, r in metrics["archs"].items()
        if any(m.get("bounds") for m in r["layers"].values())
    }


def _save(fig: Any, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)
    return path


def plot_bounds(metrics: Mapping[str, Any], path: Path) -> Path | None:
    """Per routed arch: certified (product, effective, centred) vs found lower bound and measured noise
    amplification, per layer, on a log axis."""
    import matplotlib.pyplot as plt

    routed = _routed(metrics)
    if not routed:
        return None
    fig, axes = plt.subplots(
        1, len(routed), figsize=(4.2 * len(routed), 3.6), sharey=True, squeeze=False
    )
    for ax, (arch, layers) in zip(axes[0], routed.items(), strict=True):
        names = [short_name(n) for n in layers]
        rows = [layer_row(m) for m in layers.values()]
        x = range(len(rows))
        for key, style, label in (("product", "v:", "certified ½∏‖F‖ (product)"),
                                  ("effective", "s--", "certified ½‖L‖ (effective)"),
                                  ("centred", "o-", "certified ½‖ΠL‖ (centred)"),
                                  ("lower", "^-", "found ≥ (Jacobian/pairs)"),
                                  ("amp_max", "x", "noise amplification (max)")):  # fmt: skip
            ax.plot(x, [r[key] if r[key] else float("nan") for r in rows], style, label=label, ms=4)
        ax.set_yscale("log")
        ax.set_xticks(list(x), names, rotation=90, fontsize=7)
        ax.set_title(arch)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("Lipschitz constant of x ↦ g(x)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Router Lipschitz bounds per adapted layer (at captured hidden states)")
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_routing(metrics: Mapping[str, Any], path: Path) -> Path | None:
    """Per routed arch: a heat map of the mean routing weight (load) of each expert in each layer,
    coloured by its distance from the balanced load 1/E (white)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    routed = {
        a: ls for a, ls in _routed(metrics).items() if any(m.get("routing") for m in ls.values())
    }
    if not routed:
        return None
    loads = {a: [m["routing"]["load"] for m in ls.values()] for a, ls in routed.items()}
    E = len(next(iter(loads.values()))[0])
    top = max(max(max(r) for r in rows) for rows in loads.values())
    norm = TwoSlopeNorm(vcenter=1 / E, vmin=0.0, vmax=max(2 / E, top))
    fig, axes = plt.subplots(
        1, len(routed), figsize=(2.2 * len(routed) + 1.5, 0.32 * len(loads[next(iter(loads))]) + 1.6),
        sharey=True, squeeze=False,
    )  # fmt: skip
    im = None
    for ax, (arch, rows) in zip(axes[0], loads.items(), strict=True):
        im = ax.imshow(rows, norm=norm, cmap="RdBu_r", aspect="auto")
        for i, row in enumerate(rows):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6)
        ax.set_xticks(range(len(rows[0])), [f"e{j}" for j in range(len(rows[0]))], fontsize=7)
        ax.set_title(arch, fontsize=9)
    axes[0][0].set_yticks(range(len(loads[next(iter(loads))])), [short_name(n) for n in next(iter(routed.values()))],
                          fontsize=7)  # fmt: skip
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=f"load (white = 1/E = {1 / E:.2f})")
    fig.suptitle("Routing load per expert and layer (held-out tokens)", y=1.03)
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_accuracy(metrics: Mapping[str, Any], path: Path) -> Path:
    """Test accuracy (± one binomial standard error) against adapter parameters; head only dashed."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for arch, res in metrics["archs"].items():
        s = arch_summary(res)
        se = math.sqrt(s["accuracy"] * (1 - s["accuracy"]) / metrics["task"]["test"])  # binomial
        ax.errorbar(s["trainable"], s["accuracy"], yerr=se, fmt="o", ms=6, capsize=3,
                    color=ARCH_COLOURS.get(arch), label=arch, zorder=3)  # fmt: skip
    head = metrics.get("head_only_accuracy")
    if head is not None:
        ax.axhline(head, ls="--", color="k", lw=1, label="head only")
    ax.set_xlabel("trainable adapter parameters (all layers)")
    ax.set_ylabel("test accuracy")
    ax.set_title(metrics["task"]["name"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_talk(metrics: Mapping[str, Any], path: Path) -> Path | None:
    """TalkLoRA: ‖T‖₂ and the per-head factors ‖T e_j‖₂ per layer; 1 = no amplification."""
    import matplotlib.pyplot as plt

    layers = {a: r["layers"] for a, r in metrics["archs"].items()}
    talk = {n: m["bounds"]["talk"] for ls in layers.values() for n, m in ls.items()
            if (m.get("bounds") or {}).get("talk")}  # fmt: skip
    if not talk:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = list(talk)
    E = len(talk[names[0]]["attenuation"])
    width = 0.8 / E
    for j in range(E):
        ax.bar([i + (j - (E - 1) / 2) * width for i in range(len(names))],
               [talk[n]["attenuation"][j] for n in names], width, label=f"‖T e_{j}‖₂ (head {j})", alpha=0.8)  # fmt: skip
    ax.plot(
        range(len(names)), [talk[n]["talk_norm"] for n in names], "k_", ms=18, mew=2, label="‖T‖₂"
    )
    ax.axhline(1.0, color="r", ls="--", lw=1, label="1 (T = I)")
    ax.set_xticks(range(len(names)), [short_name(n) for n in names], rotation=90, fontsize=7)
    ax.set_ylabel("factor on a head perturbation")
    ax.set_title("TalkLoRA talking module after training: ‖T‖₂ > 1 amplifies")
    top = max(max(max(t["attenuation"]), t["talk_norm"]) for t in talk.values())
    ax.set_ylim(0, max(1.1, 1.08 * top))
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_losses(metrics: Mapping[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for arch, res in metrics["archs"].items():
        losses = res["train"]["losses"]
        k = max(1, len(losses) // 30)  # moving average over ~1/30 of the run
        smooth = [mean(losses[max(0, i - k + 1) : i + 1]) for i in range(len(losses))]
        ax.plot(range(1, len(losses) + 1), smooth, label=arch, color=ARCH_COLOURS.get(arch))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (moving average)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def write_plots(metrics: Mapping[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    made = [
        plot_accuracy(metrics, out / "accuracy_vs_params.png"),
        plot_bounds(metrics, out / "bounds_per_layer.png"),
        plot_routing(metrics, out / "routing_load.png"),
        plot_talk(metrics, out / "talk_norms.png"),
        plot_losses(metrics, out / "losses.png"),
    ]
    return [p for p in made if p is not None]
