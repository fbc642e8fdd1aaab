"""`layer_report`: certified upper bounds and searched lower bounds for one routed adapter layer.

    rep = layer_report(adapter, inputs=None | (N, n), radius=None | R, seed=0)
    rep.to_dict()   # JSON-serialisable
    print(rep)      # readable

What is measured (see docs/bounds.md for the derivations):
  * router x ↦ g(x): product, effective and centred certified upper bounds (certified.py), and the
    largest Jacobian norm / pair ratio found over the domain (empirical.py); gap = lower / upper;
  * latent routers: the same for the head-perturbation map h ↦ g; TalkLoRA: ‖T‖₂, ‖T e_j‖₂ and the
    per-head bounds;
  * the local bound on Δ on balls around the inputs (local.py), with a searched lower bound;
  * top-k routers: a discontinuity witness (topk.py) instead of numbers;
  * `not_tight`: reasons, proved from the computed quantities, why the bound cannot be attained.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from moelora_core.adapter import Adapter
from moelora_core.errors import ConfigError, input_checks
from moelora_core.talklora import TalkLoRA
from moelora_core.validate import require_bool, require_seed

from .certified import (
    RouterBounds,
    TalkBounds,
    bounds_for,
    effective_matrix,
    is_latent,
    logit_factors,
    talk_bounds,
    tightness_reasons,
)
from .domain import (
    Domain,
    make_domain,
    require_count,
    require_inputs,
    require_positive,
    require_radius,
    require_routed,
)
from .empirical import Probe, Region, jacobians, search
from .local import LocalBounds, check_factors, expert_factors, local_bounds
from .rigorous import CertificateError
from .searches import (
    delta_fn,
    head_fn,
    random_in_balls,
    routing_fn,
    run_search,
    starting_points,
)
from .spectral import F64
from .topk import TopKWitness, topk_witness


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
            "topk_witness": self.topk_witness.to_dict() if self.topk_witness else None,
            "not_tight": list(self.not_tight),
            "notes": list(self.notes),
            "samples": self.samples,
            "iterations": dict(self.iterations),
            "seconds": self.seconds,
            "timings": dict(self.timings),
        }
        return _jsonable(d)  # type: ignore[no-any-return]

    def __str__(self) -> str:
        f = _fmt
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
        for r in self.not_tight:
            lines.append(f"  cannot be tight: {r}")
        for n in self.notes:
            lines.append(f"  note: {n}")
        lines.append(f"  {self.samples} points, iterations {self.iterations}, {self.seconds:.3f}s")
        return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.6g}"


def _jsonable(o: Any) -> Any:
    if isinstance(o, float):
        return o if math.isfinite(o) else str(o)
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_jsonable(v) for v in o]
    if isinstance(o, Tensor):
        return _jsonable(o.tolist())
    return o


# ----- building blocks ---------------------------------------------------------------------------


def _frozen_copy(adapter: Adapter, dtype: torch.dtype | None) -> Adapter:
    work = copy.deepcopy(adapter)
    if dtype is not None:
        work = work.to(dtype)
    work.requires_grad_(False)
    return work


def _arch_name(adapter: Adapter, latent: bool) -> str:
    fam = getattr(adapter, "family", type(adapter).__name__.lower())
    return f"{fam}[{'latent' if latent else 'input'}]"


# ----- the report --------------------------------------------------------------------------------


def layer_report(
    adapter: Adapter,
    inputs: Tensor | None = None,
    *,
    radius: float | None = None,
    seed: int = 0,
    samples: int = 64,
    iterations: int = 8,
    ascent_steps: int = 6,
    pair_steps: int = 6,
    local: bool = True,
    local_samples: int = 32,
    epsilon: float = 1e-6,
    threads: int | None = None,
) -> LayerBoundReport:
    """Certified and empirical bounds for one routed adapter layer (see the module docstring).

    inputs: (N, n) points (e.g. real hidden states) or None; radius: None or R >= 0. Domain: inputs
    and no radius -> the points; a radius -> balls of radius R around the inputs (or the origin);
    neither -> all of R^n. samples: random/pair-target starts, and how many of the best points get
    gradient ascent and pair search; iterations: power iterations per point; epsilon: the distance of
    a top-k discontinuity witness; threads: torch's intra-op threads for the duration of the report
    (None: unchanged; 1 avoids OpenMP barrier stalls when other processes hold the cores).
    """
    require_bool("local", local)
    if threads is not None:
        require_count("threads", threads)
    with _torch_threads(threads):
        return _layer_report(
            adapter, inputs, radius, seed, samples, iterations, ascent_steps, pair_steps, local,
            local_samples, epsilon,
        )  # fmt: skip


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """torch.set_num_threads(n) inside the block (nothing for None), restored afterwards."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n is not None:
            torch.set_num_threads(previous)


def _layer_report(
    adapter: Adapter,
    inputs: Tensor | None,
    radius: float | None,
    seed: int,
    samples: int,
    iterations: int,
    ascent_steps: int,
    pair_steps: int,
    local: bool,
    local_samples: int,
    epsilon: float,
) -> LayerBoundReport:
    t_start = time.perf_counter()
    a = require_routed(adapter)
    X = require_inputs(a, inputs)
    R = require_radius(radius, a.reference.dtype)
    require_count("samples", samples)
    require_count("iterations", iterations)
    require_count("ascent_steps", ascent_steps, 0)
    require_count("pair_steps", pair_steps, 0)
    require_count("local_samples", local_samples)
    require_seed("seed", seed)
    eps = require_positive("epsilon", epsilon)
    domain = make_domain(X, R)
    ref = a.reference
    dtype, device = ref.dtype, ref.device
    timings: dict[str, float] = {}

    t = time.perf_counter()
    work = _frozen_copy(a, None)
    w64 = work if dtype == F64 else _frozen_copy(a, F64)
    factors = logit_factors(work)
    latent = is_latent(factors)
    try:
        rb = bounds_for(factors)
        hb = bounds_for(factors[1:]) if latent else None
        tb = talk_bounds(work) if isinstance(work, TalkLoRA) else None
    except CertificateError as err:
        return _uncertified(a, latent, domain, dtype, str(err), t_start)
    L = effective_matrix(factors)  # (E, n) float64
    E = rb.num_experts
    assert a.router is not None
    top_k = a.router.top_k
    dense = top_k is None or top_k >= E
    timings["certified"] = time.perf_counter() - t

    rep = LayerBoundReport(
        arch=_arch_name(a, latent),
        router="latent" if latent else "input",
        num_experts=E,
        in_features=a.in_features,
        out_features=a.out_features,
        top_k=top_k,
        dtype=str(dtype).replace("torch.", ""),
        domain=domain,
        upper_product=rb.product if dense else None,
        upper_effective=rb.effective if dense else None,
        upper_centred=rb.centred if dense else None,
        lower=None,
        lower_jacobian=None,
        lower_pairs=None,
        norms={**rb.factor_norms, "L": rb.logit_norm, "ΠL": rb.centred_norm},
        router_map=MapReport(rb) if dense else None,
        talk=tb,
        iterations={"power": iterations, "ascent": ascent_steps, "pairs": pair_steps},
    )
    centres = (
        X
        if X is not None
        else (torch.zeros(1, a.in_features, dtype=dtype) if R is not None else None)
    )
    if centres is not None:
        centres = centres.to(device)

    if not dense:
        assert top_k is not None
        t = time.perf_counter()
        rep.topk_witness = topk_witness(w64, L, top_k, eps, seed)
        timings["topk_witness"] = time.perf_counter() - t
        rep.not_tight.append(
            f"top-{top_k} routing is discontinuous where the k-th and (k+1)-th logits tie: no finite "
            "Lipschitz constant exists (see the witness); no bound is reported"
        )
        if rep.topk_witness is None:
            rep.notes.append("no witness: all rows of Π L are equal, so g is constant")
        rep.seconds = time.perf_counter() - t_start
        rep.timings = timings
        return rep

    with input_checks(False):
        t = time.perf_counter()
        res = run_search(
            routing_fn(work),
            routing_fn(w64),
            domain,
            centres,
            L,
            R or 0.0,
            dtype,
            device,
            samples=samples,
            iterations=iterations,
            ascent=ascent_steps,
            pairs=pair_steps,
            seed=seed,
        )
        rep.lower, rep.lower_jacobian, rep.lower_pairs = res.value, res.jacobian, res.pairs
        rep.samples = res.points
        assert rep.router_map is not None
        rep.router_map.lower, rep.router_map.samples = res.value, res.points
        rep.router_map.lower_jacobian, rep.router_map.lower_pairs = res.jacobian, res.pairs
        rep.not_tight.extend(tightness_reasons(rb, domain))
        timings["router_search"] = time.perf_counter() - t

        if hb is not None:
            t = time.perf_counter()
            rep.head = _head_report(work, w64, hb, domain, centres, R, samples, iterations, seed)
            if tb is not None:
                rep.talk_head_lower = _talk_head_lower(work, w64, domain, centres, R, samples, seed)
            timings["head_search"] = time.perf_counter() - t

        if local and centres is not None:
            rep.local = _local_report(
                a,
                work,
                w64,
                centres,
                R or 0.0,
                rb,
                local_samples,
                iterations,
                ascent_steps,
                pair_steps,
                seed,
                rep,
                timings,
            )
        elif local:
            rep.notes.append(
                "no local bound on Δ: Δ is not globally Lipschitz (‖DΔ(y)‖ grows like ‖y‖); "
                "give inputs or a radius"
            )
    rep.seconds = time.perf_counter() - t_start
    rep.timings = timings
    check_consistent(rep)
    return rep


def _uncertified(
    a: Adapter, latent: bool, domain: Domain, dtype: torch.dtype, reason: str, t_start: float
) -> LayerBoundReport:
    """The report when no certificate can be made: every bound None, the reason in `notes`."""
    assert a.router is not None
    rep = LayerBoundReport(
        arch=_arch_name(a, latent),
        router="latent" if latent else "input",
        num_experts=a.router.num_experts,
        in_features=a.in_features,
        out_features=a.out_features,
        top_k=a.router.top_k,
        dtype=str(dtype).replace("torch.", ""),
        domain=domain,
        upper_product=None,
        upper_effective=None,
        upper_centred=None,
        lower=None,
        lower_jacobian=None,
        lower_pairs=None,
        norms={},
        router_map=None,
        notes=[f"no certificate: {reason}"],
    )
    rep.seconds = time.perf_counter() - t_start
    return rep


def check_consistent(rep: LayerBoundReport) -> None:
    """Every searched lower bound is at most its certified upper bound, else CertificateError (a
    certified value below a value actually attained would be a refuted certificate)."""
    pairs: list[tuple[str, float | None, float | None]] = [("router", rep.lower, rep.upper)]
    if rep.head is not None:
        pairs.append(("head map", rep.head.lower, rep.head.upper))
    if rep.talk is not None and rep.talk_head_lower is not None:
        heads = zip(rep.talk_head_lower, rep.talk.head_centred, strict=True)
        pairs.extend((f"talk head {j}", lo_j, up_j) for j, (lo_j, up_j) in enumerate(heads))
    if rep.local is not None:
        pairs.append(("local Δ", rep.local.lower, rep.local.adaptive))
    for name, lo, up in pairs:
        if lo is not None and up is not None and not lo <= up:  # also catches NaN
            raise CertificateError(
                f"{rep.arch}: {name} certified upper bound {up!r} is below the searched lower "
                f"bound {lo!r}; the certificate is refuted"
            )


def _latent_domain(
    work: Adapter, domain: Domain, centres: Tensor | None, R: float | None
) -> tuple[Tensor | None, float]:
    """The head search domain: the latents A c_k, radius R ‖A‖₂ (contains A(B(c_k, R)))."""
    A = logit_factors(work)[0]
    if centres is None:
        return None, 0.0
    with torch.no_grad():
        H = A(centres)
    radius = 0.0
    if R:
        radius = R * float(torch.linalg.matrix_norm(A.dense().detach().to(F64), ord=2))
    return H, radius


def _head_report(
    work: Adapter,
    w64: Adapter,
    hb: RouterBounds,
    domain: Domain,
    centres: Tensor | None,
    R: float | None,
    samples: int,
    iterations: int,
    seed: int,
) -> MapReport:
    H = effective_matrix(logit_factors(work)[1:])
    Hc, radius = _latent_domain(work, domain, centres, R)
    ref = work.reference
    res = run_search(
        head_fn(work),
        head_fn(w64),
        domain,
        Hc,
        H,
        radius,
        ref.dtype,
        ref.device,
        samples=samples,
        iterations=iterations,
        ascent=4,
        pairs=4,
        seed=seed + 1,
    )
    return MapReport(hb, res.value, res.jacobian, res.pairs, res.points)


def _talk_head_lower(
    work: Adapter,
    w64: Adapter,
    domain: Domain,
    centres: Tensor | None,
    R: float | None,
    samples: int,
    seed: int,
) -> list[float]:
    """Per head j: the largest norm of the head-map Jacobian restricted to head j's coordinates,
    from the exact Jacobians (E x r) at `samples` head-map starting points."""
    assert isinstance(work, TalkLoRA)
    E, d = work.num_experts, work.config.head_dim
    H = effective_matrix(logit_factors(work)[1:])
    Hc, radius = _latent_domain(work, domain, centres, R)
    starts, region, _ = starting_points(domain, Hc, H, radius, samples, seed + 2)
    gen = torch.Generator(device="cpu").manual_seed(seed + 5)
    pick = torch.randperm(starts.shape[0], generator=gen)[:samples]
    X = region.project(starts)[pick] if region.idx is None else starts[pick]
    X64 = X.to(dtype=F64, device=work.reference.device)
    J = jacobians(Probe(head_fn(w64), True), X64).detach().cpu()  # (S, E, r) float64
    Jh = J.unflatten(-1, (E, d)).permute(0, 2, 1, 3)  # (S, heads, E, d)
    return [float(v) for v in torch.linalg.matrix_norm(Jh, ord=2).max(dim=0).values]


def _local_report(
    a: Adapter,
    work: Adapter,
    w64: Adapter,
    centres: Tensor,
    R: float,
    rb: RouterBounds,
    local_samples: int,
    iterations: int,
    ascent_steps: int,
    pair_steps: int,
    seed: int,
    rep: LayerBoundReport,
    timings: dict[str, float],
) -> LocalBounds | None:
    t = time.perf_counter()
    try:
        fac = expert_factors(work)
    except ConfigError as e:
        rep.notes.append(f"no local bound on Δ: {e}")
        return None
    check_factors(work, fac, seed=seed)
    try:
        lb, per_centre = local_bounds(fac, centres, R, logit_factors(work))
    except CertificateError as e:
        rep.notes.append(f"no local bound on Δ: no certificate: {e}")
        return None
    timings["local_certified"] = time.perf_counter() - t
    t = time.perf_counter()
    k = min(local_samples, centres.shape[0])
    sel = torch.topk(per_centre, k).indices.to(centres.device)
    C = centres[sel]
    ref = work.reference
    if R > 0:
        gen = torch.Generator(device="cpu").manual_seed(seed + 7)
        rnd, ridx = random_in_balls(C.cpu(), R, local_samples, gen)
        starts = torch.cat([C.to(F64).cpu(), rnd])
        region = Region(C.to(ref.dtype), torch.cat([torch.arange(k), ridx]).to(ref.device), R)
        ascent, pairs = ascent_steps, pair_steps
    else:
        starts, region, ascent, pairs = C.to(F64).cpu(), Region(None, None, 0.0), 0, 0
    res = search(
        Probe(delta_fn(work), True),
        Probe(delta_fn(w64), True),
        starts.to(dtype=ref.dtype, device=ref.device),
        region,
        iterations=iterations,
        ascent=ascent,
        pair_steps=pairs,
        keep=local_samples,
        seed=seed + 3,
    )
    timings["local_search"] = time.perf_counter() - t
    lower = res.value
    gap = lower / lb.adaptive if lb.adaptive > 0 else None
    return LocalBounds(**{**lb.__dict__, "lower": lower, "gap_ratio": gap, "samples": res.points})
