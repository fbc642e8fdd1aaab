"""The measurements behind the bound claims (catalogue/bounds.py): one function per claim, each
parametrised by what its mutated twin changes (a constant, a dropped term), returning an `Outcome`.

Tolerances. Certified bounds are rigorous float64 upper bounds (docs/bounds.md §7a) plus CERT_RTOL;
measured lower bounds are re-evaluated in float64. A soundness violation is a relative excess
(lower − upper)/upper > SOUND_RTOL = 1e-9: far above the allowance, far below any real violation (a
wrong constant or a missing term errs by O(1), e.g. the halved twin by up to +100%). Exact identities
(ratios of bounds, equal bounds after an embedding) use IDENTITY_TOL = 1e-9 relative error. Every case
runs single-threaded (`single`): the shapes are tiny and OpenMP start-up would dominate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import TypeVar

import torch
from torch import Tensor

from moelora_core.errors import input_checks
from moelora_core.talklora import TalkLoRA, TalkLoRAConfig
from moelora_core.validate import require_instance

from ..bounds.certified import TalkBounds, effective_matrix, logit_factors, talk_bounds
from ..bounds.domain import Domain
from ..bounds.instances import DTYPE, random_adapter
from ..bounds.report import layer_report
from ..bounds.results import LayerBoundReport
from ..bounds.searches import pair_targets
from ..bounds.sections import talk_head_lower
from ..bounds.spectral import SOFTMAX_LIP, centring, softmax_jacobian
from ..bounds.talk import reference_init_talk
from ..checking import Outcome
from ..search import Probe, Region, search
from ..threads import torch_threads
from .bounds_cases import RouterCase, TalkCase, TightCase, TopKCase

SOUND_RTOL = 1e-9
IDENTITY_TOL = 1e-9
TIGHT = 0.9  # lower / upper for near-isotropic routers with unconstrained inputs
EPSILON = 1e-6  # top-k witnesses: inputs closer than this
T = TypeVar("T")


@contextmanager
def one_thread() -> Iterator[None]:
    """One torch thread and the per-call input checks on, for the block."""
    with torch_threads(1), input_checks(True):
        yield


def single(case: Callable[[T], Outcome]) -> Callable[[T], Outcome]:
    """`case` run under `one_thread`."""

    def run(c: T) -> Outcome:
        with one_thread():
            return case(c)

    return run


def excess(items: list[tuple[str, float | None, float | None]], factor: float = 1.0) -> Outcome:
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


@lru_cache(maxsize=2048)
def cached_report(c: RouterCase, local: bool) -> LayerBoundReport:
    """One report per drawn case: a claim and its twin judge the same measurements (the twin's
    examples are the claim's, drawn in the same derandomised order)."""
    with one_thread():
        return layer_report(c.build(), local=local, **c.report_kwargs())


# ----- softmax -----------------------------------------------------------------------------------


def softmax_norm(constant: float) -> Callable[[Tensor], Outcome]:
    def case(p: Tensor) -> Outcome:
        s = float(torch.linalg.matrix_norm(softmax_jacobian(p), ord=2))
        return Outcome(max(0.0, s - constant), 1e-15, f"‖J(p)‖₂ = {s:.17g} vs {constant}")

    return case


def softmax_attained(constant: float, fraction: float) -> Callable[[tuple[int, int]], Outcome]:
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


def router_sound(factor: float) -> Callable[[RouterCase], Outcome]:
    def case(c: RouterCase) -> Outcome:
        rep = cached_report(c, False)
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
        return excess(items, factor)

    return case


def local_sound(drop_router_term: bool) -> Callable[[RouterCase], Outcome]:
    def case(c: RouterCase) -> Outcome:
        rep = cached_report(c, True)
        lo = rep.local
        assert lo is not None
        if drop_router_term:
            return excess([("Δ without router term", lo.lower, lo.expert_max)])
        return excess(
            [
                ("Δ adaptive", lo.lower, lo.adaptive),
                ("adaptive vs centred", lo.adaptive, lo.tight),
                ("centred vs SPEC form", lo.tight, lo.spec),
            ]
        )

    return case


# ----- tightness ---------------------------------------------------------------------------------


def tight(constant: float) -> Callable[[TightCase], Outcome]:
    def case(c: TightCase) -> Outcome:
        rep = layer_report(
            c.build(), seed=c.seed, samples=8, iterations=2, ascent_steps=0, pair_steps=0
        )
        assert rep.lower is not None and rep.upper is not None
        gap = rep.lower / (rep.upper * constant / SOFTMAX_LIP)
        return Outcome(max(0.0, TIGHT - gap), 0.0, f"lower/upper = {gap:.4f} (needed >= {TIGHT})")

    return case


# ----- TalkLoRA ----------------------------------------------------------------------------------


@contextmanager
def talk_set_to(t: TalkLoRA, T_: Tensor) -> Iterator[TalkLoRA]:
    """Temporarily T := T_ in place (fixed W_r, A, K, B), restored on exit."""
    saved = t.T.weight.detach().clone()
    with torch.no_grad():
        t.T.weight.copy_(T_)
    try:
        yield t
    finally:
        with torch.no_grad():
            t.T.weight.copy_(saved)


def talk_gain(column_max: bool) -> Callable[[TalkCase], Outcome]:
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


def talk_heads(diagonal_only: bool) -> Callable[[TalkCase], Outcome]:
    def case(c: TalkCase) -> Outcome:
        t = c.build()
        E, d = t.num_experts, t.config.head_dim
        tb = talk_bounds(t)
        with input_checks(False):
            lower = talk_head_lower(t, t, Domain("unconstrained", 0.0, 0), None, None, 8, c.seed)
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
        return excess(items)

    return case


@lru_cache(maxsize=16)
def talk_with_E(E: int) -> tuple[TalkLoRA, TalkBounds]:
    """A fixed TalkLoRA (n = 3, m = 2, r = E) per E and its talk bounds at T = I."""
    cfg = TalkLoRAConfig(in_features=3, out_features=2, rank=E, num_experts=E)
    t = require_instance("adapter", random_adapter(cfg, E), TalkLoRA)
    with talk_set_to(t, torch.eye(E, dtype=DTYPE)):
        return t, talk_bounds(t)


def averaging(make: Callable[[int, float], Tensor]) -> Callable[[tuple[int, float]], Outcome]:
    def case(args: tuple[int, float]) -> Outcome:
        E, a = args
        t, ti = talk_with_E(E)
        with talk_set_to(t, make(E, a)):
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


def reference_init(args: tuple[int, int]) -> Outcome:
    E, seed = args
    T_ = reference_init_talk(E, 1, seed)[0].to(DTYPE)
    s = float(torch.linalg.matrix_norm(T_, ord=2))
    return Outcome(max(0.0, s - 1.0), 0.0, f"‖T‖₂ = {s:.6f} under kaiming-uniform(a=√5), E={E}")


# ----- top-k -------------------------------------------------------------------------------------


def topk(dense_bound: bool) -> Callable[[TopKCase], Outcome]:
    def case(c: TopKCase) -> Outcome:
        a = c.build()
        rep = layer_report(a, epsilon=EPSILON, seed=c.seed)
        w = rep.topk_witness
        if w is None:
            return Outcome(math.inf, 0.0, "no witness")
        if dense_bound:  # twin: the top-k router obeys the dense router's bound ½‖Π L‖₂
            L = effective_matrix(logit_factors(a))
            bound = SOFTMAX_LIP * float(torch.linalg.matrix_norm(centring(c.E) @ L, ord=2))
            return excess([("top-k jump ratio", w.ratio, bound)])
        need = 0.9 * math.sqrt(2) / ((c.k - 1) * math.e + 1)
        bad = w.distance >= EPSILON or w.jump < need
        detail = f"distance {w.distance:.2e} (< {EPSILON}), jump {w.jump:.4f} (>= {need:.4f})"
        return Outcome(math.inf if bad else 0.0, 0.0, detail)

    return case
