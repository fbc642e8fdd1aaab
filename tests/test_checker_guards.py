"""Properties of the checkers themselves (`pytest -m theorems`): a weakened checker must fail here.

Each test pins one guarantee the claim suite relies on and that no claim exercises on its own: the
tolerance policy refutes an error of 1e-8, a reduction checker refutes a target that differs only in
routing, exceptions and NaN never pass, the reductions refuse inputs outside their preconditions, and
the witness constructor rejects the boundary cases its conditions exclude. `make mutation` shows that
each of them kills at least one mutant of `tests/mutation/catalogue.toml`.
"""

from __future__ import annotations

import copy
import math

import pytest
import sympy as sp
import torch
from hypothesis import HealthCheck, find, settings
from hypothesis import strategies as st

from moelora_core import reductions as R
from moelora_core import symbols as S
from moelora_core.comol import CoMoL, CoMoLConfig
from moelora_core.errors import MoELoRAError, ReductionError
from moelora_core.hydralora import HydraLoRA, HydraLoRAConfig
from moelora_core.lora import LoRA, LoRAConfig
from moelora_core.moelora import MoELoRA, MoELoRAConfig
from moelora_core.talklora import TalkLoRA, TalkLoRAConfig
from proofs_numeric.catalogue.core import identity_talk_case
from proofs_numeric.checking import (
    Claim,
    Outcome,
    check_claim,
    claim_with_twin,
    exact,
    rel_error,
)
from proofs_numeric.function_class import dependence_rank
from proofs_numeric.outcomes import param_count_outcome, reduction_outcome
from proofs_numeric.strategies import Case, any_config, moelora_configs, talklora_configs

pytestmark = pytest.mark.theorems
F64 = torch.float64


def _x(n: int, rows: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, n, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _moelora(E: int = 2, router: str = "input", seed: int = 0, **kw: object) -> MoELoRA:
    cfg = MoELoRAConfig(
        in_features=5, out_features=4, num_experts=E, expert_rank=2, router=router, **kw
    )  # type: ignore[arg-type]
    return MoELoRA(cfg, dtype=F64).randomize_(seed)  # type: ignore[return-value]


# ----- the tolerance policy ----------------------------------------------------------------------------


def test_tolerance_refutes_an_error_of_1e_8() -> None:
    """One entry off by 1e-8 in a 64 x 64 matrix of ones is a wrong result, not rounding."""
    a = torch.ones(64, 64, dtype=F64)
    b = a.clone()
    b[3, 5] += 1e-8
    assert not exact((a, b)).ok
    assert exact((a, a * (1 + 2e-16))).ok  # rounding of a few ulp passes


def test_tolerance_accepts_reassociated_products() -> None:
    gen = torch.Generator().manual_seed(1)
    A, B, x = (torch.randn(*s, generator=gen, dtype=F64) for s in ((64, 64), (64, 64), (64,)))
    assert exact(((A @ B) @ x, A @ (B @ x))).ok


def test_nan_and_inf_never_pass() -> None:
    assert not Outcome(math.nan, 1.0).ok
    assert not Outcome(math.inf, math.inf).ok
    assert Outcome(0.0, 0.0).ok


def test_shape_mismatch_is_an_infinite_error() -> None:
    assert rel_error(torch.zeros(2, 3), torch.zeros(3)) == math.inf
    assert rel_error(torch.zeros(3), torch.zeros(1)) == math.inf
    assert rel_error(torch.zeros(3), None) == math.inf


def test_every_compared_pair_counts() -> None:
    a = torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    assert not exact((a, a), (a, a + 1.0)).ok
    assert not exact((a, a + 1.0), (a, a)).ok


def test_an_exception_or_a_failing_case_refutes_a_claim() -> None:
    def raises(_: int) -> Outcome:
        raise ValueError("boom")

    report = check_claim(Claim("raises", "a case that raises", st.just(0), raises))
    assert not report.holds and "boom" in report.raised
    failing = check_claim(Claim("fails", "a failing case", st.just(0), lambda _: Outcome(1, 0.5)))
    assert not failing.holds and failing.counterexample is not None


def test_claim_with_twin_declares_a_refuted_twin() -> None:
    def ok(_: int) -> Outcome:
        return Outcome(0.0, 0.5)

    def bad(_: int) -> Outcome:
        return Outcome(1.0, 0.5)

    claim, twin = claim_with_twin(
        "c", "holds", st.just(0), ok, twin="drop_x: without x", twin_case=bad, spec="S"
    )
    assert (twin.name, twin.statement, twin.expect, twin.twin_of) == (
        "c__drop_x",
        "twin: without x",
        "refuted",
        "c",
    )
    assert claim.expect == "holds" and claim.spec == twin.spec == "S"
    assert check_claim(claim).as_expected and check_claim(twin).as_expected
    named = claim_with_twin("c", "s", st.just(0), ok, twin="a: b", twin_case=bad, twin_name="d")
    assert named[1].name == "d"
    for twin_text, twin_name in (("no colon", None), (" : what", None), ("a: b", "c")):
        with pytest.raises(MoELoRAError, match="twin"):
            claim_with_twin(
                "c", "s", st.just(0), ok, twin=twin_text, twin_case=bad, twin_name=twin_name
            )


# ----- the generators put weight on the edge cases ---------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["E=1", "r=E", "n<r", "scale!=1", "top-k<E"],
)
def test_strategies_draw_the_edge_cases(name: str) -> None:
    """The claims survive the edge cases only if the strategies draw them (strategies.py docstring)."""
    strategy, edge = {
        "E=1": (moelora_configs(), lambda c: c.num_experts == 1),
        "r=E": (talklora_configs(), lambda c: c.rank == c.num_experts),
        "n<r": (moelora_configs(), lambda c: c.in_features < c.rank),
        "scale!=1": (any_config(), lambda c: c.scale != 1.0),
        "top-k<E": (moelora_configs(), lambda c: c.top_k is not None and c.top_k < c.num_experts),
    }[name]
    quick = settings(
        database=None, max_examples=2000, suppress_health_check=list(HealthCheck), derandomize=True
    )
    find(strategy, edge, settings=quick)


# ----- the claim checkers ------------------------------------------------------------------------------


def test_reduction_checker_refutes_a_target_that_differs_only_in_routing() -> None:
    """Identical experts make Δ independent of g: a target with another router has the same Δ."""
    src = _moelora(E=3)
    with torch.no_grad():  # identical experts: every A_i = A_1, every B_i = B_1
        A = src.A.weight.unflatten(0, (3, 2))
        B = src.B.weight.unflatten(1, (3, 2))
        A.copy_(A[:1].expand_as(A))
        B.copy_(B[:, :1].expand_as(B))
    tgt = copy.deepcopy(src)
    with torch.no_grad():
        tgt.router.logits.dense().mul_(-2.0)  # type: ignore[union-attr]
    x = _x(5)
    assert exact((src(x), tgt(x))).ok  # same Δ ...
    assert not reduction_outcome(src, tgt, x).ok  # ... but other routing weights
    assert reduction_outcome(src, copy.deepcopy(src), x).ok


def test_claim_1_checks_that_w_r_is_unchanged() -> None:
    """Adding v 1ᵀ-type common rows to W_r keeps g and Δ but breaks "W_r unchanged"."""

    @torch.no_grad()
    def shifted(t: TalkLoRA) -> MoELoRA:
        mo = R.talklora_to_moelora(t)
        W = mo.router.logits.dense()  # type: ignore[union-attr]
        W.add_(torch.linspace(1.0, 2.0, W.shape[1], dtype=W.dtype).expand_as(W))
        return mo

    cfg = TalkLoRAConfig(in_features=5, out_features=3, rank=4, num_experts=2)
    case = Case(cfg, seed=3, input_seed=4)
    assert identity_talk_case(R.talklora_to_moelora)(case).ok
    assert not identity_talk_case(shifted)(case).ok


def test_count_checker_refutes_an_off_by_one_formula() -> None:
    a = LoRA(LoRAConfig(in_features=3, out_features=2, rank=2), dtype=F64)
    assert param_count_outcome(a).ok
    a.param_formula = lambda: S.r * (S.n + S.m) + 1  # type: ignore[method-assign]
    assert not param_count_outcome(a).ok


def test_dependence_rank_is_the_exact_rank() -> None:
    """A TalkLoRA or LoRA of total rank r reads exactly r directions: rounding is not a direction."""
    t = TalkLoRA(TalkLoRAConfig(in_features=9, out_features=4, rank=4, num_experts=2), dtype=F64)
    lo = LoRA(LoRAConfig(in_features=9, out_features=4, rank=3), dtype=F64)
    pts = _x(9, rows=12, seed=5)
    assert dependence_rank(t.randomize_(0), pts).rank == 4
    assert dependence_rank(lo.randomize_(0), pts).rank == 3


def test_top_k_keeps_exactly_k_experts() -> None:
    x = _x(5, rows=64, seed=6)
    for k in range(1, 5):
        g = _moelora(E=4, top_k=k).routing(x)
        assert g is not None
        assert bool(((g > 0).sum(-1) == k).all()), f"top_k={k}"
        assert torch.allclose(g.sum(-1), torch.ones(64, dtype=F64))


# ----- reductions refuse inputs outside their preconditions ----------------------------------------------


def test_moelora_to_lora_refuses_distinct_experts() -> None:
    mo = _moelora(E=2)
    with pytest.raises(ReductionError):
        R.moelora_to_lora(mo)
    c = mo.config
    A = mo.A.weight.detach().unflatten(0, (c.num_experts, c.expert_rank))
    B = mo.B.weight.detach().unflatten(1, (c.num_experts, c.expert_rank))
    only_B = copy.deepcopy(mo)  # equal A_i, distinct B_i
    only_A = copy.deepcopy(mo)  # equal B_i, distinct A_i
    near = copy.deepcopy(mo)  # experts 1e-6 apart, atol = 0
    with torch.no_grad():
        only_B.A.weight.copy_(A[:1].expand_as(A).flatten(0, 1))
        only_A.B.weight.copy_(B[:, :1].expand_as(B).flatten(1))
        near.A.weight.copy_(A[:1].expand_as(A).flatten(0, 1))
        near.B.weight.copy_(B[:, :1].expand_as(B).flatten(1))
        near.A.weight[-1, 0] += 1e-6
    for bad in (only_B, only_A, near):
        with pytest.raises(ReductionError):
            R.moelora_to_lora(bad)
    R.moelora_to_lora(near, atol=1e-5)  # within the stated atol: accepted


def test_hydralora_and_comol_to_lora_refuse_distinct_heads_and_cores() -> None:
    hy = HydraLoRA(
        HydraLoRAConfig(in_features=4, out_features=3, num_experts=2, expert_rank=2), dtype=F64
    ).randomize_(1)
    co = CoMoL(CoMoLConfig(in_features=4, out_features=3, rank=2, num_cores=2), dtype=F64)
    co.randomize_(2)
    with pytest.raises(ReductionError):
        R.hydralora_to_lora(hy)  # type: ignore[arg-type]
    with pytest.raises(ReductionError):
        R.comol_to_lora(co)


def test_comol_to_lora_uses_the_first_core() -> None:
    """Within atol the cores may differ: the embedding is B' = B M_1, as documented."""
    co = CoMoL(CoMoLConfig(in_features=4, out_features=3, rank=2, num_cores=3), dtype=F64)
    co.randomize_(3)
    with torch.no_grad():
        co.cores.copy_(co.cores[:1].expand_as(co.cores) + 1e-4 * co.cores.roll(1, 0))
    lo = R.comol_to_lora(co, atol=1e-2)
    assert torch.equal(lo.B.weight, co.B.weight @ co.cores[0])


def test_moelora_to_talklora_refuses_an_input_router() -> None:
    with pytest.raises(ReductionError):
        R.moelora_to_talklora(_moelora(E=2, router="input"))
    R.moelora_to_talklora(_moelora(E=2, router="latent"))


@pytest.mark.parametrize(
    "n, m, E, r_e",
    [(4, 2, 2, 2), (2, 2, 1, 1), (5, 1, 2, 2)],
    ids=["n_eq_r", "one_expert", "m_below_r_e"],
)
def test_witness_rejects_boundary_cases(n: int, m: int, E: int, r_e: int) -> None:
    with pytest.raises(MoELoRAError):
        R.input_router_witness(n, m, E, r_e)


def test_witness_accepts_the_smallest_valid_case() -> None:
    w = R.input_router_witness(5, 2, 2, 2)
    assert sp.Integer(w.config.num_experts * w.config.expert_rank) < w.in_features


def test_theta_comparison_separates_n_r_from_n_n() -> None:
    """N·r and N·n agree on the diagonal path only: the decision and the path refuter separate them."""
    from proofs_numeric.complexity import same_theta, theta_path_refuter

    vs = [S.N, S.r, S.n]
    assert not same_theta(S.N * S.r, S.N * S.n, vs)
    assert same_theta(S.N * S.r + S.r, S.N * S.r, vs)
    assert theta_path_refuter(S.N * S.r, S.N * S.n, vs) is not None
