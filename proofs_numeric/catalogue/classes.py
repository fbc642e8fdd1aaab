"""Function-class claims of both papers, per layer and at model level, by certified direction counts.

Two certificates (`proofs_numeric.function_class`): the *dependence rank* (input directions a map reads:
rank of its Jacobians stacked over many points) and the *output rank* (dimension of the span of its
outputs). A map that reads x only through `A x` (A: r x n) has dependence rank <= r; a map whose outputs
all lie in col(B) (B: m x r) has output rank <= r. A rank above r, certified by a singular-value gap
`σ_{r+1}/σ_1 > 1e-6` (rounding sits near 1e-16), proves that no map of the smaller class equals it.

CoMoL, "the routing network is projected into the low-rank space without compromising expressiveness":
a core-router CoMoL (g = softmax(W_c A x)) reads at most r input directions; a CoMoL whose router reads
x reads up to r + N − 1 (r from A, N − 1 from the router: softmax ignores a common shift), and more
than r whenever n > r and N >= 2, so the core-router class is strictly smaller there (it is contained:
W_g = W_c A). With n <= r both read all n directions and the certificate decides nothing.

CoMoL, "retains the adaptability of MoE-LoRA": every MoE-LoRA with N experts of rank r/N is a CoMoL of
rank r (block-selector cores, `reductions.moelora_to_comol`); every CoMoL is a MoE-LoRA with N experts of
rank r (`comol_is_moelora`), strictly: its outputs lie in col(B), while N >= 2 experts of rank r with
m > r reach more than r output directions.

TalkLoRA at model level, with the reference code's layer-shared B_i: every layer's output lies in the
same col(B) (dim <= r), so a shared-B TalkLoRA model is a per-layer MoELoRA model (each layer embeds,
`talklora_to_moelora`, with its own B_i K_i), strictly: two per-layer MoELoRA layers with different
expert column spaces reach more than r output directions together (m > r).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from hypothesis import strategies as st

from moelora_core import reductions as R
from moelora_core.adapter import Adapter
from moelora_core.comol import CoMoL, CoMoLConfig
from moelora_core.moelora import MoELoRA, MoELoRAConfig
from moelora_core.talklora import TalkLoRA, TalkLoRAConfig

from ..checking import Claim, Outcome, claim_with_twin, exact
from ..function_class import DependenceRank, dependence_rank, output_rank
from ..outcomes import reduction_outcome, verdict
from ..strategies import (
    DTYPE,
    Case,
    build_as,
    build_random,
    cases,
    comol_configs,
    moelora_configs,
    seeds,
)

GAP = 1e-6  # certified: σ_{r+1}/σ_1 above this, rounding near 1e-16


def _certified(d: DependenceRank, r: int) -> bool:
    return d.rank > r and d.gap_after(r) > GAP


def _points(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.randn(k, n, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


# ----- CoMoL: core router vs router on x ---------------------------------------------------------------

# (r, N >= 2, n - r >= 1, m, seed)
comol_shapes = st.tuples(
    st.integers(1, 3), st.integers(2, 4), st.integers(1, 3), st.integers(1, 3), seeds
)


def _comol(n: int, m: int, r: int, N: int, core: bool, seed: int) -> CoMoL:
    cfg = CoMoLConfig(in_features=n, out_features=m, rank=r, num_cores=N, core_router=core)
    return build_as(CoMoL, cfg, seed)


def _router_directions(x_router_reads_at_most_r: bool) -> Callable[[tuple[int, ...]], Outcome]:
    def case(args: tuple[int, ...]) -> Outcome:
        r, N, extra, extra_m, seed = args
        n, m = r + extra, r + extra_m
        pts = _points(n, 2 * (r + N) + 4, seed)
        core = dependence_rank(_comol(n, m, r, N, True, seed), pts)
        onx = dependence_rank(_comol(n, m, r, N, False, seed), pts)
        detail = (
            f"n={n}, r={r}, N={N}: core router reads {core.rank}, router on x reads {onx.rank} "
            f"(bound r+N-1={r + N - 1}); σ_(r+1)/σ_1 on x {onx.gap_after(r):.2e}"
        )
        if x_router_reads_at_most_r:  # twin: the projection loses nothing, both read <= r
            return verdict(onx.rank <= r, detail)
        ok = core.rank <= r and _certified(onx, r) and onx.rank <= r + N - 1
        return verdict(ok, detail)

    return case


def _core_in_x_router(drop_A: bool) -> Callable[[Case[CoMoLConfig]], Outcome]:
    """A core-router CoMoL is a router-on-x CoMoL with W_g = W_c A (twin: W_g = W_c's columns padded)."""

    def case(c: Case[CoMoLConfig]) -> Outcome:
        cfg = c.config
        src = build_as(CoMoL, cfg, c.seed)
        tgt_cfg = CoMoLConfig(
            in_features=cfg.in_features,
            out_features=cfg.out_features,
            rank=cfg.rank,
            num_cores=cfg.num_cores,
            core_router=False,
            top_k=cfg.top_k,
            scale=cfg.scale,
        )
        tgt = CoMoL(tgt_cfg, dtype=DTYPE)
        with torch.no_grad():
            tgt.load_state_dict(
                {k: v for k, v in src.state_dict().items() if "router" not in k}, strict=False
            )
            W_c = src.router.logits.dense()
            W_g = tgt.router.logits.dense()
            if drop_A:
                W_g.zero_()
                k = min(W_c.shape[1], W_g.shape[1])
                W_g[:, :k].copy_(W_c[:, :k])
            else:
                W_g.copy_(W_c @ src.A.weight)
        x = c.inputs()
        return reduction_outcome(src, tgt, x)

    return case


# ----- CoMoL vs MoE-LoRA --------------------------------------------------------------------------------


def _moelora_in_comol_identity_cores(c: Case[MoELoRAConfig]) -> Outcome:
    """The twin of `moelora_in_comol` (declared by MoELoRA, checked in declared.py): the block-selector
    embedding with every core M_i = I (the experts' blocks are not selected)."""
    mo = build_as(MoELoRA, c.config, c.seed)
    co = R.moelora_to_comol(mo)
    with torch.no_grad():
        co.cores.copy_(torch.eye(co.config.rank, dtype=DTYPE).expand_as(co.cores))
    x = c.inputs()
    return reduction_outcome(mo, co, x)


# (r, N >= 2, m - r >= 1, n, seed)
rank_r_shapes = st.tuples(
    st.integers(1, 3), st.integers(2, 3), st.integers(1, 3), st.integers(1, 4), seeds
)


def _rank_r_outputs(on_comol: bool) -> Callable[[tuple[int, ...]], Outcome]:
    """Outputs of N experts of rank r span > r directions (m > r); a CoMoL's stay in col(B)."""

    def case(args: tuple[int, ...]) -> Outcome:
        r, N, extra, extra_n, seed = args
        m, n = r + extra, r + extra_n
        a: Adapter
        if on_comol:
            a = _comol(n, m, r, N, False, seed)
        else:
            cfg = MoELoRAConfig(in_features=n, out_features=m, num_experts=N, expert_rank=r)
            a = build_random(cfg, seed)
        with torch.no_grad():
            d = output_rank(a(_points(n, 2 * N * r + 4, seed)))
        detail = (
            f"n={n}, m={m}, r={r}, N={N}: output rank {d.rank}, σ_(r+1)/σ_1 {d.gap_after(r):.2e}"
        )
        return verdict(_certified(d, r), detail)

    return case


# ----- TalkLoRA with layer-shared B vs per-layer MoELoRA, model level ------------------------------------


def _shared_talk_model(cfg: TalkLoRAConfig, layers: int, seed: int) -> list[TalkLoRA]:
    shared = TalkLoRAConfig(
        in_features=cfg.in_features,
        out_features=cfg.out_features,
        rank=cfg.rank,
        num_experts=cfg.num_experts,
        top_k=cfg.top_k,
        scale=cfg.scale,
        share_b=True,
    )
    b = TalkLoRA.shared_b(shared, dtype=DTYPE)
    model = [TalkLoRA(shared, b=b, dtype=DTYPE) for _ in range(layers)]
    for i, t in enumerate(model):  # each randomize_ redraws the shared B too: the last one stays
        t.randomize_(seed + 7919 * i)
    return model


talk_models = st.tuples(
    cases(
        st.builds(
            lambda E, d, n, m, k: TalkLoRAConfig(
                in_features=n, out_features=m, rank=E * d, num_experts=E, top_k=k
            ),
            st.integers(1, 3),
            st.integers(1, 2),
            st.integers(1, 6),
            st.integers(1, 6),
            st.none(),
        )
    ),
    st.integers(2, 3),
)


def _talk_model_embeds(
    share_in_moelora: bool,
) -> Callable[[tuple[Case[TalkLoRAConfig], int]], Outcome]:
    """Every layer of a shared-B TalkLoRA model equals its per-layer MoELoRA (B_i' = B_i K_i^(l));
    twin: the MoELoRA model shares B too (layer 0's B_i K_i^(0) for every layer)."""

    def case(args: tuple[Case[TalkLoRAConfig], int]) -> Outcome:
        c, L = args
        model = _shared_talk_model(c.config, L, c.seed)
        embedded = [R.talklora_to_moelora(t) for t in model]
        if share_in_moelora:
            with torch.no_grad():
                for mo in embedded[1:]:
                    mo.B.weight.copy_(embedded[0].B.weight)
        x = c.inputs()
        pairs: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []
        for t, mo in zip(model, embedded, strict=True):
            pairs += [(t(x), mo(x)), (t.routing(x), mo.routing(x))]
        return exact(*pairs)

    return case


# (E, r_e, m - r >= 1, n, seed)
model_shapes = st.tuples(
    st.integers(1, 3), st.integers(1, 2), st.integers(1, 3), st.integers(1, 4), seeds
)


def _model_outputs(on_shared_talk: bool) -> Callable[[tuple[int, ...]], Outcome]:
    """Outputs of two layers, stacked: > r directions for per-layer MoELoRA (m > r), <= r for a
    shared-B TalkLoRA model (the twin)."""

    def case(args: tuple[int, ...]) -> Outcome:
        E, r_e, extra, extra_n, seed = args
        r = E * r_e
        m, n = r + extra, r + extra_n
        layers: list[Adapter]
        if on_shared_talk:
            cfg = TalkLoRAConfig(in_features=n, out_features=m, rank=r, num_experts=E)
            layers = list(_shared_talk_model(cfg, 2, seed))
        else:
            mcfg = MoELoRAConfig(
                in_features=n, out_features=m, num_experts=E, expert_rank=r_e, router="latent"
            )
            layers = [build_random(mcfg, seed + 7919 * i) for i in range(2)]
        pts = _points(n, 2 * r + 4, seed)
        with torch.no_grad():
            d = output_rank(torch.cat([layer(pts) for layer in layers]))
        detail = f"E={E}, r={r}, m={m}, n={n}: output rank of 2 layers {d.rank}, σ_(r+1)/σ_1 {d.gap_after(r):.2e}"
        return verdict(_certified(d, r), detail)

    return case


CLASS_CLAIMS: list[Claim[Any]] = [
    *claim_with_twin(
        "comol_router_directions",
        "a core-router CoMoL reads <= r input directions; with n > r, m >= r and N >= 2 a router-on-x "
        "CoMoL reads more than r (certified) and at most r + N - 1: strict containment there",
        comol_shapes,
        _router_directions(False),
        twin="x_reads_r: the router-on-x CoMoL also reads <= r input directions",
        twin_case=_router_directions(True),
        spec="CoMoL abstract: router projected without compromising expressiveness",
    ),
    *claim_with_twin(
        "comol_core_in_x_router",
        "every core-router CoMoL is a router-on-x CoMoL with W_g = W_c A (the containment)",
        cases(comol_configs(core_router=True)),
        _core_in_x_router(False),
        twin="drop_A: W_g = W_c padded with zeros (A dropped)",
        twin_case=_core_in_x_router(True),
        spec="CoMoL abstract: router projected without compromising expressiveness",
    ),
    Claim(
        "moelora_in_comol__identity_cores",
        "twin: the same embedding with every core M_i = I",
        cases(moelora_configs(num_experts=2)),
        _moelora_in_comol_identity_cores,
        "refuted",
        "moelora_in_comol",  # declared by MoELoRA (declared.py)
        spec="CoMoL abstract: retains the adaptability of MoE-LoRA",
    ),
    *claim_with_twin(
        "moelora_rank_r_not_in_comol",
        "N >= 2 input-router experts of rank r with m > r, n >= r reach more than r output directions "
        "(certified), so no CoMoL of rank r equals them: CoMoL is strictly inside MoE-LoRA(rank r)",
        rank_r_shapes,
        _rank_r_outputs(False),
        twin="on_comol: the criterion applied to a CoMoL of rank r (its outputs stay in col(B))",
        twin_case=_rank_r_outputs(True),
        spec="CoMoL abstract: retains the adaptability of MoE-LoRA",
    ),
    *claim_with_twin(
        "talk_shared_b_model_in_moelora",
        "a model of L layers of TalkLoRA sharing B_i equals, layer by layer, a model of per-layer "
        "latent MoELoRAs (B_i' = B_i K_i^(l))",
        talk_models,
        _talk_model_embeds(False),
        twin="shared: the per-layer MoELoRA model shares B too (layer 0's B_i K_i for every layer)",
        twin_case=_talk_model_embeds(True),
        spec="TalkLoRA abstract: strictly generalizes MoELoRA (model level)",
    ),
    *claim_with_twin(
        "moelora_model_not_in_shared_talk",
        "two per-layer MoELoRA layers (m > r, n >= r) reach more than r output directions together "
        "(certified); a shared-B TalkLoRA model reaches <= r: at model level TalkLoRA is strictly inside",
        model_shapes,
        _model_outputs(False),
        twin="on_talk: the criterion applied to a shared-B TalkLoRA model",
        twin_case=_model_outputs(True),
        spec="TalkLoRA abstract: strictly generalizes MoELoRA (model level)",
    ),
]
