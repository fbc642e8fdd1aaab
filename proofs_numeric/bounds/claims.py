"""The bound claims (`BOUND_CLAIMS`), each beside a refuted mutated twin, for `pytest -m theorems` and
`python -m proofs_numeric`.

Tolerances. Certified bounds are rigorous float64 upper bounds (docs/bounds.md §7a) plus CERT_RTOL; measured
lower bounds are re-evaluated in float64. A soundness violation is a relative excess
(lower − upper)/upper > SOUND_RTOL = 1e-9: far above the allowance, far below any real violation (a
wrong constant or a missing term errs by O(1), e.g. the halved twin by up to +100%). Exact identities
(ratios of bounds, equal bounds after an embedding) use IDENTITY_TOL = 1e-9 relative error.

Budgets below the ci profile's 200 examples (measured per example on one core):
  * softmax_half_attained (40): one search over pair-target and random logits, ~10 ms; the outcome
    depends on E ∈ 2..8 only through the starts, so 40 examples cover each E several times.
  * router_bound_sound / _halved (40), local_bound_sound / _without_router_term (30): each example is
    a whole `layer_report` (screening, exact Jacobians, ascent, pairs, head map, per-head search,
    local bound and its search), 30-90 ms; 6 architectures x 3 domains are each drawn more than once.
    A claim and its twin share the reports of the examples they have in common (`_report` cache).
  * router_bound_tight / _classical (60): a report per example, ~20 ms.
  * talk_head_attenuation / _diagonal (80): exact head Jacobians at 8 starts plus per-head norms.
  * topk_discontinuous / topk_obeys_dense_bound (60): a witness construction per example.
A failing twin is also re-run by Hypothesis's shrinking. Every case runs single-threaded: the shapes
are tiny and OpenMP start-up would dominate. The whole set takes ~11 s on two cores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, TypeVar

import torch
from hypothesis import strategies as st
from torch import Tensor

from moelora_core.adapter import Adapter
from moelora_core.comol import CoMoL, CoMoLConfig
from moelora_core.errors import input_checks
from moelora_core.hydralora import HydraLoRA, HydraLoRAConfig
from moelora_core.moelora import MoELoRA, MoELoRAConfig
from moelora_core.talklora import TalkLoRA, TalkLoRAConfig

from ..checking import Claim, Outcome
from .certified import (
    TalkBounds,
    effective_matrix,
    logit_factors,
    talk_bounds,
)
from .domain import Domain
from .empirical import Probe, Region, search
from .report import LayerBoundReport, _talk_head_lower, layer_report
from .searches import pair_targets
from .spectral import CLASSICAL_SOFTMAX_LIP, SOFTMAX_LIP, centring, softmax_jacobian
from .talk import averaging_talk, reference_init_talk, sharpening_talk

DTYPE = torch.float64
SOUND_RTOL = 1e-9
IDENTITY_TOL = 1e-9
ATTAIN = 0.499  # the search must reach this where ½ is attainable
TIGHT = 0.9  # lower / upper for near-isotropic routers with unconstrained inputs
BUDGET: dict[str, Any] = {
    "samples": 6,
    "iterations": 3,
    "ascent_steps": 1,
    "pair_steps": 2,
    "local_samples": 2,
}
T = TypeVar("T")


@contextmanager
def _one_thread() -> Iterator[None]:
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with input_checks(True):
            yield
    finally:
        torch.set_num_threads(prev)


def _single(case: Callable[[T], Outcome]) -> Callable[[T], Outcome]:
    def run(c: T) -> Outcome:
        with _one_thread():
            return case(c)

    return run


def _excess(items: list[tuple[str, float | None, float | None]], factor: float = 1.0) -> Outcome:
    """Largest relative excess of a measured value over factor x its bound (0 when all below)."""
    worst, label = 0.0, "all measured values within their bounds"
    for name, lower, upper in items:
        if lower is None or upper is None:
            continue
        bound = factor * upper
        ex = (lower - bound) / max(bound, 1e-300) if lower > bound else 0.0
        if ex > worst:
            worst, label = ex, f"{name}: measured {lower:.6g} > bound {bound:.6g}"
    return Outcome(worst, SOUND_RTOL, label)


# ----- drawn instances ---------------------------------------------------------------------------

Arch = Literal[
    "moelora-input", "moelora-latent", "hydralora", "talklora", "comol-core", "comol-input"
]
ARCHS: tuple[Arch, ...] = (
    "moelora-input",
    "moelora-latent",
    "hydralora",
    "talklora",
    "comol-core",
    "comol-input",
)


def build(arch: Arch, n: int, m: int, E: int, r_e: int, top_k: int | None = None) -> Adapter:
    """A float64 adapter of the named kind (total rank E·r_e; CoMoL rank r_e + E − 1 >= E)."""
    if arch in ("moelora-input", "moelora-latent"):
        kind: Literal["input", "latent"] = "input" if arch == "moelora-input" else "latent"
        return MoELoRA(
            MoELoRAConfig(
                in_features=n,
                out_features=m,
                num_experts=E,
                expert_rank=r_e,
                router=kind,
                top_k=top_k,
            ),
            dtype=DTYPE,
        )
    if arch == "hydralora":
        return HydraLoRA(
            HydraLoRAConfig(
                in_features=n, out_features=m, num_experts=E, expert_rank=r_e, top_k=top_k
            ),
            dtype=DTYPE,
        )
    if arch == "talklora":
        return TalkLoRA(
            TalkLoRAConfig(in_features=n, out_features=m, rank=E * r_e, num_experts=E, top_k=top_k),
            dtype=DTYPE,
        )
    cfg = CoMoLConfig(
        in_features=n,
        out_features=m,
        rank=r_e + E - 1,
        num_cores=E,
        core_router=arch == "comol-core",
        top_k=top_k,
    )
    return CoMoL(cfg, dtype=DTYPE)


A = TypeVar("A", bound=Adapter)


@torch.no_grad()
def randomized(a: A, seed: int, scale: float) -> A:
    a.randomize_(seed)
    for p in a.parameters():
        p.mul_(scale)
    return a


@dataclass(frozen=True)
class RouterCase:
    """An architecture, its sizes, a weight seed and scale, and a domain (inputs drawn from seed)."""

    arch: Arch
    n: int
    m: int
    E: int
    r_e: int
    seed: int
    scale: float
    domain: Literal["unconstrained", "points", "ball"]
    radius: float
    centre_scale: float = 2.0

    def build(self) -> Adapter:
        return randomized(build(self.arch, self.n, self.m, self.E, self.r_e), self.seed, self.scale)

    def inputs(self) -> Tensor | None:
        if self.domain == "unconstrained":
            return None
        gen = torch.Generator().manual_seed(self.seed + 1)
        return self.centre_scale * torch.randn(3, self.n, generator=gen, dtype=DTYPE)

    def report_kwargs(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs(),
            "radius": self.radius if self.domain == "ball" else None,
            "seed": self.seed,
            **BUDGET,
        }


def router_cases(
    domains: tuple[str, ...] = ("unconstrained", "points", "ball"),
    min_experts: int = 1,
    scales: tuple[float, ...] = (1.0, 0.5, 3.0),
    centre_scales: tuple[float, ...] = (2.0, 0.5, 6.0),
) -> st.SearchStrategy[RouterCase]:
    """Tiny instances (n <= 5, m <= 3, E <= 4); the first listed choices are drawn first."""
    return st.builds(
        RouterCase,
        arch=st.sampled_from(ARCHS),
        n=st.integers(1, 5),
        m=st.integers(1, 3),
        E=st.integers(min_experts, 4),
        r_e=st.integers(1, 2),
        seed=st.integers(0, 255),
        scale=st.sampled_from(scales),
        domain=st.sampled_from(domains),
        radius=st.sampled_from([0.5, 2.0, 0.0]),
        centre_scale=st.sampled_from(centre_scales),
    )


@lru_cache(maxsize=2048)
def _report(c: RouterCase, local: bool) -> LayerBoundReport:
    """One report per drawn case: a claim and its twin judge the same measurements (the twin's
    examples are the claim's, drawn in the same derandomised order)."""
    with _one_thread():
        return layer_report(c.build(), local=local, **c.report_kwargs())


# ----- softmax -----------------------------------------------------------------------------------

probabilities = st.one_of(
    st.lists(st.floats(-30, 30), min_size=1, max_size=8).map(
        lambda z: torch.softmax(torch.tensor(z, dtype=DTYPE), 0)
    ),
    st.lists(st.floats(0, 1), min_size=1, max_size=8)
    .filter(lambda w: sum(w) > 1e-6)
    .map(lambda w: torch.tensor(w, dtype=DTYPE) / sum(w)),
    st.integers(2, 8).map(lambda E: torch.tensor([0.5, 0.5] + [0.0] * (E - 2), dtype=DTYPE)),
)


def _softmax_norm(constant: float) -> Callable[[Tensor], Outcome]:
    def case(p: Tensor) -> Outcome:
        s = float(torch.linalg.matrix_norm(softmax_jacobian(p), ord=2))
        return Outcome(max(0.0, s - constant), 1e-15, f"‖J(p)‖₂ = {s:.17g} vs {constant}")

    return case


def _softmax_attained(constant: float, fraction: float) -> Callable[[tuple[int, int]], Outcome]:
    """The search over unconstrained logits z ∈ R^E reaches fraction x constant for softmax(z)."""

    def case(args: tuple[int, int]) -> Outcome:
        E, seed = args

        def sm(z: Tensor) -> Tensor:
            return torch.softmax(z, dim=-1)

        gen = torch.Generator().manual_seed(seed)
        starts = torch.cat(
            [
                pair_targets(torch.eye(E, dtype=DTYPE), 4),
                3 * torch.randn(8, E, generator=gen, dtype=DTYPE),
            ]
        )
        res = search(
            Probe(sm, True),
            Probe(sm, True),
            starts,
            Region(None, None, 0.0),
            iterations=3,
            ascent=0,
            pair_steps=1,
            keep=6,
            seed=seed,
        )
        target = fraction * constant
        return Outcome(max(0.0, target - res.value), 0.0, f"found {res.value:.6f}, needed {target}")

    return case


# ----- soundness ---------------------------------------------------------------------------------


def _router_sound(factor: float) -> Callable[[RouterCase], Outcome]:
    def case(c: RouterCase) -> Outcome:
        rep = _report(c, False)
        items: list[tuple[str, float | None, float | None]] = [
            ("router", rep.lower, rep.upper),
            ("router (pairs)", rep.lower_pairs, rep.upper),
        ]
        if rep.head is not None:
            items.append(("head map", rep.head.lower, rep.head.upper))
        if rep.talk is not None and rep.talk_head_lower is not None:
            for j, (lo, up) in enumerate(
                zip(rep.talk_head_lower, rep.talk.head_centred, strict=True)
            ):
                items.append((f"head {j} of T", lo, up))
        return _excess(items, factor)

    return case


def _local_sound(drop_router_term: bool) -> Callable[[RouterCase], Outcome]:
    def case(c: RouterCase) -> Outcome:
        rep = _report(c, True)
        lo = rep.local
        assert lo is not None
        if drop_router_term:
            return _excess([("Δ without router term", lo.lower, lo.expert_max)])
        return _excess(
            [
                ("Δ adaptive", lo.lower, lo.adaptive),
                ("adaptive vs centred", lo.adaptive, lo.tight),
                ("centred vs SPEC form", lo.tight, lo.spec),
            ]
        )

    return case


LOCAL_CASES = router_cases(("ball", "points"), 2, (3.0, 1.0, 0.5), (6.0, 2.0, 0.5))


# ----- tightness ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TightCase:
    """softmax(W x), W = c (Q + ε N/‖N‖₂): Q has orthonormal rows (E <= n); E = 2: W Gaussian."""

    E: int
    extra: int  # n = E + extra
    seed: int
    eps: float
    scale: float

    def weight(self) -> Tensor:
        n = self.E + self.extra
        gen = torch.Generator().manual_seed(self.seed)
        G = torch.randn(self.E, n, generator=gen, dtype=DTYPE)
        if self.E == 2:
            return self.scale * G
        Q = torch.linalg.qr(G.T).Q.T  # (E, n), orthonormal rows
        N = torch.randn(self.E, n, generator=gen, dtype=DTYPE)
        W: Tensor = self.scale * (Q + self.eps * N / torch.linalg.matrix_norm(N, ord=2))
        return W

    def build(self) -> MoELoRA:
        n = self.E + self.extra
        a = randomized(
            MoELoRA(
                MoELoRAConfig(in_features=n, out_features=1, num_experts=self.E, expert_rank=1),
                dtype=DTYPE,
            ),
            self.seed,
            1.0,
        )
        with torch.no_grad():
            a.router.logits.dense().copy_(self.weight())
        return a


tight_cases = st.builds(
    TightCase,
    E=st.integers(2, 6),
    extra=st.integers(0, 6),
    seed=st.integers(0, 255),
    eps=st.floats(0.0, 0.04),
    scale=st.sampled_from([1.0, 0.3, 3.0]),
)


def _tight(constant: float) -> Callable[[TightCase], Outcome]:
    def case(c: TightCase) -> Outcome:
        rep = layer_report(
            c.build(), seed=c.seed, samples=8, iterations=2, ascent_steps=0, pair_steps=0
        )
        assert rep.lower is not None and rep.upper is not None
        gap = rep.lower / (rep.upper * constant / SOFTMAX_LIP)
        return Outcome(max(0.0, TIGHT - gap), 0.0, f"lower/upper = {gap:.4f} (needed >= {TIGHT})")

    return case


# ----- TalkLoRA ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TalkCase:
    n: int
    m: int
    E: int
    d: int  # head dim r/E
    seed: int
    scale: float

    def build(self) -> TalkLoRA:
        t = TalkLoRA(
            TalkLoRAConfig(
                in_features=self.n, out_features=self.m, rank=self.E * self.d, num_experts=self.E
            ),
            dtype=DTYPE,
        )
        randomized(t, self.seed, self.scale)
        return t


talk_cases = st.builds(
    TalkCase,
    n=st.integers(1, 6),
    m=st.integers(1, 3),
    E=st.integers(1, 4),
    d=st.integers(1, 3),
    seed=st.integers(0, 255),
    scale=st.sampled_from([1.0, 0.5, 2.0]),
)


@contextmanager
def _talk_set_to(t: TalkLoRA, T_: Tensor) -> Iterator[TalkLoRA]:
    """Temporarily T := T_ in place (fixed W_r, A, K, B), restored on exit."""
    saved = t.T.weight.detach().clone()
    with torch.no_grad():
        t.T.weight.copy_(T_)
    try:
        yield t
    finally:
        with torch.no_grad():
            t.T.weight.copy_(saved)


def _talk_gain(column_max: bool) -> Callable[[TalkCase], Outcome]:
    """The head-perturbation gain of the module's talking map, max_δ ‖(T⊗I)δ‖/‖δ‖, measured through
    its forward (applied to the basis of R^r), against ‖T‖₂ (twin: the largest column norm
    max_j ‖T e_j‖₂, which only single-head perturbations obey). The head bound relative to T = I is
    this gain, so the claim is what "no amplification iff ‖T‖₂ ≤ 1" rests on."""

    def case(c: TalkCase) -> Outcome:
        t = c.build()
        T_ = t.T.weight.detach()
        r = t.config.rank
        with torch.no_grad():
            M = t.talk(
                torch.eye(r, dtype=DTYPE)
            ).T  # (r, r): the module's map, column j = talk(e_j)
        measured = float(torch.linalg.matrix_norm(M, ord=2))
        if column_max:
            claimed = float(torch.linalg.vector_norm(T_, dim=0).max())
        else:
            claimed = float(torch.linalg.matrix_norm(T_, ord=2))
        err = abs(measured - claimed) / max(claimed, 1e-300)
        return Outcome(
            err, IDENTITY_TOL, f"measured gain {measured:.12g} vs claimed {claimed:.12g}"
        )

    return case


def _talk_heads(diagonal_only: bool) -> Callable[[TalkCase], Outcome]:
    def case(c: TalkCase) -> Outcome:
        t = c.build()
        E, d = t.num_experts, t.config.head_dim
        tb = talk_bounds(t)
        with input_checks(False):
            lower = _talk_head_lower(t, t, Domain("unconstrained", 0.0, 0), None, None, 8, c.seed)
        T_ = t.T.weight.detach()
        Wn = float(torch.linalg.matrix_norm(t.router.logits.dense().detach(), ord=2))
        items: list[tuple[str, float | None, float | None]] = []
        gen = torch.Generator().manual_seed(c.seed)
        for j in range(E):  # E <= 4 heads: the per-head statements
            if diagonal_only:
                items.append(
                    (f"head {j} (|T_jj|)", lower[j], SOFTMAX_LIP * Wn * abs(float(T_[j, j])))
                )
                continue
            items.append((f"head {j} measured", lower[j], tb.head_centred[j]))
            items.append((f"head {j} centred vs product", tb.head_centred[j], tb.head_product[j]))
            delta = torch.zeros(E * d, dtype=DTYPE)
            delta[j * d : (j + 1) * d] = torch.randn(d, generator=gen, dtype=DTYPE)
            with torch.no_grad():
                talked = float(torch.linalg.vector_norm(t.talk(delta)))
            expect = tb.attenuation[j] * float(torch.linalg.vector_norm(delta))
            if abs(talked - expect) > IDENTITY_TOL * (1 + expect):
                return Outcome(
                    math.inf, SOUND_RTOL, f"‖(T⊗I)δ‖ = {talked} but ‖T e_j‖‖δ‖ = {expect}"
                )
        return _excess(items)

    return case


avg_cases = st.tuples(st.integers(2, 12), st.floats(0.01, 1.0))


@lru_cache(maxsize=16)
def _talk_with_E(E: int) -> tuple[TalkLoRA, TalkBounds]:
    """A fixed TalkLoRA (n = 3, m = 2, r = E) per E and its talk bounds at T = I."""
    t = randomized(
        TalkLoRA(TalkLoRAConfig(in_features=3, out_features=2, rank=E, num_experts=E), dtype=DTYPE),
        E,
        1.0,
    )
    with _talk_set_to(t, torch.eye(E, dtype=DTYPE)):
        return t, talk_bounds(t)


def _averaging(make: Callable[[int, float], Tensor]) -> Callable[[tuple[int, float]], Outcome]:
    def case(args: tuple[int, float]) -> Outcome:
        E, a = args
        t, ti = _talk_with_E(E)
        with _talk_set_to(t, make(E, a)):
            tb = talk_bounds(t)
        formula = math.sqrt(1 - (2 * a - a * a) * (1 - 1 / E))
        err = abs(tb.talk_norm - 1.0)  # no amplification: ‖T‖₂ = 1
        err = max(err, max(abs(v - formula) for v in tb.attenuation))  # ‖T e_j‖₂ formula
        shrinks = all(p < q for p, q in zip(tb.head_product, ti.head_product, strict=True))
        if not shrinks:
            err = math.inf
        return Outcome(
            err, IDENTITY_TOL, f"‖T‖₂ = {tb.talk_norm:.12g}, ‖T e_j‖₂ = {tb.attenuation}"
        )

    return case


def _reference_init(args: tuple[int, int]) -> Outcome:
    E, seed = args
    T_ = reference_init_talk(E, 1, seed)[0].to(DTYPE)
    s = float(torch.linalg.matrix_norm(T_, ord=2))
    return Outcome(max(0.0, s - 1.0), 0.0, f"‖T‖₂ = {s:.6f} under kaiming-uniform(a=√5), E={E}")


# ----- top-k -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopKCase:
    arch: Arch
    E: int
    k: int
    extra: int  # n = E + extra, so that Π L has rank E − 1
    seed: int

    def build(self) -> Adapter:
        a = build(self.arch, self.E + self.extra, 2, self.E, 2, top_k=self.k)
        return randomized(a, self.seed, 1.0)


topk_cases = st.integers(2, 4).flatmap(
    lambda E: st.builds(
        TopKCase,
        arch=st.sampled_from(ARCHS),
        E=st.just(E),
        k=st.integers(1, E - 1),
        extra=st.integers(0, 2),
        seed=st.integers(0, 255),
    )
)
EPSILON = 1e-6


def _topk(dense_bound: bool) -> Callable[[TopKCase], Outcome]:
    def case(c: TopKCase) -> Outcome:
        a = c.build()
        rep = layer_report(a, epsilon=EPSILON, seed=c.seed)
        w = rep.topk_witness
        if w is None:
            return Outcome(math.inf, 0.0, "no witness")
        if dense_bound:  # twin: the top-k router obeys the dense router's bound ½‖Π L‖₂
            L = effective_matrix(logit_factors(a))
            bound = SOFTMAX_LIP * float(torch.linalg.matrix_norm(centring(c.E) @ L, ord=2))
            return _excess([("top-k jump ratio", w.ratio, bound)])
        need = 0.9 * math.sqrt(2) / ((c.k - 1) * math.e + 1)
        bad = w.distance >= EPSILON or w.jump < need
        detail = f"distance {w.distance:.2e} (< {EPSILON}), jump {w.jump:.4f} (>= {need:.4f})"
        return Outcome(math.inf if bad else 0.0, 0.0, detail)

    return case


# ----- the catalogue -----------------------------------------------------------------------------

BOUND_CLAIMS: list[Claim[Any]] = [
    Claim(
        "softmax_jacobian_half",
        "‖diag(p) − ppᵀ‖₂ <= ½ for every probability vector p",
        probabilities,
        _single(_softmax_norm(SOFTMAX_LIP)),
        spec="SPEC Bounds: softmax",
    ),
    Claim(
        "softmax_jacobian_quarter",
        "twin: ‖diag(p) − ppᵀ‖₂ <= ¼ (the scalar sigmoid's constant)",
        probabilities,
        _single(_softmax_norm(0.25)),
        "refuted",
        "softmax_jacobian_half",
    ),
    Claim(
        "softmax_half_attained",
        f"the lower-bound search over unconstrained logits reaches >= {ATTAIN} (½ is attained)",
        st.tuples(st.integers(2, 8), st.integers(0, 63)),
        _single(_softmax_attained(SOFTMAX_LIP, ATTAIN / SOFTMAX_LIP)),
        spec="SPEC Bounds: softmax",
        max_examples=40,
    ),
    Claim(
        "softmax_classical_constant_attained",
        "twin: the classical constant 1 is approached (search reaches 0.9)",
        st.tuples(st.integers(2, 8), st.integers(0, 63)),
        _single(_softmax_attained(CLASSICAL_SOFTMAX_LIP, 0.9)),
        "refuted",
        "softmax_half_attained",
        max_examples=40,
    ),
    Claim(
        "router_bound_sound",
        "no Jacobian norm or pair ratio found by the adversarial search exceeds the certified bound "
        "(router x ↦ g, head map h ↦ g, TalkLoRA per head), over architectures, weights and domains",
        router_cases(),
        _single(_router_sound(1.0)),
        spec="SPEC Bounds: router Lipschitz",
        max_examples=40,
    ),
    Claim(
        "router_bound_halved",
        "twin: half the certified bound is still sound",
        router_cases(),
        _single(_router_sound(0.5)),
        "refuted",
        "router_bound_sound",
        max_examples=40,
    ),
    Claim(
        "local_bound_sound",
        "on balls B(x, R) the searched Lipschitz ratio of Δ stays below the adaptive bound, which is "
        "below the centred bound, which is below the SPEC form",
        LOCAL_CASES,
        _single(_local_sound(False)),
        spec="SPEC Bounds: local perturbation bound",
        max_examples=30,
    ),
    Claim(
        "local_bound_without_router_term",
        "twin: max_i ‖P_i‖₂ alone bounds the local Lipschitz constant of Δ",
        LOCAL_CASES,
        _single(_local_sound(True)),
        "refuted",
        "local_bound_sound",
        max_examples=30,
    ),
    Claim(
        "router_bound_tight",
        f"for softmax(W x) with unconstrained x and W near-isotropic on 1^⊥ (any W when E = 2), "
        f"lower/upper >= {TIGHT}",
        tight_cases,
        _single(_tight(SOFTMAX_LIP)),
        spec="SPEC Bounds: tightness",
        max_examples=60,
    ),
    Claim(
        "router_bound_tight_classical",
        "twin: with the classical softmax constant 1 the bound is still tight (lower/upper >= 0.9)",
        tight_cases,
        _single(_tight(CLASSICAL_SOFTMAX_LIP)),
        "refuted",
        "router_bound_tight",
        max_examples=60,
    ),
    Claim(
        "talk_head_gain",
        "the module's talking map amplifies a head perturbation by at most ‖T‖₂, attained: "
        "max_δ ‖(T⊗I)δ‖/‖δ‖ measured through its forward equals ‖T‖₂",
        talk_cases,
        _single(_talk_gain(False)),
        spec="SPEC Bounds: head perturbation",
    ),
    Claim(
        "talk_head_gain_column_max",
        "twin: the gain is the largest column norm max_j ‖T e_j‖₂ (true for one head only)",
        talk_cases,
        _single(_talk_gain(True)),
        "refuted",
        "talk_head_gain",
    ),
    Claim(
        "talk_head_attenuation",
        "a perturbation confined to head j is scaled by ‖T e_j‖₂: ‖(T⊗I)δ‖ = ‖T e_j‖₂‖δ‖, and the "
        "measured head-j sensitivity <= ½‖Π W_r((T e_j)⊗I)‖₂ <= ½‖W_r‖₂‖T e_j‖₂",
        talk_cases,
        _single(_talk_heads(False)),
        spec="SPEC Bounds: head perturbation",
        max_examples=80,
    ),
    Claim(
        "talk_head_attenuation_diagonal",
        "twin: a head-j perturbation is scaled by |T_jj| only",
        talk_cases,
        _single(_talk_heads(True)),
        "refuted",
        "talk_head_attenuation",
        max_examples=80,
    ),
    Claim(
        "talk_averaging_no_amplification",
        "T = (1−a)I + (a/E)11ᵀ: ‖T‖₂ = 1 and ‖T e_j‖₂ = sqrt(1 − (2a − a²)(1 − 1/E)) < 1, so every "
        "per-head bound shrinks",
        avg_cases,
        _single(_averaging(averaging_talk)),
        spec="SPEC Bounds: head perturbation",
    ),
    Claim(
        "talk_sharpening_no_amplification",
        "twin: T = (1+a)I − (a/E)11ᵀ does not amplify either",
        avg_cases,
        _single(_averaging(sharpening_talk)),
        "refuted",
        "talk_averaging_no_amplification",
    ),
    Claim(
        "talk_reference_init_no_amplification",
        "statement refuted by computation: under the reference initialisation (kaiming-uniform, "
        "a = √5) the talking module never amplifies (‖T‖₂ <= 1); measured fractions in docs/bounds.md",
        st.tuples(st.sampled_from([4, 8]), st.integers(0, 1023)),
        _single(_reference_init),
        "refuted",
        spec="SPEC Bounds: head perturbation",
    ),
    Claim(
        "topk_discontinuous",
        f"a top-k router (k < E) has inputs closer than {EPSILON:g} whose routing weights differ by "
        ">= 0.9·√2/((k−1)e + 1): no Lipschitz constant",
        topk_cases,
        _single(_topk(False)),
        spec="SPEC Bounds: router Lipschitz (top-k)",
        max_examples=60,
    ),
    Claim(
        "topk_obeys_dense_bound",
        "twin: a top-k router obeys the dense router's bound ½‖Π L‖₂",
        topk_cases,
        _single(_topk(True)),
        "refuted",
        "topk_discontinuous",
        max_examples=60,
    ),
]
