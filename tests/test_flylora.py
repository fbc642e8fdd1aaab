"""FlyLoRA (moelora_core/flylora.py): the frozen sparse A, exactly k components, LoRA at k = r, and the
jump where the selection switches (no Lipschitz constant at k < r), each claim beside its refuted twin."""

from __future__ import annotations

import dataclasses
import itertools
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from claim_helpers import assert_as_declared

from moelora_core.errors import ArgumentTypeError, ConfigError, ReductionError
from moelora_core.flylora import FlyLoRA, FlyLoRAConfig, as_lora, sparse_projection, switch_pair
from moelora_core.lora import LoRA, LoRAConfig
from moelora_core.maps import topk_mask
from proofs_numeric.checking import Outcome, claim_with_twin, exact
from proofs_numeric.complexity import counted_macs_per_token
from proofs_numeric.strategies import DTYPE, Case, build_random, cases, flylora_configs

CFG = FlyLoRAConfig(in_features=6, out_features=5, rank=4, top_k=2, density=0.5, a_seed=7)


def test_a_is_reproducible_sparse_and_a_buffer() -> None:
    a, b = FlyLoRA(CFG, dtype=DTYPE), FlyLoRA(CFG, dtype=DTYPE)
    assert torch.equal(a.A, b.A)  # the same config: bitwise the same A
    assert torch.equal(FlyLoRA(CFG, dtype=torch.float32).A, a.A.float())  # drawn in float64
    other = FlyLoRA(dataclasses.replace(CFG, a_seed=8), dtype=DTYPE)
    assert not torch.equal(other.A, a.A)
    assert ((a.A != 0).sum(-1) == CFG.nnz).all()  # exactly p non-zeros in every row
    assert "A" in a.state_dict() and all(p is not a.A for p in a.parameters())
    assert a.num_trainable_params() == CFG.rank * CFG.out_features
    assert FlyLoRA(CFG, device="meta").A.device.type == "meta"  # counting on meta: no values
    with torch.device("meta"):  # the draw stays on the CPU whatever the default device
        assert FlyLoRA(CFG).A.device.type == "meta"
    default = FlyLoRAConfig(in_features=9, out_features=2, rank=3, top_k=1)  # ρ = 1/4: ⌈9/4⌉
    assert default.nnz == 3 and ((sparse_projection(default) != 0).sum(-1) == 3).all()
    assert (
        dataclasses.replace(default, in_features=10, density=0.3).nnz == 3
    )  # not 4 (0.3·10 in float)
    assert dataclasses.replace(default, density=1e-9).nnz == 1


def test_a_is_not_trained() -> None:
    a = FlyLoRA(CFG, dtype=DTYPE)
    A0, B0 = a.A.clone(), a.B.weight.detach().clone()
    opt = torch.optim.SGD(a.parameters(), lr=0.1)
    x = torch.randn(8, CFG.in_features, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
    for _ in range(2):  # the first step moves B off zero; the second reaches A if anything could
        opt.zero_grad()
        (a(x) - 1.0).square().sum().backward()
        opt.step()
    assert not torch.equal(a.B.weight, B0)
    assert torch.equal(a.A, A0)
    a.randomize_(3)
    assert torch.equal(a.A, A0)  # randomize_ draws the parameters only


def test_exactly_k_components_ties_to_the_lowest_index() -> None:
    a = build_random(CFG, 1)
    x = torch.randn(5, 3, CFG.in_features, dtype=DTYPE, generator=torch.Generator().manual_seed(1))
    g = a.routing(x)
    assert ((g == 0) | (g == 1)).all() and (g.sum(-1) == CFG.top_k).all()
    assert torch.equal(g.bool(), topk_mask((x @ a.A.T).abs(), CFG.top_k))
    y = x @ a.A.T  # Δ keeps y exactly where g = 1
    assert torch.allclose(a(x), CFG.scale * (g * y) @ a.B.weight.T, rtol=0, atol=1e-13)
    zero = a.routing(torch.zeros(CFG.in_features, dtype=DTYPE))  # |y| all tied at 0
    assert zero.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_expert_factors_give_the_expert_matrices() -> None:
    a = build_random(CFG, 2)
    f = a.expert_factors()
    assert f.left[0].shape == (4, 5, 1) and f.right.shape == (4, 1, 6)  # b_j and a_jᵀ
    assert f.right.dtype == torch.float64 and exact((f.dense(), a.expert_matrices())).ok


def test_params_and_macs_formulas() -> None:
    a = build_random(CFG, 0)
    subs = a.param_subs()
    assert int(a.param_formula().subs(subs)) == a.num_trainable_params() == 20
    assert int(a.macs_formula().subs(subs)) == counted_macs_per_token(a) == 4 * (6 + 5)


@pytest.mark.parametrize(
    ("change", "name", "error"),
    [
        ({"top_k": 5}, "top_k", ConfigError),
        ({"top_k": 0}, "top_k", ConfigError),
        ({"top_k": True}, "top_k", ArgumentTypeError),
        ({"density": 1.5}, "density", ConfigError),
        ({"density": 0.0}, "density", ConfigError),
        ({"density": float("nan")}, "density", ConfigError),
        ({"density": True}, "density", ArgumentTypeError),
        ({"a_seed": -1}, "a_seed", ConfigError),
        ({"rank": 0}, "rank", ConfigError),
        ({"scale": float("nan")}, "scale", ConfigError),
    ],
)
def test_bad_config_names_the_parameter(change: dict[str, Any], name: str, error: type) -> None:
    with pytest.raises(error, match=name):
        dataclasses.replace(CFG, **change)


def _spec(**kw: Any) -> SimpleNamespace:
    base = {"rank": 4, "experts": 1, "expert_rank": None, "top_k": None, "scale": 1.0}
    more = {"router": "input", "core_router": True, "shared": False, "options": {}}
    return SimpleNamespace(**{**base, **more, **kw})


def test_config_from_spec() -> None:
    c = FlyLoRA.config_from_spec(_spec(options={"density": 0.5, "a_seed": 3}), 6, 5)  # type: ignore[arg-type]
    assert (c.rank, c.top_k, c.nnz, c.a_seed) == (4, 1, 3, 3)
    with pytest.raises(ConfigError, match="row_nnz"):
        FlyLoRA.config_from_spec(_spec(options={"row_nnz": 2}), 6, 5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="shared"):
        FlyLoRA.config_from_spec(_spec(shared=True), 6, 5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="shared"):
        FlyLoRA.create(CFG, shared=torch.nn.Linear(1, 1))


# ----- claims, each with its refuted twin ---------------------------------------------------------


def _full_k(c: Case[FlyLoRAConfig]) -> Outcome:
    """k = r: FlyLoRA = the LoRA s·B A with its frozen A (the declared reduction)."""
    a = c.build()
    x = c.inputs()
    return exact((a(x), as_lora(a)(x)), (a.routing(x), torch.ones_like(a.routing(x))))


def _forced_lora(c: Case[FlyLoRAConfig]) -> Outcome:
    """Twin: the same LoRA s·B A at k < r (the mask ignored)."""
    a = c.build()
    cfg = a.config
    lora = LoRA(
        LoRAConfig(
            in_features=cfg.in_features,
            out_features=cfg.out_features,
            rank=cfg.rank,
            scale=cfg.scale,
        ),
        dtype=DTYPE,
    )
    with torch.no_grad():
        lora.A.weight.copy_(a.A)
        lora.B.weight.copy_(a.B.weight)
    x = c.inputs()
    return exact((a(x), lora(x)))


def _lipschitz_ratio(a: FlyLoRA, X: torch.Tensor) -> Outcome:
    """max(0, ρ/L − 1): ρ the largest ‖Δ(x) − Δ(y)‖ / ‖x − y‖ over pairs of rows of X, L = |s|·‖B‖₂‖A‖₂
    (LoRA's Lipschitz constant for the same factors)."""
    with torch.no_grad():
        D = a(X)
        dx = torch.cdist(X, X) + torch.eye(len(X), dtype=X.dtype)  # no 0/0 on the diagonal
        ratio = float((torch.cdist(D, D) / dx).max())
        L = abs(a.config.scale) * float(
            torch.linalg.matrix_norm(a.B.weight, 2) * torch.linalg.matrix_norm(a.A, 2)
        )
    # tolerance: the close pair (1e-4 apart) loses ~1e-12 of Δ's relative accuracy to cancellation
    return Outcome(max(0.0, ratio / L - 1), 1e-9, f"ratio {ratio:.6g}, L {L:.6g}")


def _lipschitz_drawn_pairs(c: Case[FlyLoRAConfig]) -> Outcome:
    a = c.build()
    X = c.inputs().reshape(-1, a.in_features)
    return _lipschitz_ratio(a, torch.cat([X, X[:1] + 1e-4]))  # and one close pair


def _lipschitz_at_switch(c: Case[FlyLoRAConfig]) -> Outcome:
    a = c.build()
    return _lipschitz_ratio(a, torch.stack(switch_pair(a, 1e-9)))


_SWITCHING = flylora_configs().filter(lambda cfg: cfg.top_k < cfg.rank <= cfg.in_features)
_FULL_RANK = _SWITCHING.filter(
    lambda cfg: int(torch.linalg.matrix_rank(sparse_projection(cfg))) == cfg.rank
)
CLAIMS = [
    *claim_with_twin(
        "flylora_full_k_equals_lora",
        "k = r: FlyLoRA is the LoRA s·B A with its frozen A, every component kept",
        cases(flylora_configs(top_k=False)),
        _full_k,
        twin="mask_ignored: the same LoRA at k < r",
        twin_case=_forced_lora,
        twin_strategy=cases(flylora_configs().filter(lambda cfg: cfg.top_k < cfg.rank)),
        spec="issue 11: FlyLoRA reduction",
    ),
    *claim_with_twin(
        "flylora_full_k_lipschitz",
        "k = r: ‖Δ(x) − Δ(y)‖ <= |s|‖B‖₂‖A‖₂ ‖x − y‖ between drawn points",
        cases(flylora_configs(top_k=False)),
        _lipschitz_drawn_pairs,
        twin="switch: k < r, the pair x± of switch_pair at ε = 1e-9 (no Lipschitz constant)",
        twin_case=_lipschitz_at_switch,
        twin_strategy=cases(_FULL_RANK),
        spec="issue 11: FlyLoRA discontinuity",
    ),
]


@pytest.mark.theorems
@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: c.name)
def test_claim(claim: Any) -> None:
    assert_as_declared(claim)


@pytest.mark.theorems
def test_switch_ratio_is_unbounded() -> None:
    """The witness, not a search: the ratio at switch_pair grows like 1/ε, the jump stays."""
    cfg = FlyLoRAConfig(in_features=6, out_features=5, rank=4, top_k=2, density=0.5, a_seed=7)
    a = build_random(cfg, 5)
    ratios, jumps = [], []
    for eps in (1e-3, 1e-5, 1e-7, 1e-9):
        lo, hi = switch_pair(a, eps)
        assert not torch.equal(a.routing(lo), a.routing(hi))  # the selection switched
        with torch.no_grad():
            jump = float((a(hi) - a(lo)).norm())
        ratios.append(jump / float((hi - lo).norm()))
        jumps.append(jump)
    with torch.no_grad():
        b = a.B.weight
        expected = 1.5 * abs(cfg.scale) * float((b[:, 2] - b[:, 1]).norm())
    assert all(abs(j - expected) < 1e-2 * expected for j in jumps[1:])
    assert all(r2 > 50 * r1 for r1, r2 in itertools.pairwise(ratios))
    assert ratios[-1] > 1e8


def test_switch_pair_refuses_what_it_cannot_build() -> None:
    a = build_random(FlyLoRAConfig(in_features=6, out_features=5, rank=4, top_k=4), 0)
    with pytest.raises(ConfigError, match="top_k"):
        switch_pair(a, 1e-3)  # k = r: nothing to switch
    low_rank = FlyLoRAConfig(in_features=2, out_features=2, rank=3, top_k=1)
    with pytest.raises(ConfigError, match="rank"):
        switch_pair(build_random(low_rank, 0), 1e-3)
    with pytest.raises(ConfigError, match="eps"):
        switch_pair(build_random(CFG, 0), 0.0)
    with pytest.raises(ReductionError, match="top_k"):
        as_lora(build_random(CFG, 0))
