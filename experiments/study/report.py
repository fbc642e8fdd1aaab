"""The study's analysis (claims × paired statistics), report.md and plots (matplotlib, Agg).

Claims, each tested within every (task, budget) on per-seed cell summaries (`runner.summarise`):

* TalkLoRA: "expert communication mitigates perturbation amplification" — amplification of the
  trained router vs the same weights with T = I (paired within the cell), and vs MoELoRA-latent;
  "smooths routing" — normalised routing entropy higher, dominance (max load share) lower than
  MoELoRA-latent.
* CoMoL: "parameter efficiency without losing adaptability" — accuracy not worse than MoELoRA-input by
  more than `MARGIN` (non-inferiority on the t interval).
* Mixtures on a multi-domain task: MoELoRA-input and HydraLoRA more accurate than LoRA.

Holm–Bonferroni runs over the whole family (every claim, task and budget).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from statistics import mean, stdev
from typing import Any

MARGIN = 0.01
CLAIMS: tuple[tuple[str, str, str, str, str], ...] = (
    # (claim id, metric, a, b, direction); "talklora@T=I" is the counterfactual on the same weights
    ("talk-mitigates-amplification", "amp", "talklora", "talklora@T=I", "less"),
    ("talk-mitigates-amplification", "amp", "talklora", "moelora-latent", "less"),
    ("talk-smooths-routing", "entropy", "talklora", "moelora-latent", "greater"),
    ("talk-smooths-routing", "max_share", "talklora", "moelora-latent", "less"),
    ("comol-efficient", "accuracy", "comol", "moelora-input", "noninferior"),
    ("mixture-beats-lora", "accuracy", "moelora-input", "lora", "greater"),
    ("mixture-beats-lora", "accuracy", "hydralora", "lora", "greater"),
    ("adapters-beat-head-only", "accuracy", "lora", "head-only", "greater"),
    ("adapters-beat-head-only", "accuracy", "moelora-input", "head-only", "greater"),
)


def _series(
    cells: list[Mapping[str, Any]], task: str, budget: str, arch: str, metric: str
) -> dict[int, float]:
    out = {}
    for c in cells:
        if c["task"] != task or (c["budget"] != budget and arch != "head-only"):
            continue
        if arch == "talklora@T=I" and c["arch"] == "talklora":
            v = c["summary"].get("amp_identity_talk") if metric == "amp" else None
        elif c["arch"] == arch:
            v = c["accuracy"] if metric == "accuracy" else c["summary"].get(metric)
        else:
            continue
        if isinstance(v, int | float):
            out[int(c["seed"])] = float(v)
    return out


def analyse(metrics: Mapping[str, Any], alpha: float = 0.05) -> dict[str, Any]:
    """Paired comparisons for every claim, task and budget, Holm-adjusted, with verdicts."""
    try:
        from .stats import Direction, paired, verdict, with_holm
    except ImportError as e:  # scipy absent (e.g. a bare GPU image): analyse later on the CPU
        return {"error": f"statistics unavailable ({e}); rerun `moelora study --report-only`"}
    cells = metrics["cells"]
    rows: list[dict[str, Any]] = []
    comps = []
    for task in metrics["config"]["tasks"]:
        for budget in metrics["config"]["budgets"]:
            for claim, metric, a, b, direction in CLAIMS:
                sa, sb = (_series(cells, task, budget, x, metric) for x in (a, b))
                seeds = sorted(set(sa) & set(sb))
                if len(seeds) < 2:
                    continue
                comps.append(paired(metric, a, [sa[s] for s in seeds], b, [sb[s] for s in seeds]))
                rows.append(
                    {"claim": claim, "task": task, "budget": budget, "direction": direction}
                )
    comps = with_holm(comps)
    out = []
    for row, c in zip(rows, comps, strict=True):
        d: Direction = row["direction"]
        word, why = verdict(c, d, alpha=alpha, margin=MARGIN, family=len(comps))
        out.append({**row, **c.to_dict(), "verdict": word, "why": why})
    return {"alpha": alpha, "margin": MARGIN, "family_size": len(out), "comparisons": out}


def arch_table(cells: list[Mapping[str, Any]], task: str, budget: str) -> list[str]:
    """Markdown rows: mean ± sd over seeds per architecture."""
    archs = list(
        dict.fromkeys(c["arch"] for c in cells if c["task"] == task and c["budget"] == budget)
    )
    lines = [
        "| arch | params/layer | seeds | accuracy | amp ε=0.1 | amp T=I | certified max | searched max | entropy | max share |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in archs:
        cs = [c for c in cells if c["task"] == task and c["budget"] == budget and c["arch"] == a]

        def ms(vals: list[Any], digits: int = 3) -> str:
            v = [float(x) for x in vals if isinstance(x, int | float)]
            if not v:
                return "—"
            return f"{mean(v):.{digits}g} ± {stdev(v):.2g}" if len(v) > 1 else f"{v[0]:.{digits}g}"

        s = [c["summary"] for c in cs]
        lines.append(
            f"| {a} | {cs[0].get('params_per_layer', '—')} | {len(cs)} | {ms([c['accuracy'] for c in cs], 4)} "
            f"| {ms([x['amp'] for x in s])} | {ms([x['amp_identity_talk'] for x in s])} "
            f"| {ms([x['certified_max'] for x in s])} | {ms([x['searched_max'] for x in s])} "
            f"| {ms([x['entropy'] for x in s])} | {ms([x['max_share'] for x in s])} |"
        )
    return lines


def violations(cells: list[Mapping[str, Any]]) -> list[str]:
    bad = []
    for c in cells:
        s = c["summary"]
        up, lo = s.get("certified_max"), s.get("searched_max")
        if up is not None and lo is not None and lo > up * (1 + 1e-9):
            bad.append(
                f"{c['task']}/{c['budget']}/{c['arch']}/seed{c['seed']}: searched {lo:.6g} > certified {up:.6g}"
            )
    return bad


def write_report(metrics: Mapping[str, Any], out: Path) -> None:
    """report.md (and the plots it shows) in `out`."""
    from .plots import write_plots

    cells, cfg = metrics["cells"], metrics["config"]
    an = metrics.get("analysis") or {}
    L = [*_header(metrics), "", "## Claims", "", *_claims(an)]
    for task in cfg["tasks"]:
        for budget in cfg["budgets"]:
            L += ["", f"## {task} / {budget} (mean ± sd over seeds)", ""]
            L += arch_table(cells, task, budget)
    bad = violations(cells)
    L += [
        "",
        "## Soundness",
        "",
        "No searched lower bound exceeds its certified upper bound."
        if not bad
        else "VIOLATIONS:\n" + "\n".join(f"- {b}" for b in bad),
    ]
    plots = write_plots(metrics, an, out)
    L += ["", "## Plots", "", *(f"![{p.stem}]({p.name})" for p in plots), ""]
    (out / "report.md").write_text("\n".join(L), encoding="utf-8")


def _header(metrics: Mapping[str, Any]) -> list[str]:
    """Title, the run's settings and one line per task (with the head-alone accuracy)."""
    cells, cfg, env = metrics["cells"], metrics["config"], metrics["environment"]
    L = [
        "# MoE-LoRA study",
        "",
        f"Model `{cfg['model']}`; archs {', '.join(cfg['archs'])}; seeds {cfg['seeds']}; tasks "
        f"{', '.join(cfg['tasks'])}; budgets {', '.join(cfg['budgets'])}; {cfg['steps']} steps of "
        f"batch {cfg['batch_size']}; {len(cells)} cells ({metrics['cells_computed_this_call']} computed "
        f"in this call, {metrics['seconds_this_call']:.0f} s; {env['threads']} "
        f"threads, device {env['device']}, load average {env['load_average'][0]:.1f}).",
        "",
    ]
    for name, t in metrics["tasks"].items():
        head = [c["accuracy"] for c in cells if c["arch"] == "head-only" and c["task"] == name]
        if len(head) > 1:
            L.append(
                f"- task `{name}`: head alone on the frozen encoder, accuracy "
                f"{mean(head):.4f} ± {stdev(head):.2g} over {len(head)} seeds"
            )
        L.append(
            f"- task `{name}`: {t['name']}, {t['train']} train / {t['test']} test, "
            f"{t['positive_share']:.0%} positive"
        )
    return L


def _claims(an: Mapping[str, Any]) -> list[str]:
    """The claims table (or why the statistics are missing)."""
    if "error" in an:
        return [an["error"]]
    L = [
        f"Paired over seeds (a − b per seed), 95% t and bootstrap intervals, Holm over "
        f"{an['family_size']} comparisons at α = {an['alpha']}; non-inferiority margin "
        f"{an['margin']}.",
        "",
        "| claim | task/budget | metric | a − b | verdict | why |",
        "|---|---|---|---|---|---|",
    ]
    for c in an["comparisons"]:
        L.append(
            f"| {c['claim']} | {c['task']}/{c['budget']} | {c['metric']} | {c['a']} − {c['b']} "
            f"| **{c['verdict']}** | {c['why']} (bootstrap [{c['boot_low']:+.3g}, "
            f"{c['boot_high']:+.3g}]) |"
        )
    return L
