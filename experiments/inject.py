r"""Model-level injection: wrap matching linear layers of any torch / transformers model with an adapter.

Each matched layer becomes `AdaptedLinear`, computing

    y = W0 x + b0 + Δ(x)        (W0, b0 frozen; Δ any architecture of `moelora_core.registry`)

The *module type* of a layer is the target suffix it matched (e.g. "q_proj"); with `spec.shared`, the
layers of one type share the architecture's shared part across depth (TalkLoRA's `B = [B_1 ... B_E]`,
as in the TalkLoRA reference code; CoMoL's `(A, B)`). With sharing, shapes within a type must agree (under GQA
`k_proj` differs from `q_proj`, which is fine: they are different types; GPT-2's attention and MLP
`c_proj` differ and share a suffix, so name the types with a regex group:
`target_regex=r".*\.(attn\.c_proj|mlp\.c_proj)"` gives the types "attn.c_proj" and "mlp.c_proj", since
a regex's first group, when it has one, is the module type).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from moelora_core.adapter import Adapter
from moelora_core.errors import ConfigError, ShapeError
from moelora_core.registry import architecture

from .spec import AdapterSpec

__all__ = [
    "AdaptedLinear",
    "AdapterSpec",
    "TrainableReport",
    "adapted_layers",
    "build_adapter",
    "inject_adapters",
    "linear_features",
    "remove_adapters",
    "trainable_report",
]


def linear_features(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of an nn.Linear or a transformers Conv1D (weight in x out); else None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        w = module.weight
        assert isinstance(w, Tensor)
        return int(w.shape[0]), int(w.shape[1])
    return None


class AdaptedLinear(nn.Module):
    """`y = base(x) + Δ(x)`: a frozen linear layer plus an adapter; the output keeps the base's dtype."""

    def __init__(
        self, base: nn.Module, adapter: Adapter, name: str, module_type: str, spec: AdapterSpec
    ):
        super().__init__()
        feats = linear_features(base)
        if feats is None:
            raise ConfigError(f"{name}: {type(base).__name__} is not an nn.Linear or Conv1D")
        if feats != (adapter.in_features, adapter.out_features):
            raise ShapeError(
                f"{name}: base is {feats[0]}->{feats[1]} but adapter is "
                f"{adapter.in_features}->{adapter.out_features}; expected equal"
            )
        self.base, self.adapter = base, adapter
        self.name, self.module_type, self.spec = name, module_type, spec

    @property
    def in_features(self) -> int:
        return self.adapter.in_features

    @property
    def out_features(self) -> int:
        return self.adapter.out_features

    def forward(self, x: Tensor) -> Tensor:
        y: Tensor = self.base(x)  # (..., m)
        a = self.adapter.reference
        d: Tensor = self.adapter(x.to(dtype=a.dtype, device=a.device))  # (..., m)
        return y + d.to(y.dtype)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, type={self.module_type!r}, arch={self.spec.arch!r}"


def build_adapter(
    spec: AdapterSpec,
    in_features: int,
    out_features: int,
    *,
    shared: nn.Module | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Adapter:
    """One adapter for an `in_features -> out_features` layer; `shared` is the module type's shared
    part (`Adapter.make_shared`; None: made here if the spec shares one)."""
    cls = architecture(spec.arch)
    return cls.create(
        cls.config_from_spec(spec, in_features, out_features),
        shared=shared,
        dtype=dtype,
        device=device,
    )


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, module)


def _available(model: nn.Module) -> str:
    names = [n for n, mod in model.named_modules() if n and linear_features(mod) is not None]
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    return f"available linear-layer suffixes: {leaves} ({len(names)} layers, e.g. {names[:6]})"


def inject_adapters(
    model: nn.Module,
    spec: AdapterSpec,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> dict[str, AdaptedLinear]:
    """Freeze every parameter of `model`, wrap every matching linear layer, return {name: AdaptedLinear}.

    Transactional: if anything fails, every replaced layer is put back and every `requires_grad` flag
    restored, so the model is exactly as before. `dtype` / `device` of the adapters default to those of
    each base layer's weight (float32 for a quantised base). Raises ConfigError
    (listing the available linear layers) if a target matches nothing, or if the model has adapters.
    """
    if adapted_layers(model):
        raise ConfigError(
            "model already has adapters: expected a model without AdaptedLinear layers"
        )
    matches: list[tuple[str, str, nn.Module]] = []
    for name, mod in model.named_modules():
        if name and linear_features(mod) is not None:
            t = spec.matches(name)
            if t is not None:
                matches.append((name, t, mod))
    if not matches:
        raise ConfigError(
            f"targets={list(spec.targets) or spec.target_regex!r} match no layer; {_available(model)}"
        )
    unmatched = [t for t in spec.targets if all(t != mt for _, mt, _ in matches)]
    if unmatched:
        raise ConfigError(f"targets {unmatched} match no layer; {_available(model)}")
    grads = [(p, p.requires_grad) for p in model.parameters()]
    done: list[tuple[str, nn.Module]] = []
    try:
        for p, _ in grads:
            p.requires_grad_(False)
        return _wrap_all(model, spec, matches, done, dtype=dtype, device=device)
    except BaseException:  # transactional: the model is exactly as before
        for name, base in reversed(done):
            _set_submodule(model, name, base)
        for p, flag in grads:
            p.requires_grad_(flag)
        raise


def _wrap_all(
    model: nn.Module,
    spec: AdapterSpec,
    matches: list[tuple[str, str, nn.Module]],
    done: list[tuple[str, nn.Module]],
    *,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
) -> dict[str, AdaptedLinear]:
    """Wrap every match; `done` records (name, base) of each replaced layer, for undoing."""
    shapes: dict[str, tuple[int, int]] = {}
    shared: dict[str, nn.Module | None] = {}
    out: dict[str, AdaptedLinear] = {}
    for name, mtype, base in matches:
        feats = linear_features(base)
        assert feats is not None
        if spec.shared and shapes.setdefault(mtype, feats) != feats:
            raise ShapeError(
                f"{name}: shape {feats[0]}->{feats[1]} differs from {shapes[mtype][0]}->{shapes[mtype][1]} "
                f"of earlier layers of type {mtype!r}; expected equal shapes within a module type "
                "(needed to share parameters across layers)"
            )
        w = base.weight
        assert isinstance(w, Tensor)
        floating = w.dtype.is_floating_point  # a quantised (uint8) base gets fp32 adapters
        adapter = build_adapter(
            spec,
            *feats,
            shared=shared.get(mtype),
            dtype=dtype or (w.dtype if floating else torch.float32),
            device=device or w.device,
        )
        shared.setdefault(mtype, adapter.shared_part())
        layer = AdaptedLinear(base, adapter, name, mtype, spec)
        _set_submodule(model, name, layer)
        done.append((name, base))
        out[name] = layer
    return out


def adapted_layers(model: nn.Module) -> dict[str, AdaptedLinear]:
    """{qualified name of the replaced layer: AdaptedLinear}, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, AdaptedLinear)}


def remove_adapters(model: nn.Module) -> int:
    """Put every base layer back in place of its AdaptedLinear; returns how many were removed.

    Base parameters stay frozen (undo with `requires_grad_(True)` if needed).
    """
    layers = adapted_layers(model)
    for name, layer in layers.items():
        _set_submodule(model, name, layer.base)
    return len(layers)


@dataclass(frozen=True)
class TrainableReport:
    """Trainable parameters per module type and in total, against the base model's size.

    `formula_total` is the closed form Σ_layers param_formula_value() + Σ_types shared part, which must
    equal `adapter_trainable` (the counted, de-duplicated total).
    """

    per_type: dict[str, int] = field(default_factory=dict)  # counted adapter params per module type
    layers_per_type: dict[str, int] = field(default_factory=dict)
    formula_per_type: dict[str, int] = field(default_factory=dict)
    adapter_trainable: int = 0
    other_trainable: int = 0  # trainable parameters outside adapters (e.g. a task head)
    base_params: int = 0  # every parameter outside adapters
    formula_total: int = 0

    @property
    def total_trainable(self) -> int:
        return self.adapter_trainable + self.other_trainable

    @property
    def share_percent(self) -> float:
        """Trainable parameters as a percentage of the base model's."""
        return 100.0 * self.total_trainable / self.base_params if self.base_params else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_trainable"] = self.total_trainable
        d["share_percent"] = self.share_percent
        return d


def trainable_report(model: nn.Module) -> TrainableReport:
    """Count trainable parameters (shared tensors once) per module type; compare with the closed form."""
    layers = adapted_layers(model)
    adapter_ids: set[int] = set()
    per_type: dict[str, int] = {}
    nlayers: dict[str, int] = {}
    formula: dict[str, int] = {}
    cache: dict[tuple[Any, ...], int] = {}
    for layer in layers.values():
        t, a = layer.module_type, layer.adapter
        new = [p for p in a.parameters() if id(p) not in adapter_ids]
        adapter_ids.update(id(p) for p in a.parameters())
        per_type[t] = per_type.get(t, 0) + sum(p.numel() for p in new if p.requires_grad)
        key = (type(a), a.config)
        if key not in cache:
            cache[key] = int(a.param_formula().subs(a.subs()))
        first = t not in nlayers
        nlayers[t] = nlayers.get(t, 0) + 1
        formula[t] = formula.get(t, 0) + cache[key]
        if first:
            formula[t] += int(a.shared_param_formula().subs(a.subs()))
    other = base = 0
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) in adapter_ids or id(p) in seen:
            continue
        seen.add(id(p))
        base += p.numel()
        other += p.numel() if p.requires_grad else 0
    return TrainableReport(
        per_type=per_type,
        layers_per_type=nlayers,
        formula_per_type=formula,
        adapter_trainable=sum(per_type.values()),
        other_trainable=other,
        base_params=base,
        formula_total=sum(formula.values()),
    )
