"""What `layer_report` returns: `LayerBoundReport` (one layer) and `MapReport` (one map v ↦ softmax(M v)),
with their JSON form (`to_dict`) and readable form (`str`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from .certified import RouterBounds, TalkBounds
from .chain import ChainBounds
from .domain import Domain
from .local import LocalBounds
from .topk import TopKWitness


@dataclass
class MapReport:
    """Certified forms and the searched lower bound for one map v ↦ softmax(M v)."""

    bounds: RouterBounds
    lower: float | None = None
    lower_jacobian: float | None = None
    lower_pairs: float | None = None
    samples: int = 0

    @property
    def upper(self) -> float:
        return self.bounds.upper

    @property
    def gap_ratio(self) -> float | None:
        if self.lower is None or self.bounds.upper <= 0:
            return None
        return self.lower / self.bounds.upper

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"upper": self.upper, **self.bounds.to_dict()}
        d.update(
            lower=self.lower,
            lower_jacobian=self.lower_jacobian,
            lower_pairs=self.lower_pairs,
            gap_ratio=self.gap_ratio,
            samples=self.samples,
        )
        return d


@dataclass
class LayerBoundReport:
    """Bounds for one adapter layer. Upper bounds are certified; lower bounds are measured."""

    arch: str
    router: str  # "input" | "latent"
    num_experts: int
    in_features: int
    out_features: int
    top_k: int | None
    dtype: str
    domain: Domain
    upper_product: float | None  # ½ ∏‖F_k‖₂
    upper_effective: float | None  # ½ ‖L‖₂
    upper_centred: float | None  # ½ ‖Π L‖₂
    lower: float | None  # max(lower_jacobian, lower_pairs)
    lower_jacobian: float | None
    lower_pairs: float | None
    norms: dict[str, float]
    router_map: MapReport | None
    head: MapReport | None = None
    talk: TalkBounds | None = None
    talk_head_lower: list[float] | None = None
    local: LocalBounds | None = None
    chain: ChainBounds | None = None  # non-linear Δ: the global bound from its Lipschitz chain
    topk_witness: TopKWitness | None = None
    not_tight: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    samples: int = 0
    iterations: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def upper(self) -> float | None:
        """The tightest certified bound on Lip(g) (the centred form)."""
        return self.upper_centred

    @property
    def gap_ratio(self) -> float | None:
        """lower / upper (1 = the bound is attained on the domain); None without a positive bound."""
        if self.lower is None or self.upper is None or self.upper <= 0:
            return None
        return self.lower / self.upper

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "arch": self.arch,
            "router": self.router,
            "num_experts": self.num_experts,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "top_k": self.top_k,
            "dtype": self.dtype,
            "domain": self.domain.to_dict(),
            "upper": self.upper,
            "upper_product": self.upper_product,
            "upper_effective": self.upper_effective,
            "upper_centred": self.upper_centred,
            "lower": self.lower,
            "lower_jacobian": self.lower_jacobian,
            "lower_pairs": self.lower_pairs,
            "gap_ratio": self.gap_ratio,
            "norms": dict(self.norms),
            "router_map": self.router_map.to_dict() if self.router_map else None,
            "head": self.head.to_dict() if self.head else None,
            "talk": self.talk.to_dict() if self.talk else None,
            "talk_head_lower": self.talk_head_lower,
            "local": self.local.to_dict() if self.local else None,
            "chain": self.chain.to_dict() if self.chain else None,
            "topk_witness": self.topk_witness.to_dict() if self.topk_witness else None,
            "not_tight": list(self.not_tight),
            "notes": list(self.notes),
            "samples": self.samples,
            "iterations": dict(self.iterations),
            "seconds": self.seconds,
            "timings": dict(self.timings),
        }
        return jsonable(d)  # type: ignore[no-any-return]

    def __str__(self) -> str:
        f = fmt
        lines = [
            f"{self.arch} (router {self.router}, E={self.num_experts}, n={self.in_features}, "
            f"m={self.out_features}, top_k={self.top_k}, {self.dtype}); domain: {self.domain}",
        ]
        if self.topk_witness is not None:
            w = self.topk_witness
            lines.append(
                f"  router: top-{w.top_k} is discontinuous: ‖x − x'‖ = {w.distance:.2e} < "
                f"ε = {w.epsilon:g} but ‖g(x) − g(x')‖ = {w.jump:.4f}"
            )
        elif self.upper_centred is not None:
            lines.append(
                f"  router Lip(g) <= {f(self.upper_centred)} (centred ½‖ΠL‖), "
                f"{f(self.upper_effective)} (effective ½‖L‖), {f(self.upper_product)} (product)"
            )
            lines.append(
                f"  found >= {f(self.lower)} (Jacobian {f(self.lower_jacobian)}, pairs "
                f"{f(self.lower_pairs)}); gap lower/upper = {f(self.gap_ratio)}"
            )
        lines.append("  norms: " + ", ".join(f"‖{k}‖₂={v:.4g}" for k, v in self.norms.items()))
        if self.head is not None:
            h = self.head
            lines.append(
                f"  head map h ↦ g: <= {f(h.bounds.centred)} (centred), "
                f"{f(h.bounds.effective)} (effective), {f(h.bounds.product)} (product); "
                f"found >= {f(h.lower)}"
            )
        if self.talk is not None:
            t = self.talk
            att = ", ".join(f"{v:.3f}" for v in t.attenuation)
            lines.append(
                f"  talk: ‖T‖₂ = {t.talk_norm:.4f} ({'amplifies' if t.amplifies else 'no amplification'})"
                f", ‖T e_j‖₂ = [{att}]"
            )
        if self.local is not None:
            lo = self.local
            lines.append(
                f"  local Lip(Δ) on balls R={lo.radius:g}: <= {f(lo.adaptive)} (adaptive), "
                f"{f(lo.tight)} (centred), {f(lo.spec)} (SPEC form); found >= {f(lo.lower)}; "
                f"gap {f(lo.gap_ratio)}"
            )
        if self.chain is not None:
            c = self.chain
            lines.append(
                f"  global Lip(Δ) <= {f(c.upper)} (s ∏c_j ∏‖L_j‖₂ = {c.scale:g} · "
                f"{' · '.join(f'{v:.4g}' for v in c.constants)} · "
                f"{' · '.join(f'{v:.4g}' for v in c.map_norms)}); found >= {f(c.lower)}; gap {f(c.gap_ratio)}"
            )
        for r in self.not_tight:
            lines.append(f"  cannot be tight: {r}")
        for n in self.notes:
            lines.append(f"  note: {n}")
        lines.append(f"  {self.samples} points, iterations {self.iterations}, {self.seconds:.3f}s")
        return "\n".join(lines)


def fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.6g}"


def jsonable(o: Any) -> Any:
    if isinstance(o, float):
        return o if math.isfinite(o) else str(o)
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [jsonable(v) for v in o]
    if isinstance(o, Tensor):
        return jsonable(o.tolist())
    return o
