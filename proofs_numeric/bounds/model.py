"""`model_report`: the layer report of every adapted layer of a model, grouped by shape.

    rep = model_report(model_or_layers, inputs={name: (N, n) tensor} | None, radius=None | R,
                       options=ReportOptions(threads=1))
    rep.layers["model.layers.0.self_attn.q_proj"]   # LayerBoundReport
    print(rep); rep.to_dict()

Layers are grouped by (architecture, in, out, dtype, device) and measured group by group under one
thread setting; the inputs a group's layers share (the same tensor object, e.g. one probe batch per
width) are converted to float64 with their certified norms once (`local.Centres`), not per layer.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from moelora_core.adapter import Adapter
from moelora_core.errors import ConfigError
from moelora_core.validate import require_instance

from ..threads import torch_threads
from .domain import require_inputs
from .local import Centres
from .options import ReportOptions
from .report import measure
from .results import LayerBoundReport, fmt, jsonable


@dataclass
class LayerGroup:
    """Layers of one shape, measured one after the other."""

    key: str  # "family in->out dtype device"
    names: list[str]
    seconds: float = 0.0


@dataclass
class ModelBoundReport:
    """Every adapted layer's report, the groups they were measured in, and the wall time."""

    layers: dict[str, LayerBoundReport]
    groups: list[LayerGroup] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return jsonable(  # type: ignore[no-any-return]
            {
                "layers": {k: v.to_dict() for k, v in self.layers.items()},
                "groups": [g.__dict__ for g in self.groups],
                "seconds": self.seconds,
            }
        )

    def __str__(self) -> str:
        lines = [
            f"{len(self.layers)} layers in {len(self.groups)} shape groups, {self.seconds:.2f}s"
        ]
        for g in self.groups:
            lines.append(f"  {g.key}: {len(g.names)} layers, {g.seconds:.2f}s")
        for name, r in self.layers.items():
            local = r.local.adaptive if r.local else r.chain.upper if r.chain else None
            lines.append(
                f"  {name}: Lip(g) <= {fmt(r.upper)} (found {fmt(r.lower)}); Δ <= {fmt(local)}; "
                f"{r.seconds:.3f}s"
            )
        return "\n".join(lines)


def adapted_layers(model: nn.Module | Mapping[str, Adapter]) -> dict[str, Adapter]:
    """{qualified name: adapter} of a model (its `Adapter` submodules, outermost only) or a mapping."""
    if isinstance(model, Mapping):
        return {str(k): require_instance(f"layers[{k!r}]", v, Adapter) for k, v in model.items()}
    require_instance("model", model, nn.Module)
    found: dict[str, Adapter] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, Adapter) and not any(name.startswith(f"{p}.") for p in found):
            found[name] = mod
    return found


def _groups(layers: Mapping[str, Adapter]) -> list[LayerGroup]:
    by_key: dict[str, LayerGroup] = {}
    for name, a in layers.items():
        ref = a.reference
        fam = getattr(a, "family", type(a).__name__)
        key = f"{fam} {a.in_features}->{a.out_features} {ref.dtype} {ref.device}"
        by_key.setdefault(key, LayerGroup(key, [])).names.append(name)
    return list(by_key.values())


def model_report(
    model: nn.Module | Mapping[str, Adapter],
    inputs: Mapping[str, Tensor] | None = None,
    *,
    radius: float | None = None,
    options: ReportOptions | None = None,
) -> ModelBoundReport:
    """The report of every adapted layer (`adapted_layers`). inputs: {layer name: (N, n)} (layers
    without an entry get none: the unconstrained or radius-only domain), or None for all."""
    started = time.perf_counter()
    options = (
        ReportOptions() if options is None else require_instance("options", options, ReportOptions)
    )
    layers = adapted_layers(model)
    inputs = dict(inputs or {})
    unknown = sorted(set(inputs) - set(layers))
    if unknown:
        raise ConfigError(
            f"inputs: no adapted layer named {unknown[:3]}; expected names among {sorted(layers)[:3]}..."
        )
    out = ModelBoundReport({}, _groups(layers))
    prepared: dict[int, tuple[Tensor, Centres]] = {}  # id(inputs) -> (inputs kept alive, centres)
    with torch_threads(options.threads):
        for g in out.groups:
            t = time.perf_counter()
            for name in g.names:
                X = inputs.get(name)
                out.layers[name] = measure(
                    layers[name], X, radius, options, _shared(X, layers[name], prepared)
                )
            g.seconds = time.perf_counter() - t
    order = {name: i for i, name in enumerate(layers)}
    out.layers = dict(sorted(out.layers.items(), key=lambda kv: order[kv[0]]))
    out.seconds = time.perf_counter() - started
    return out


def _shared(
    X: Tensor | None, a: Adapter, prepared: dict[int, tuple[Tensor, Centres]]
) -> Centres | None:
    """The float64 centres of `X` with their norms, made once per inputs tensor."""
    if X is None:
        return None
    hit = prepared.get(id(X))
    if hit is None:
        flat = require_inputs(a, X)
        assert flat is not None
        hit = (X, Centres.of(flat.to(a.reference.device)))
        prepared[id(X)] = hit
    return hit[1]
