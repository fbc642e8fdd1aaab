"""The bound claims (`BOUND_CLAIMS`), each beside a refuted mutated twin (`claim_with_twin`), for
`pytest -m theorems` and `python -m proofs_numeric`. The instances are in bounds_cases.py, the
measurements (and the tolerances) in bounds_checks.py; the arguments in docs/bounds.md.

Budgets below the ci profile's 200 examples (measured per example on one core):
  * softmax_half_attained (40): one search over pair-target and random logits, ~10 ms; the outcome
    depends on E ∈ 2..8 only through the starts, so 40 examples cover each E several times.
  * router_bound_sound (40), local_bound_sound (30) and their twins: each example is a whole
    `layer_report` (screening, exact Jacobians, ascent, pairs, head map, per-head search, local bound
    and its search), 30-90 ms; 6 architectures x 3 domains are each drawn more than once. A claim and
    its twin share the reports of the examples they have in common (`cached_report`).
  * router_bound_tight (60): a report per example, ~20 ms.
  * talk_head_attenuation (80): exact head Jacobians at 8 starts plus per-head norms.
  * topk_discontinuous (60): a witness construction per example.
A failing twin is also re-run by Hypothesis's shrinking. The whole set takes ~5-11 s on two cores.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from ..bounds.spectral import CLASSICAL_SOFTMAX_LIP, SOFTMAX_LIP
from ..bounds.talk import averaging_talk, sharpening_talk
from ..checking import Claim, claim_with_twin
from .bounds_cases import (
    LOCAL_CASES,
    avg_cases,
    probabilities,
    router_cases,
    talk_cases,
    tight_cases,
    topk_cases,
)
from .bounds_checks import (
    EPSILON,
    TIGHT,
    averaging,
    local_sound,
    reference_init,
    router_sound,
    single,
    softmax_attained,
    softmax_norm,
    talk_gain,
    talk_heads,
    tight,
    topk,
)

ATTAIN = 0.499  # the search must reach this where ½ is attainable
LOGITS = st.tuples(st.integers(2, 8), st.integers(0, 63))

SOFTMAX: list[Claim[Any]] = [
    *claim_with_twin(
        "softmax_jacobian_half",
        "‖diag(p) − ppᵀ‖₂ <= ½ for every probability vector p",
        probabilities,
        single(softmax_norm(SOFTMAX_LIP)),
        twin="quarter: ‖diag(p) − ppᵀ‖₂ <= ¼ (the scalar sigmoid's constant)",
        twin_case=single(softmax_norm(0.25)),
        spec="SPEC Bounds: softmax",
    ),
    *claim_with_twin(
        "softmax_half_attained",
        f"the lower-bound search over unconstrained logits reaches >= {ATTAIN} (½ is attained)",
        LOGITS,
        single(softmax_attained(SOFTMAX_LIP, ATTAIN / SOFTMAX_LIP)),
        twin="classical: the classical constant 1 is approached (search reaches 0.9)",
        twin_case=single(softmax_attained(CLASSICAL_SOFTMAX_LIP, 0.9)),
        spec="SPEC Bounds: softmax",
        max_examples=40,
    ),
]

SOUNDNESS: list[Claim[Any]] = [
    *claim_with_twin(
        "router_bound_sound",
        "no Jacobian norm or pair ratio found by the adversarial search exceeds the certified bound "
        "(router x ↦ g, head map h ↦ g, TalkLoRA per head), over architectures, weights and domains",
        router_cases(),
        single(router_sound(1.0)),
        twin="halved: half the certified bound is still sound",
        twin_case=single(router_sound(0.5)),
        spec="SPEC Bounds: router Lipschitz",
        max_examples=40,
    ),
    *claim_with_twin(
        "local_bound_sound",
        "on balls B(x, R) the searched Lipschitz ratio of Δ stays below the adaptive bound, which is "
        "below the centred bound, which is below the SPEC form",
        LOCAL_CASES,
        single(local_sound(False)),
        twin="without_router_term: max_i ‖P_i‖₂ alone bounds the local Lipschitz constant of Δ",
        twin_case=single(local_sound(True)),
        spec="SPEC Bounds: local perturbation bound",
        max_examples=30,
    ),
    *claim_with_twin(
        "router_bound_tight",
        f"for softmax(W x) with unconstrained x and W near-isotropic on 1^⊥ (any W when E = 2), "
        f"lower/upper >= {TIGHT}",
        tight_cases,
        single(tight(SOFTMAX_LIP)),
        twin="classical: with the classical softmax constant 1 the bound is still tight "
        "(lower/upper >= 0.9)",
        twin_case=single(tight(CLASSICAL_SOFTMAX_LIP)),
        spec="SPEC Bounds: tightness",
        max_examples=60,
    ),
]

TALK: list[Claim[Any]] = [
    *claim_with_twin(
        "talk_head_gain",
        "the module's talking map amplifies a head perturbation by at most ‖T‖₂, attained: "
        "max_δ ‖(T⊗I)δ‖/‖δ‖ measured through its forward equals ‖T‖₂",
        talk_cases,
        single(talk_gain(False)),
        twin="column_max: the gain is the largest column norm max_j ‖T e_j‖₂ (true for one head "
        "only)",
        twin_case=single(talk_gain(True)),
        spec="SPEC Bounds: head perturbation",
    ),
    *claim_with_twin(
        "talk_head_attenuation",
        "a perturbation confined to head j is scaled by ‖T e_j‖₂: ‖(T⊗I)δ‖ = ‖T e_j‖₂‖δ‖, and the "
        "measured head-j sensitivity <= ½‖Π W_r((T e_j)⊗I)‖₂ <= ½‖W_r‖₂‖T e_j‖₂",
        talk_cases,
        single(talk_heads(False)),
        twin="diagonal: a head-j perturbation is scaled by |T_jj| only",
        twin_case=single(talk_heads(True)),
        spec="SPEC Bounds: head perturbation",
        max_examples=80,
    ),
    *claim_with_twin(
        "talk_averaging_no_amplification",
        "T = (1−a)I + (a/E)11ᵀ: ‖T‖₂ = 1 and ‖T e_j‖₂ = sqrt(1 − (2a − a²)(1 − 1/E)) < 1, so every "
        "per-head bound shrinks",
        avg_cases,
        single(averaging(averaging_talk)),
        twin="sharpening: T = (1+a)I − (a/E)11ᵀ does not amplify either",
        twin_case=single(averaging(sharpening_talk)),
        spec="SPEC Bounds: head perturbation",
    ),
    Claim(
        "talk_reference_init_no_amplification",
        "statement refuted by computation: under the reference initialisation (kaiming-uniform, "
        "a = √5) the talking module never amplifies (‖T‖₂ <= 1); measured fractions in docs/bounds.md",
        st.tuples(st.sampled_from([4, 8]), st.integers(0, 1023)),
        single(reference_init),
        "refuted",
        spec="SPEC Bounds: head perturbation",
    ),
]

TOPK: list[Claim[Any]] = claim_with_twin(
    "topk_discontinuous",
    f"a top-k router (k < E) has inputs closer than {EPSILON:g} whose routing weights differ by "
    ">= 0.9·√2/((k−1)e + 1): no Lipschitz constant",
    topk_cases,
    single(topk(False)),
    twin="obeys_dense_bound: a top-k router obeys the dense router's bound ½‖Π L‖₂",
    twin_case=single(topk(True)),
    spec="SPEC Bounds: router Lipschitz (top-k)",
    max_examples=60,
)

BOUND_CLAIMS: list[Claim[Any]] = [*SOFTMAX, *SOUNDNESS, *TALK, *TOPK]
