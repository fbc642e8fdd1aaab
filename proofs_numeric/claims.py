"""The catalogue of claims checked by `pytest -m theorems` and `python -m proofs_numeric`.

SPEC claims 1–4, each as a `Claim` over drawn instances, and beside each a mutated twin (wrong
embedding, formula missing a term, wrong complexity class) that must be refuted. Claims marked
`expect="refuted"` without `twin_of` are statements as published that the computation refutes
(documented in docs/theory.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import sympy as sp
import torch
from hypothesis import strategies as st

from moelora_core import reductions as R
from moelora_core import symbols as S
from moelora_core.adapter import Adapter
from moelora_core.comol import CoMoL, CoMoLConfig
from moelora_core.hydralora import HydraLoRA
from moelora_core.moelora import MoELoRA
from moelora_core.talklora import TalkLoRA, TalkLoRAConfig

from .catalogue.bounds import BOUND_CLAIMS
from .checking import EXACT_TOL, Claim, Outcome, exact
from .claims_classes import CLASS_CLAIMS
from .claims_counts import COUNT_CLAIMS
from .claims_theta import THETA_CLAIMS
from .complexity import counted_macs_per_token, macs_formula, same_theta
from .function_class import analytic_jacobian, autograd_jacobian, dependence_rank
from .strategies import (
    DTYPE,
    Case,
    any_config,
    build_random,
    cases,
    comol_configs,
    hydralora_configs,
    moelora_configs,
    seeds,
    talklora_configs,
)

Embed = Callable[[Any], Adapter]


def reduction_outcome(
    source: Adapter, target: Adapter, x: torch.Tensor, tol: float = EXACT_TOL
) -> Outcome:
    """Compare Δ and (where both route) g of `source` and its embedding `target` on inputs x."""
    pairs: list[tuple[torch.Tensor | None, torch.Tensor | None]] = [(source(x), target(x))]
    gs, gt = source.routing(x), target.routing(x)
    if gs is not None and gt is not None:
        pairs.append((gs, gt))
    return exact(*pairs, tol=tol)


# ----- claim 1: TalkLoRA with identity talking is MoELoRA --------------------------------------------


def _talk(
    case: Case[TalkLoRAConfig], identity_T: bool = False, identity_K: bool = False
) -> TalkLoRA:
    t = case.build()
    assert isinstance(t, TalkLoRA)
    with torch.no_grad():
        if identity_T:
            t.T.weight.copy_(torch.eye(t.num_experts, dtype=DTYPE))
        if identity_K:
            t.K.weight.copy_(torch.eye(t.config.head_dim, dtype=DTYPE).expand_as(t.K.weight))
    return t


def _claim1(embed: Embed, identity_K: bool = False) -> Callable[[Case[TalkLoRAConfig]], Outcome]:
    def case(c: Case[TalkLoRAConfig]) -> Outcome:
        t = _talk(c, identity_T=True, identity_K=identity_K)
        mo = embed(t)
        out = reduction_outcome(t, mo, c.inputs())
        # "W_r unchanged" is part of the claim
        w_err = exact((t.router.logits.dense(), mo.router.logits.dense()))  # type: ignore[union-attr]
        return Outcome(
            max(out.error, w_err.error), out.tolerance, out.detail + f"; W_r diff {w_err.error:.2e}"
        )

    return case


@torch.no_grad()
def _talk_to_moelora_forget_K(t: TalkLoRA) -> MoELoRA:
    """Mutated twin: the exact embedding with the K_i dropped (B_i' = B_i)."""
    mo = R.talklora_to_moelora(t)
    mo.B.weight.copy_(t.B.weight)
    return mo


@torch.no_grad()
def _talk_to_moelora_ignore_T(t: TalkLoRA) -> MoELoRA:
    """Mutated twin: absorb nothing (W_r' = W_r) although T != I."""
    mo = R.talklora_to_moelora(t)
    mo.router.logits.dense().copy_(t.router.logits.dense())
    return mo


@torch.no_grad()
def _talk_to_input_moelora_ignore_T(t: TalkLoRA) -> MoELoRA:
    """Mutated twin: W_g = W_r A (the talking module dropped)."""
    mo = R.talklora_to_input_moelora(t)
    mo.router.logits.dense().copy_(t.router.logits.dense() @ t.A.weight)
    return mo


@torch.no_grad()
def _moelora_to_talk_random_T(mo: MoELoRA) -> TalkLoRA:
    """Mutated twin: put a random T into the embedded TalkLoRA and fold in (T ⊗ I)ᵀ instead of its inverse."""
    t = R.moelora_to_talklora(mo)
    gen = torch.Generator().manual_seed(7)
    T = torch.randn(t.num_experts, t.num_experts, generator=gen, dtype=DTYPE)
    t.T.weight.copy_(T)
    t.router.logits.dense().copy_(mo.router.logits.dense() @ t.talk.dense().T)
    return t


def _any_talk(embed: Embed) -> Callable[[Case[TalkLoRAConfig]], Outcome]:
    def case(c: Case[TalkLoRAConfig]) -> Outcome:
        t = _talk(c)
        return reduction_outcome(t, embed(t), c.inputs())

    return case


# ----- claim 2: non-nesting witness ------------------------------------------------------------------

# (E >= 2, r_e, n - r >= 1, m - r_e >= 0, seed)
witness_shapes = st.tuples(
    st.integers(2, 4), st.integers(1, 2), st.integers(1, 4), st.integers(0, 3), seeds
)


def _witness_case(
    adapter_of: Callable[[int, int, int, int, int], Adapter],
) -> Callable[[Any], Outcome]:
    """Dependence rank of the built map must exceed r = E·r_e (error 0 if it does, 1 otherwise)."""

    def case(args: tuple[int, int, int, int, int]) -> Outcome:
        E, r_e, extra, extra_m, seed = args
        r = E * r_e
        n, m = r + extra, r_e + extra_m  # n > r, m >= r_e
        a = adapter_of(n, m, E, r_e, seed)
        gen = torch.Generator().manual_seed(seed)
        pts = torch.randn(2 * (r + E) + 4, n, generator=gen, dtype=DTYPE)
        d = dependence_rank(a, pts)
        # certify with a margin: σ_{r+1}/σ_1 must be far above rounding (1e-9)
        ok = d.rank > r and d.gap_after(r) > 1e-6
        return Outcome(
            0.0 if ok else 1.0,
            0.5,
            f"dependence rank {d.rank} vs r={r}; σ_(r+1)/σ_1={d.gap_after(r):.2e}",
        )

    return case


def _jacobian_case(drop_router_term: bool = False) -> Callable[[Case[Any]], Outcome]:
    """The closed-form Jacobian equals autograd's (soft routing).

    Runs 100 cases, not 200: autograd Jacobians through vmap(jacrev) cost ~20 ms a case and each case
    compares 3 to 4 points (300-400 Jacobians in all); it checks a formula the certificates use, and
    every architecture is drawn about 20 times."""

    def case(c: Case[Any]) -> Outcome:
        a = c.build()
        x = c.inputs().reshape(-1, a.in_features)
        J = analytic_jacobian(a, x)
        if drop_router_term:  # twin: forget that g depends on x
            g = a.routing(x)
            J = torch.einsum("ke,emn->kmn", g, a.expert_matrices()) if g is not None else J
        return exact((autograd_jacobian(a, x), J))

    return case


def _talk_for_witness(n: int, m: int, E: int, r_e: int, seed: int) -> Adapter:
    return build_random(
        TalkLoRAConfig(in_features=n, out_features=m, rank=E * r_e, num_experts=E), seed
    )


# ----- claim 3: parameter counts and complexity ------------------------------------------------------


def _count_case(c: Case[Any]) -> Outcome:
    a = c.build()
    counted, formula = a.num_trainable_params(), a.param_formula_value()
    return Outcome(float(abs(counted - formula)), 0.0, f"counted {counted}, formula {formula}")


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


def _symbolic(check: Callable[[], tuple[bool, str]]) -> Callable[[Any], Outcome]:
    def case(_: Any) -> Outcome:
        ok, detail = check()
        return Outcome(0.0 if ok else 1.0, 0.5, detail)

    return case


def _macs_case(wrong_term: sp.Expr | None = None) -> Callable[[Case[Any]], Outcome]:
    """Counted matmul multiply–adds per token = macs_formula (sizes >= 2: torch lowers a size-1
    contraction to an elementwise product, which no FLOP counter sees)."""

    def case(c: Case[Any]) -> Outcome:
        a = c.build()
        formula = macs_formula(a) - (wrong_term or 0)
        subs = {**a.param_subs()}
        if isinstance(a, MoELoRA | HydraLoRA):
            subs.setdefault(S.r_e, a.config.expert_rank)
        expected = int(sp.sympify(formula).subs(subs))
        counted = counted_macs_per_token(a)
        return Outcome(
            float(abs(counted - expected)), 0.0, f"counted {counted} MACs/token, formula {expected}"
        )

    return case


def _macs_theta() -> tuple[bool, str]:
    a = CoMoL(CoMoLConfig(in_features=2, out_features=2, rank=1, num_cores=1))
    f = macs_formula(a)
    ok = same_theta(f, S.r * (S.n + S.m) + S.N * S.r + S.N * S.r**2, [S.n, S.m, S.r, S.N])
    return ok, f"CoMoL MACs/token {f}"


# ----- claim 4: other reductions ---------------------------------------------------------------------


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
        x = c.inputs()
        if uniform:  # twin: replace g by uniform weights
            P = a.expert_matrices()
            W = P.mean(0).expand(*x.shape[:-1], *P.shape[1:])
        else:
            W = a.delta_weight(x)
        return exact((a(x), torch.einsum("...mn,...n->...m", W, x)))

    return case


def _comol_order_case(c: Case[CoMoLConfig]) -> Outcome:
    a = c.build()
    assert isinstance(a, CoMoL)
    x = c.inputs()
    return exact((a.forward_materialised(x), a(x)))


_ONE = st.just(0)

CORE_CLAIMS: list[Claim[Any]] = [
    # --- claim 1
    Claim(
        "talk_identity_is_moelora",
        "TalkLoRA with T = I equals the latent-router MoELoRA with A_i = A_(i), "
        "B_i' = B_i K_i and W_r unchanged (outputs and routing weights)",
        cases(talklora_configs()),
        _claim1(R.talklora_to_moelora),
        spec="SPEC claim 1",
    ),
    Claim(
        "talk_identity_is_moelora__drop_K",
        "twin: the same embedding without K (B_i' = B_i)",
        cases(talklora_configs()),
        _claim1(_talk_to_moelora_forget_K),
        "refuted",
        "talk_identity_is_moelora",
    ),
    Claim(
        "talk_identity_as_stated",
        "SPEC claim 1 as stated: A_i = K_i A_(i), same B_i, W_r unchanged "
        "(false: the MoELoRA router then reads K A x, TalkLoRA's reads A x)",
        cases(talklora_configs()),
        _claim1(R.talklora_to_moelora_as_stated),
        "refuted",
        spec="SPEC claim 1 (as stated)",
    ),
    Claim(
        "talk_identity_as_stated_K_identity",
        "SPEC claim 1 as stated holds when every K_i = I",
        cases(talklora_configs()),
        _claim1(R.talklora_to_moelora_as_stated, identity_K=True),
        spec="SPEC claim 1 (as stated, K = I)",
    ),
    # --- claim 2
    Claim(
        "talk_absorption",
        "for any T, TalkLoRA equals the latent-router MoELoRA with W_r' = W_r (T ⊗ I)",
        cases(talklora_configs()),
        _any_talk(R.talklora_to_moelora),
        spec="SPEC claim 2",
    ),
    Claim(
        "talk_absorption__ignore_T",
        "twin: W_r' = W_r for T != I",
        cases(talklora_configs()),
        _any_talk(_talk_to_moelora_ignore_T),
        "refuted",
        "talk_absorption",
    ),
    Claim(
        "latent_moelora_is_talk",
        "every latent-router MoELoRA is a TalkLoRA (A = [A_1; ...; A_E], K_i = I, T = I): with "
        "talk_absorption, the two function classes are equal at equal total rank",
        cases(moelora_configs(router="latent")),
        _reduce(_nothing, R.moelora_to_talklora),
        spec="SPEC claim 2",
    ),
    Claim(
        "latent_moelora_is_talk__transposed_T",
        "twin: the embedding with W_r' = W_r (T ⊗ I)^T for a non-symmetric T drawn into the TalkLoRA",
        cases(moelora_configs(router="latent", num_experts=3)),
        _reduce(_nothing, _moelora_to_talk_random_T),
        "refuted",
        "latent_moelora_is_talk",
    ),
    Claim(
        "talk_in_input_moelora",
        "every TalkLoRA is an input-router MoELoRA of the same total rank "
        "(W_g = W_r (T ⊗ I) A): the classes are nested",
        cases(talklora_configs()),
        _any_talk(R.talklora_to_input_moelora),
        spec="SPEC claim 2 (nesting)",
    ),
    Claim(
        "talk_in_input_moelora__ignore_T",
        "twin: W_g = W_r A",
        cases(talklora_configs()),
        _any_talk(_talk_to_input_moelora_ignore_T),
        "refuted",
        "talk_in_input_moelora",
    ),
    Claim(
        "input_moelora_not_in_talk",
        "an input-router MoELoRA (E >= 2, n > r) reads more than r input "
        "directions, so no TalkLoRA of total rank r equals it (the nesting is strict)",
        witness_shapes,
        _witness_case(lambda n, m, E, r_e, s: R.input_router_witness(n, m, E, r_e, s)),
        spec="SPEC claim 2 (witness)",
    ),
    Claim(
        "input_moelora_not_in_talk__on_talklora",
        "twin: the witness criterion applied to a TalkLoRA of "
        "rank r (it must fail: TalkLoRA reads only A x)",
        witness_shapes,
        _witness_case(_talk_for_witness),
        "refuted",
        "input_moelora_not_in_talk",
    ),
    # --- claim 3
    Claim(
        "jacobian_closed_form",
        "J(x) = Σ_i g_i P_i + Σ_i (P_i x) ∇g_i(x)ᵀ equals autograd's Jacobian (soft routers); the "
        "witness certificate and the bounds use this form",
        cases(any_config(top_k=False)),
        _jacobian_case(),
        spec="core",
        # 100, not 200: autograd Jacobians through vmap(jacrev) cost ~20 ms a case, and each case
        # already compares 3 to 4 points; this is a consistency check of a formula, not a SPEC claim.
        max_examples=100,
    ),
    Claim(
        "jacobian_closed_form__no_router_term",
        "twin: J(x) = Σ_i g_i(x) P_i (routing treated as constant)",
        cases(st.one_of(moelora_configs(top_k=False), comol_configs(top_k=False))),
        _jacobian_case(drop_router_term=True),
        "refuted",
        "jacobian_closed_form",
    ),
    Claim(
        "params_formula_all",
        "counted trainable parameters = the parameter formula, every architecture",
        cases(any_config()),
        _count_case,
        spec="SPEC claim 3",
    ),
    Claim(
        "params_formula_comol__missing_core_term",
        "twin: CoMoL formula without N·r²",
        cases(comol_configs()),
        _count_case_missing_core_term,
        "refuted",
        "params_formula_all",
    ),
    Claim(
        "params_layer_shared",
        "L layers sharing B (TalkLoRA) or A, B (CoMoL): unique parameters = "
        "L·per-layer + the shared part once",
        shared_models,
        _shared_model_case,
        spec="SPEC claim 3",
    ),
    Claim(
        "macs_per_token",
        "counted multiply–adds per token of the forward pass = the MAC formula, every architecture "
        "(sizes >= 2)",
        cases(any_config(lo=2)),
        _macs_case(),
        spec="SPEC claim 3",
    ),
    Claim(
        "macs_per_token__comol_missing_cores",
        "twin: CoMoL MACs without N·r²",
        cases(comol_configs(lo=2)),
        _macs_case(S.N * S.r**2),
        "refuted",
        "macs_per_token",
    ),
    Claim(
        "comol_macs_theta",
        "CoMoL MACs/token are Θ(r(n+m) + N·r + N·r²)",
        _ONE,
        _symbolic(_macs_theta),
        spec="SPEC claim 3",
        max_examples=1,
    ),
    # --- claim 4
    Claim(
        "moelora_E1_is_lora",
        "MoELoRA with E = 1 is LoRA (A_1, B_1)",
        cases(moelora_configs(num_experts=1)),
        _reduce(_nothing, R.moelora_to_lora),
        spec="SPEC claim 4",
    ),
    Claim(
        "moelora_identical_experts_is_lora",
        "MoELoRA with identical experts is LoRA",
        cases(moelora_configs()),
        _reduce(_identical_experts, R.moelora_to_lora),
        spec="SPEC claim 4",
    ),
    Claim(
        "moelora_distinct_experts_is_lora",
        "twin: MoELoRA with distinct experts is LoRA (A_1, B_1)",
        cases(moelora_configs()),
        _reduce(_nothing, lambda a: R.moelora_to_lora(a, atol=math.inf)),
        "refuted",
        "moelora_identical_experts_is_lora",
    ),
    Claim(
        "hydralora_equal_heads_is_lora",
        "HydraLoRA with equal heads is LoRA",
        cases(hydralora_configs()),
        _reduce(_equal_heads, R.hydralora_to_lora),
        spec="SPEC claim 4",
    ),
    Claim(
        "hydralora_distinct_heads_is_lora",
        "twin: HydraLoRA with distinct heads is LoRA",
        cases(hydralora_configs()),
        _reduce(_nothing, lambda a: R.hydralora_to_lora(a, atol=math.inf)),
        "refuted",
        "hydralora_equal_heads_is_lora",
    ),
    Claim(
        "comol_N1_is_lora",
        "CoMoL with N = 1 is LoRA (B' = B M_1)",
        cases(comol_configs(num_cores=1)),
        _reduce(_nothing, R.comol_to_lora),
        spec="SPEC claim 4",
    ),
    Claim(
        "comol_equal_cores_is_lora",
        "CoMoL with all cores equal is LoRA (B' = B M)",
        cases(comol_configs()),
        _reduce(_equal_cores, R.comol_to_lora),
        spec="SPEC claim 4",
    ),
    Claim(
        "comol_distinct_cores_is_lora",
        "twin: CoMoL with distinct cores is LoRA (B' = B M_1)",
        cases(comol_configs()),
        _reduce(_nothing, lambda a: R.comol_to_lora(a, atol=math.inf)),
        "refuted",
        "comol_equal_cores_is_lora",
    ),
    Claim(
        "comol_is_moelora",
        "CoMoL is a MoELoRA with A_i = A, B_i = B M_i, router W_c (latent) or W_g",
        cases(comol_configs()),
        _reduce(_nothing, R.comol_to_moelora),
        spec="SPEC claim 4",
    ),
    Claim(
        "comol_is_moelora__forget_cores",
        "twin: B_i = B",
        cases(comol_configs()),
        _reduce(_nothing, _comol_to_moelora_forget_cores),
        "refuted",
        "comol_is_moelora",
    ),
    Claim(
        "comol_merge_order",
        "Σ_i g_i (M_i A x) equals the reference's materialised (Σ_i g_i M_i) A x",
        cases(comol_configs()),
        _comol_order_case,
        spec="SPEC CoMoL",
    ),
    Claim(
        "delta_weight_consistent",
        "ΔW(x) x = Δ(x) with ΔW(x) = Σ_i g_i(x) P_i, every architecture",
        cases(any_config()),
        _delta_weight_case(),
        spec="core",
    ),
    Claim(
        "delta_weight_consistent__uniform_g",
        "twin: ΔW with uniform routing weights",
        cases(
            st.one_of(moelora_configs(), comol_configs(), talklora_configs(), hydralora_configs())
        ),
        _delta_weight_case(uniform=True),
        "refuted",
        "delta_weight_consistent",
    ),
    *THETA_CLAIMS,
    *COUNT_CLAIMS,
    *CLASS_CLAIMS,
]


def all_claims() -> list[Claim[Any]]:
    """Every registered claim: the core catalogue and the bound claims."""

    return [*CORE_CLAIMS, *BOUND_CLAIMS]
