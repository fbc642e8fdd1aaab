"""SPEC claim 3 and the core's formulas: parameter counts, MACs per token, the closed-form Jacobian.

    counted trainable parameters  = param_formula()                        (every architecture)
    L layers sharing a part       = L · param_formula() + shared part once
    counted MACs per token        = macs_formula()                         (torch's FLOP counter / 2)
    J(x) = Σ_i g_i P_i + Σ_i (P_i x) ∇g_i(x)ᵀ                              (autograd's Jacobian)

Each beside a mutated twin (a formula missing a term, the router term dropped) that must be refuted.
"""

from __future__ import annotations

from collections.abc import Callable
from inspect import signature
from typing import Any

import sympy as sp
import torch
from hypothesis import reject
from hypothesis import strategies as st

from moelora_core import symbols as S
from moelora_core.adapter import Adapter
from moelora_core.comol import CoMoL, CoMoLConfig
from moelora_core.errors import ConfigError
from moelora_core.registry import ARCHITECTURES, architecture_of

from ..checking import Claim, Outcome, claim_with_twin, exact
from ..complexity import same_theta
from ..function_class import analytic_jacobian, autograd_jacobian
from ..outcomes import counted_macs_outcome, param_count_outcome, shared_layers_outcome, symbolic
from ..specs import LayerSpec, config_for
from ..strategies import (
    CONFIG_STRATEGIES,
    Case,
    any_config,
    cases,
    comol_configs,
    configs_where,
    moelora_configs,
    scales,
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


def _softmax_and_linear(cls: type[Adapter]) -> bool:
    """Fixed expert maps and a softmax gate (or none): ∇g = (diag g − g gᵀ) W_eff is the softmax's
    Jacobian, so the other gates (threshold, mask) and non-linear Δ are left out by declaration."""
    return cls.linear_experts and cls.routing_kind in ("none", "softmax")


def _count_case(c: Case[Any]) -> Outcome:
    return param_count_outcome(c.build())


def _count_case_missing_core_term(c: Case[CoMoLConfig]) -> Outcome:
    a = c.build()
    wrong = (a.param_formula() - S.N * S.r**2).subs(a.subs())
    return Outcome(float(abs(a.num_trainable_params() - int(wrong))), 0.0, "formula without N·r²")


def _shared_model_case(args: tuple[Any, int]) -> Outcome:
    """L layers of one module type sharing the part `make_shared` builds: unique params = formula."""
    cfg, L = args
    return shared_layers_outcome(cfg, L)


def _has_shared_part(config: Any) -> bool:
    return architecture_of(config).make_shared(config, device="meta") is not None


def shared_models() -> st.SearchStrategy[tuple[Any, int]]:
    """(config with a shared part, L) over every family whose strategy draws sharing flags."""
    sharing = [s for s in CONFIG_STRATEGIES.values() if "shared" in signature(s).parameters]
    configs = st.one_of(*(s(shared=True) for s in sharing)).filter(_has_shared_part)
    return st.tuples(configs, st.integers(1, 4))


def _macs_case(wrong_term: sp.Expr | None = None) -> Callable[[Case[Any]], Outcome]:
    """Counted matmul multiply–adds per token = macs_formula (sizes >= 2: torch lowers a size-1
    contraction to an elementwise product, which no FLOP counter sees)."""

    def case(c: Case[Any]) -> Outcome:
        a = c.build()
        return counted_macs_outcome(a, a.macs_formula() - (wrong_term or 0))

    return case


def _top_k(config: Any) -> bool:
    return getattr(config, "top_k", None) is not None


@st.composite
def _many_experts(draw: st.DrawFn) -> Any:
    """A config of any registered family with 24-40 experts of rank 2 and k <= 2, from a generic spec:
    where `sparse.gather_wins` (E·r_e > k·(32 + 4 r_e)), so the gathered down-projection runs."""
    E, k = draw(st.integers(24, 40)), draw(st.integers(1, 2))
    spec = LayerSpec(
        rank=2 * E, experts=E, expert_rank=2, top_k=k, scale=draw(scales),
        router=draw(st.sampled_from(["input", "latent"])), core_router=draw(st.booleans()),
    )  # fmt: skip
    family = draw(st.sampled_from(sorted(ARCHITECTURES)))
    try:
        return config_for(family, spec, in_features=draw(st.integers(2, 6)), out_features=3)
    except ConfigError:
        reject()


def _sparse_macs_case(dense_formula: bool = False) -> Callable[[Case[Any]], Outcome]:
    """Counted multiply–adds per token of the sparse top-k path (`sparse_mode("sparse")`, its weighted
    embedding_bag and row-dot kernels included) = sparse_macs_formula, on the usual tiny configs and on
    configs with 24-40 experts (`_many_experts`), where the gathered down-projection runs."""

    def case(c: Case[Any]) -> Outcome:
        a = c.build()
        k = getattr(getattr(a, "router", None), "top_k", None)
        sparse = a.sparse_macs_formula()
        if sparse is None or k is None or k >= a.num_experts:
            reject()  # no sparse path here (k = E runs dense): Hypothesis draws another instance
        formula = a.macs_formula() if dense_formula else sparse
        return counted_macs_outcome(a, formula, sparse=True)

    return case


def _macs_theta() -> tuple[bool, str]:
    a = CoMoL(CoMoLConfig(in_features=2, out_features=2, rank=1, num_cores=1))
    f = a.macs_formula()
    ok = same_theta(f, S.r * (S.n + S.m) + S.N * S.r + S.N * S.r**2, [S.n, S.m, S.r, S.N])
    return ok, f"CoMoL MACs/token {f}"


FORMULA_CLAIMS: list[Claim[Any]] = [
    *claim_with_twin(
        "jacobian_closed_form",
        "J(x) = Σ_i g_i P_i + Σ_i (P_i x) ∇g_i(x)ᵀ equals autograd's Jacobian (soft routers); the "
        "witness certificate and the bounds use this form",
        cases(configs_where(_softmax_and_linear, top_k=False)),
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
        "L layers of one module type sharing a part (TalkLoRA's B, CoMoL's A and B; every "
        "architecture that shares one): unique parameters = L·param_formula + shared_param_formula",
        shared_models(),
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
    *claim_with_twin(
        "sparse_macs_per_token",
        "counted multiply–adds per token of the sparse top-k path = the sparse MAC formula, every "
        "architecture with one (k < E, sizes >= 2)",
        cases(st.one_of(any_config(lo=2).filter(_top_k), _many_experts())),
        _sparse_macs_case(),
        twin="dense_formula: the sparse path counted against the dense MAC formula",
        twin_case=_sparse_macs_case(dense_formula=True),
        spec="core",
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
