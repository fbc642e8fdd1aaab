"""SPEC claims 1 and 2: TalkLoRA against MoELoRA (identity talking, absorption, nesting, the witness).

Each claim is a `Claim` over drawn instances and, beside it, a mutated twin (a wrong embedding, a
dropped factor) that must be refuted. Claims marked `expect="refuted"` without `twin_of` are statements
as published that the computation refutes (documented in docs/theory.md). The other SPEC claims are in
`formulas.py` (claim 3) and `reductions.py` (claim 4); `catalogue.all_claims()` gathers every catalogue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from hypothesis import strategies as st

from moelora_core import reductions as R
from moelora_core.adapter import Adapter
from moelora_core.moelora import MoELoRA
from moelora_core.talklora import TalkLoRA, TalkLoRAConfig

from ..checking import Claim, Outcome, claim_with_twin, exact
from ..function_class import dependence_rank
from ..outcomes import reduction_outcome
from ..strategies import DTYPE, Case, build_random, cases, moelora_configs, seeds, talklora_configs

Embed = Callable[[Any], Adapter]

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


def identity_talk_case(
    embed: Embed, identity_K: bool = False
) -> Callable[[Case[TalkLoRAConfig]], Outcome]:
    """Claim 1's check: with T = I, `embed(t)` has t's Δ and g, and W_r unchanged."""

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
    mo.router.logits.dense().copy_(t.router.logits.dense())  # type: ignore[union-attr]
    return mo


@torch.no_grad()
def _talk_to_input_moelora_ignore_T(t: TalkLoRA) -> MoELoRA:
    """Mutated twin: W_g = W_r A (the talking module dropped)."""
    mo = R.talklora_to_input_moelora(t)
    mo.router.logits.dense().copy_(t.router.logits.dense() @ t.A.weight)  # type: ignore[union-attr]
    return mo


@torch.no_grad()
def _moelora_to_talk_random_T(mo: MoELoRA) -> TalkLoRA:
    """Mutated twin: put a random T into the embedded TalkLoRA and fold in (T ⊗ I)ᵀ instead of its inverse."""
    t = R.moelora_to_talklora(mo)
    gen = torch.Generator().manual_seed(7)
    T = torch.randn(t.num_experts, t.num_experts, generator=gen, dtype=DTYPE)
    t.T.weight.copy_(T)
    t.router.logits.dense().copy_(mo.router.logits.dense() @ t.talk.dense().T)  # type: ignore[union-attr]
    return t


def _any_talk(embed: Embed) -> Callable[[Case[TalkLoRAConfig]], Outcome]:
    def case(c: Case[TalkLoRAConfig]) -> Outcome:
        t = _talk(c)
        return reduction_outcome(t, embed(t), c.inputs())

    return case


def _embedded(embed: Embed) -> Callable[[Case[Any]], Outcome]:
    """Every drawn instance equals its embedding (no precondition to prepare)."""

    def case(c: Case[Any]) -> Outcome:
        a = c.build()
        return reduction_outcome(a, embed(a), c.inputs())

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


def _talk_for_witness(n: int, m: int, E: int, r_e: int, seed: int) -> Adapter:
    return build_random(
        TalkLoRAConfig(in_features=n, out_features=m, rank=E * r_e, num_experts=E), seed
    )


def _input_witness(n: int, m: int, E: int, r_e: int, seed: int) -> Adapter:
    return R.input_router_witness(n, m, E, r_e, seed)


TALK_CLAIMS: list[Claim[Any]] = [
    # --- claim 1
    *claim_with_twin(
        "talk_identity_is_moelora",
        "TalkLoRA with T = I equals the latent-router MoELoRA with A_i = A_(i), "
        "B_i' = B_i K_i and W_r unchanged (outputs and routing weights)",
        cases(talklora_configs()),
        identity_talk_case(R.talklora_to_moelora),
        twin="drop_K: the same embedding without K (B_i' = B_i)",
        twin_case=identity_talk_case(_talk_to_moelora_forget_K),
        spec="SPEC claim 1",
    ),
    Claim(
        "talk_identity_as_stated",
        "SPEC claim 1 as stated: A_i = K_i A_(i), same B_i, W_r unchanged "
        "(false: the MoELoRA router then reads K A x, TalkLoRA's reads A x)",
        cases(talklora_configs()),
        identity_talk_case(R.talklora_to_moelora_as_stated),
        "refuted",
        spec="SPEC claim 1 (as stated)",
    ),
    Claim(
        "talk_identity_as_stated_K_identity",
        "SPEC claim 1 as stated holds when every K_i = I",
        cases(talklora_configs()),
        identity_talk_case(R.talklora_to_moelora_as_stated, identity_K=True),
        spec="SPEC claim 1 (as stated, K = I)",
    ),
    # --- claim 2
    *claim_with_twin(
        "talk_absorption",
        "for any T, TalkLoRA equals the latent-router MoELoRA with W_r' = W_r (T ⊗ I)",
        cases(talklora_configs()),
        _any_talk(R.talklora_to_moelora),
        twin="ignore_T: W_r' = W_r for T != I",
        twin_case=_any_talk(_talk_to_moelora_ignore_T),
        spec="SPEC claim 2",
    ),
    *claim_with_twin(
        "latent_moelora_is_talk",
        "every latent-router MoELoRA is a TalkLoRA (A = [A_1; ...; A_E], K_i = I, T = I): with "
        "talk_absorption, the two function classes are equal at equal total rank",
        cases(moelora_configs(router="latent")),
        _embedded(R.moelora_to_talklora),
        twin="transposed_T: the embedding with W_r' = W_r (T ⊗ I)^T for a non-symmetric T drawn "
        "into the TalkLoRA",
        twin_case=_embedded(_moelora_to_talk_random_T),
        twin_strategy=cases(moelora_configs(router="latent", num_experts=3)),
        spec="SPEC claim 2",
    ),
    *claim_with_twin(
        "talk_in_input_moelora",
        "every TalkLoRA is an input-router MoELoRA of the same total rank "
        "(W_g = W_r (T ⊗ I) A): the classes are nested",
        cases(talklora_configs()),
        _any_talk(R.talklora_to_input_moelora),
        twin="ignore_T: W_g = W_r A",
        twin_case=_any_talk(_talk_to_input_moelora_ignore_T),
        spec="SPEC claim 2 (nesting)",
    ),
    *claim_with_twin(
        "input_moelora_not_in_talk",
        "an input-router MoELoRA (E >= 2, n > r) reads more than r input "
        "directions, so no TalkLoRA of total rank r equals it (the nesting is strict)",
        witness_shapes,
        _witness_case(_input_witness),
        twin="on_talklora: the witness criterion applied to a TalkLoRA of "
        "rank r (it must fail: TalkLoRA reads only A x)",
        twin_case=_witness_case(_talk_for_witness),
        spec="SPEC claim 2 (witness)",
    ),
]
