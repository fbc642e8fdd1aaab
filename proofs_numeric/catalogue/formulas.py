"""SPEC claim 3 and the core's formulas: parameter counts, MACs per token, the closed-form Jacobian.

    counted trainable parameters  = param_formula()                        (every architecture)
    L layers sharing a part       = L · param_formula() + shared part once
    counted MACs per token        = macs_formula()                         (torch's FLOP counter / 2)
    J(x) = Σ_i g_i P_i + Σ_i (P_i x) ∇g_i(x)ᵀ                              (autograd's Jacobian)

Each beside a mutated twin (a formula missing a term, the router term dropped) that must be refuted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import sympy as sp
import torch
from hypothesis import strategies as st

from moelora_core import symbols as S
from moelora_core.adapter import Adapter
from moelora_core.comol import CoMoL, CoMoLConfig
from moelora_core.talklora import TalkLoRA, TalkLoRAConfig

from ..checking import Claim, Outcome, claim_with_twin, exact
from ..complexity import counted_macs_per_token, macs_formula, same_theta
from ..function_class import analytic_jacobian, autograd_jacobian
from ..outcomes import macs_outcome, param_count_outcome, symbolic
from ..strategies import (
    DTYPE,
    Case,
    any_config,
    cases,
    comol_configs,
    moelora_configs,
    talklora_configs,
)


def _jacobian_case(drop_router_term: bool = False) -> Callable[[Case[Any]], Outcome]:
    """The closed-form Jacobian equals autograd's (soft routing).

    Runs 100 cases, not 200: autograd Jacobians through vmap(jacrev) cost ~20 ms a case and each case
    compares 3 to 4 points (300-400 Jacobians in all); it checks a formula the certificates use, and
    every architecture is drawn about 20 times."""

    def case(c: Case[Any]) -> Outcome:
        a = c.build()
        x = c.inputs().reshape(-1, a.in_features)  # (k, n)
        J = analytic_jacobian(a, x)  # (k, m, n)
        if drop_router_term:  # twin: forget that g depends on x
            g = a.routing(x)
            J = torch.einsum("ke,emn->kmn", g, a.expert_matrices()) if g is not None else J
        return exact((autograd_jacobian(a, x), J))

    return case


def _count_case(c: Case[Any]) -> Outcome:
    return param_count_outcome(c.build())


def _count_case_missing_core_term(c: Case[CoMoLConfig]) -> Outcome:
    a = c.build()
    wrong = (a.param_formula() - S.N * S.r**2).subs(a.param_subs())
    return Outcome(float(abs(a.num_trainable_params() - int(wrong))), 0.0, "formula without N·r²")


def _shared_model_case(args: tuple[Any, int]) -> Outcome:
    """L layers of one module type sharing B (TalkLoRA) or A, B (CoMoL): unique params = formula."""
    cfg, L = args
    layers: list[Adapter]
    # the shared part, from the modules' own formulas: unshared layer minus shared layer
    if isinstance(cfg, TalkLoRAConfig):
        b = TalkLoRA.shared_b(cfg, dtype=DTYPE)
        layers = [TalkLoRA(cfg, b=b, dtype=DTYPE) for _ in range(L)]
        unshared: Adapter = TalkLoRA(dataclasses.replace(cfg, share_b=False), device="meta")
    else:
        ab = CoMoL.shared_ab(cfg, dtype=DTYPE)
        layers = [CoMoL(cfg, ab=ab, dtype=DTYPE) for _ in range(L)]
        unshared = CoMoL(dataclasses.replace(cfg, share_ab=False), device="meta")
    shared_part = unshared.param_formula() - layers[0].param_formula()
    formula = S.L * layers[0].param_formula() + shared_part
    unique = sum(p.numel() for p in torch.nn.ModuleList(layers).parameters())
    expected = int(formula.subs({**layers[0].param_subs(), S.L: L}))
    return Outcome(
        float(abs(unique - expected)), 0.0, f"unique params {unique}, formula {expected}"
    )


shared_models = st.tuples(
    st.one_of(
        talklora_configs().map(
            lambda c: TalkLoRAConfig(
                in_features=c.in_features,
                out_features=c.out_features,
                rank=c.rank,
                num_experts=c.num_experts,
                share_b=True,
            )
        ),
        comol_configs().map(
            lambda c: CoMoLConfig(
                in_features=c.in_features,
                out_features=c.out_features,
                rank=c.rank,
                num_cores=c.num_cores,
                core_router=c.core_router,
                share_ab=True,
            )
        ),
    ),
    st.integers(1, 4),
)


def _macs_case(wrong_term: sp.Expr | None = None) -> Callable[[Case[Any]], Outcome]:
    """Counted matmul multiply–adds per token = macs_formula (sizes >= 2: torch lowers a size-1
    contraction to an elementwise product, which no FLOP counter sees)."""

    def case(c: Case[Any]) -> Outcome:
        a = c.build()
        return macs_outcome(a, macs_formula(a) - (wrong_term or 0), counted_macs_per_token(a))

    return case


def _macs_theta() -> tuple[bool, str]:
    a = CoMoL(CoMoLConfig(in_features=2, out_features=2, rank=1, num_cores=1))
    f = macs_formula(a)
    ok = same_theta(f, S.r * (S.n + S.m) + S.N * S.r + S.N * S.r**2, [S.n, S.m, S.r, S.N])
    return ok, f"CoMoL MACs/token {f}"


FORMULA_CLAIMS: list[Claim[Any]] = [
    *claim_with_twin(
        "jacobian_closed_form",
        "J(x) = Σ_i g_i P_i + Σ_i (P_i x) ∇g_i(x)ᵀ equals autograd's Jacobian (soft routers); the "
        "witness certificate and the bounds use this form",
        cases(any_config(top_k=False)),
        _jacobian_case(),
        twin="no_router_term: J(x) = Σ_i g_i(x) P_i (routing treated as constant)",
        twin_case=_jacobian_case(drop_router_term=True),
        twin_strategy=cases(st.one_of(moelora_configs(top_k=False), comol_configs(top_k=False))),
        spec="core",
        # 100, not 200: autograd Jacobians through vmap(jacrev) cost ~20 ms a case, and each case
        # already compares 3 to 4 points; this is a consistency check of a formula, not a SPEC claim.
        max_examples=100,
    ),
    *claim_with_twin(
        "params_formula_all",
        "counted trainable parameters = the parameter formula, every architecture",
        cases(any_config()),
        _count_case,
        twin="missing_core_term: CoMoL formula without N·r²",
        twin_case=_count_case_missing_core_term,
        twin_strategy=cases(comol_configs()),
        twin_name="params_formula_comol__missing_core_term",
        spec="SPEC claim 3",
    ),
    Claim(
        "params_layer_shared",
        "L layers sharing B (TalkLoRA) or A, B (CoMoL): unique parameters = "
        "L·per-layer + the shared part once",
        shared_models,
        _shared_model_case,
        spec="SPEC claim 3",
    ),
    *claim_with_twin(
        "macs_per_token",
        "counted multiply–adds per token of the forward pass = the MAC formula, every architecture "
        "(sizes >= 2)",
        cases(any_config(lo=2)),
        _macs_case(),
        twin="comol_missing_cores: CoMoL MACs without N·r²",
        twin_case=_macs_case(S.N * S.r**2),
        twin_strategy=cases(comol_configs(lo=2)),
        spec="SPEC claim 3",
    ),
    Claim(
        "comol_macs_theta",
        "CoMoL MACs/token are Θ(r(n+m) + N·r + N·r²)",
        st.just(0),
        symbolic(_macs_theta),
        spec="SPEC claim 3",
        max_examples=1,
    ),
]
