"""SPEC claim 4: the exact reductions to LoRA and between the mixtures, and ΔW(x) x = Δ(x).

    MoELoRA (E = 1, or identical experts)  = LoRA (A_1, B_1)
    HydraLoRA with equal heads             = LoRA
    CoMoL (N = 1, or equal cores)          = LoRA (B' = B M_1)
    CoMoL                                  = MoELoRA with A_i = A, B_i = B M_i
    Σ_i g_i (M_i A x)                      = (Σ_i g_i M_i) A x   (CoMoL's merge order)

Each reduction is checked on Δ and, where both route, g (`outcomes.reduction_outcome`), beside a
mutated twin (distinct experts, dropped cores, uniform routing) that must be refuted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from hypothesis import strategies as st

from moelora_core import reductions as R
from moelora_core.adapter import Adapter
from moelora_core.comol import CoMoL, CoMoLConfig
from moelora_core.hydralora import HydraLoRA
from moelora_core.moelora import MoELoRA

from ..checking import Claim, Outcome, claim_with_twin, exact
from ..outcomes import reduction_outcome
from ..strategies import (
    Case,
    any_config,
    cases,
    comol_configs,
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


def _identical_experts(a: Adapter) -> None:
    assert isinstance(a, MoELoRA)
    c = a.config
    A, B = (
        a.A.weight.unflatten(0, (c.num_experts, c.expert_rank)),
        a.B.weight.unflatten(1, (c.num_experts, c.expert_rank)),
    )
    A.copy_(A[:1].expand_as(A))
    B.copy_(B[:, :1].expand_as(B))


def _equal_heads(a: Adapter) -> None:
    assert isinstance(a, HydraLoRA)
    B = a.B.weight.unflatten(1, (a.config.num_experts, a.config.expert_rank))
    B.copy_(B[:, :1].expand_as(B))


def _equal_cores(a: Adapter) -> None:
    assert isinstance(a, CoMoL)
    a.cores.copy_(a.cores[:1].expand_as(a.cores))


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
    a = c.build()
    assert isinstance(a, CoMoL)
    x = c.inputs()
    return exact((a.forward_materialised(x), a(x)))


def _to_lora_without_check(to_lora: Callable[..., Adapter]) -> Embed:
    """The embedding to LoRA with its precondition check switched off (atol = ∞): the twins."""
    return lambda a: to_lora(a, atol=math.inf)


REDUCTION_CLAIMS: list[Claim[Any]] = [
    Claim(
        "moelora_E1_is_lora",
        "MoELoRA with E = 1 is LoRA (A_1, B_1)",
        cases(moelora_configs(num_experts=1)),
        _reduce(_nothing, R.moelora_to_lora),
        spec="SPEC claim 4",
    ),
    *claim_with_twin(
        "moelora_identical_experts_is_lora",
        "MoELoRA with identical experts is LoRA",
        cases(moelora_configs()),
        _reduce(_identical_experts, R.moelora_to_lora),
        twin="distinct_experts: MoELoRA with distinct experts is LoRA (A_1, B_1)",
        twin_case=_reduce(_nothing, _to_lora_without_check(R.moelora_to_lora)),
        twin_name="moelora_distinct_experts_is_lora",
        spec="SPEC claim 4",
    ),
    *claim_with_twin(
        "hydralora_equal_heads_is_lora",
        "HydraLoRA with equal heads is LoRA",
        cases(hydralora_configs()),
        _reduce(_equal_heads, R.hydralora_to_lora),
        twin="distinct_heads: HydraLoRA with distinct heads is LoRA",
        twin_case=_reduce(_nothing, _to_lora_without_check(R.hydralora_to_lora)),
        twin_name="hydralora_distinct_heads_is_lora",
        spec="SPEC claim 4",
    ),
    Claim(
        "comol_N1_is_lora",
        "CoMoL with N = 1 is LoRA (B' = B M_1)",
        cases(comol_configs(num_cores=1)),
        _reduce(_nothing, R.comol_to_lora),
        spec="SPEC claim 4",
    ),
    *claim_with_twin(
        "comol_equal_cores_is_lora",
        "CoMoL with all cores equal is LoRA (B' = B M)",
        cases(comol_configs()),
        _reduce(_equal_cores, R.comol_to_lora),
        twin="distinct_cores: CoMoL with distinct cores is LoRA (B' = B M_1)",
        twin_case=_reduce(_nothing, _to_lora_without_check(R.comol_to_lora)),
        twin_name="comol_distinct_cores_is_lora",
        spec="SPEC claim 4",
    ),
    *claim_with_twin(
        "comol_is_moelora",
        "CoMoL is a MoELoRA with A_i = A, B_i = B M_i, router W_c (latent) or W_g",
        cases(comol_configs()),
        _reduce(_nothing, R.comol_to_moelora),
        twin="forget_cores: B_i = B",
        twin_case=_reduce(_nothing, _comol_to_moelora_forget_cores),
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
        "ΔW(x) x = Δ(x) with ΔW(x) = Σ_i g_i(x) P_i, every architecture",
        cases(any_config()),
        _delta_weight_case(),
        twin="uniform_g: ΔW with uniform routing weights",
        twin_case=_delta_weight_case(uniform=True),
        twin_strategy=cases(
            st.one_of(moelora_configs(), comol_configs(), talklora_configs(), hydralora_configs())
        ),
        spec="core",
    ),
]
