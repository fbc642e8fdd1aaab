"""SPEC claim 4: the exact reductions to LoRA and between the mixtures, and ΔW(x) x = Δ(x).

    MoELoRA with E = 1                     = LoRA (A_1, B_1)
    CoMoL with N = 1                       = LoRA (B' = B M_1)
    Σ_i g_i (M_i A x)                      = (Σ_i g_i M_i) A x   (CoMoL's merge order)
    ΔW(x) x                                = Δ(x),  ΔW(x) = Σ_i g_i(x) P_i

The reductions an architecture declares (`Adapter.reductions()`: identical experts, equal heads, equal
cores -> LoRA; CoMoL -> MoELoRA) are checked by `declared.py`, with their unprepared twins; the twin
that drops CoMoL's cores is here. Each reduction is checked on Δ and, where both route, g
(`outcomes.reduction_outcome`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from hypothesis import strategies as st

from moelora_core import reductions as R
from moelora_core.adapter import Adapter
from moelora_core.comol import CoMoL, CoMoLConfig
from moelora_core.moelora import MoELoRA

from ..checking import Claim, Outcome, claim_with_twin, exact
from ..outcomes import reduction_outcome
from ..strategies import (
    Case,
    build_as,
    cases,
    comol_configs,
    configs_where,
    hydralora_configs,
    moelora_configs,
    talklora_configs,
)

Embed = Callable[[Any], Adapter]


def _reduce(prepare: Callable[[Adapter], None], embed: Embed) -> Callable[[Case[Any]], Outcome]:
    def case(c: Case[Any]) -> Outcome:
        a = c.build()
        with torch.no_grad():
            prepare(a)
        return reduction_outcome(a, embed(a), c.inputs())

    return case


def _nothing(_: Adapter) -> None:
    return None


@torch.no_grad()
def _comol_to_moelora_forget_cores(c: CoMoL) -> MoELoRA:
    """Mutated twin: B_i = B (the cores M_i dropped)."""
    mo = R.comol_to_moelora(c)
    mo.B.weight.copy_(c.B.weight.repeat(1, c.config.num_cores))
    return mo


def _delta_weight_case(uniform: bool = False) -> Callable[[Case[Any]], Outcome]:
    """ΔW(x) x = Δ(x): the expert-matrix view agrees with the vectorised forward."""

    def case(c: Case[Any]) -> Outcome:
        a = c.build()
        x = c.inputs()  # (..., n)
        if uniform:  # twin: replace g by uniform weights
            P = a.expert_matrices()  # (E, m, n)
            W = P.mean(0).expand(*x.shape[:-1], *P.shape[1:])
        else:
            W = a.delta_weight(x)  # (..., m, n)
        return exact((a(x), torch.einsum("...mn,...n->...m", W, x)))

    return case


def _comol_order_case(c: Case[CoMoLConfig]) -> Outcome:
    a = build_as(CoMoL, c.config, c.seed)
    x = c.inputs()
    return exact((a.forward_materialised(x), a(x)))


REDUCTION_CLAIMS: list[Claim[Any]] = [
    Claim(
        "moelora_E1_is_lora",
        "MoELoRA with E = 1 is LoRA (A_1, B_1)",
        cases(moelora_configs(num_experts=1)),
        _reduce(_nothing, R.moelora_to_lora),
        spec="SPEC claim 4",
    ),
    Claim(
        "comol_N1_is_lora",
        "CoMoL with N = 1 is LoRA (B' = B M_1)",
        cases(comol_configs(num_cores=1)),
        _reduce(_nothing, R.comol_to_lora),
        spec="SPEC claim 4",
    ),
    Claim(
        "comol_is_moelora__forget_cores",
        "twin: B_i = B",
        cases(comol_configs()),
        _reduce(_nothing, _comol_to_moelora_forget_cores),
        "refuted",
        "comol_is_moelora",  # declared by CoMoL (declared.py)
        spec="SPEC claim 4",
    ),
    Claim(
        "comol_merge_order",
        "Σ_i g_i (M_i A x) equals the reference's materialised (Σ_i g_i M_i) A x",
        cases(comol_configs()),
        _comol_order_case,
        spec="SPEC CoMoL",
    ),
    *claim_with_twin(
        "delta_weight_consistent",
        "ΔW(x) x = Δ(x) with ΔW(x) = Σ_i g_i(x) P_i, every architecture with fixed expert maps "
        "(linear_experts)",
        cases(configs_where(lambda cls: cls.linear_experts)),
        _delta_weight_case(),
        twin="uniform_g: ΔW with uniform routing weights",
        twin_case=_delta_weight_case(uniform=True),
        twin_strategy=cases(
            st.one_of(moelora_configs(), comol_configs(), talklora_configs(), hydralora_configs())
        ),
        spec="core",
    ),
]
