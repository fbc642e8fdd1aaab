"""The contract every registered architecture keeps, one table for all (`any_config` draws every one).

* the fused `forward` equals `reference_delta` (the paper's sum over experts, unfused), outputs and
  gradients with respect to every parameter and the input, in float64 (EXACT_TOL);
* routing weights are a distribution: non-negative, summing to 1, exactly k non-zero under top-k;
* batch-shape invariance: the leading axes are only batch axes;
* a state-dict round trip into a fresh instance gives the same Δ;
* the certified router-Lipschitz bound of a soft router is not exceeded between the drawn points.

Each property has a mutated twin that the checker must refute.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from moelora_core.adapter import Adapter
from proofs_numeric.bounds import router_bounds
from proofs_numeric.checking import Claim, Outcome, check_claim, exact
from proofs_numeric.strategies import Case, any_config, build_random, cases


def _grads(a: Adapter, x: torch.Tensor, out: torch.Tensor) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    dy = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    wrt = [x, *(p for p in a.parameters() if p.requires_grad)]
    grads = torch.autograd.grad(out, wrt, dy, allow_unused=True)  # unused (a twin): zero
    return [torch.zeros_like(w) if g is None else g for w, g in zip(wrt, grads, strict=True)]


def _fused_vs_reference(uniform_routing: bool = False) -> Any:
    def case(c: Case[Any]) -> Outcome:
        a = c.build()
        x = c.inputs().requires_grad_(True)
        fused = a(x)
        ref = a.reference_delta(x)
        if uniform_routing:  # twin: the reference with every expert weighted equally
            P = a.expert_matrices()  # (E, m, n)
            ref = torch.einsum("emn,...n->...m", P.mean(0).unsqueeze(0), x)
        pairs = [(fused, ref), *zip(_grads(a, x, fused), _grads(a, x, ref), strict=True)]
        return exact(*pairs)

    return case


def _routing_is_a_distribution(c: Case[Any]) -> Outcome:
    a = c.build()
    with torch.no_grad():
        g = a.routing(c.inputs())
    if g is None:
        return Outcome(0.0, 0.0, "unrouted")
    k = a.router.top_k if a.router is not None and a.router.top_k is not None else g.shape[-1]
    nonzero = (g > 0).sum(-1)
    err = max(float((g.sum(-1) - 1).abs().max()), float((-g).clamp_min(0).max()))
    wrong_k = float((nonzero != k).any())
    return Outcome(
        max(err, wrong_k), 1e-12, f"sum err {err:.2e}, non-zero counts {nonzero.tolist()}"
    )


def _batch_invariance(flatten_wrong: bool = False) -> Any:
    def case(c: Case[Any]) -> Outcome:
        a = c.build()
        x = c.inputs()
        flat = x.reshape(-1, x.shape[-1])
        if flatten_wrong:  # twin: rows permuted before the call, not after
            flat = flat.flip(0)
        return exact((a(x), a(flat).reshape(*x.shape[:-1], -1)))

    return case


def _round_trip(drop_router: bool = False) -> Any:
    def case(c: Case[Any]) -> Outcome:
        a = c.build()
        b = build_random(c.config, c.seed + 1)  # same architecture, other weights
        state = dict(a.state_dict())
        if drop_router:  # twin: the router's weights are not carried over
            state = {k: v for k, v in state.items() if "router" not in k}
        b.load_state_dict(state, strict=not drop_router)
        x = c.inputs()
        return exact((a(x), b(x)), (a.routing(x), b.routing(x)))

    return case


def _bound_holds(shrink: float = 1.0) -> Any:
    """max over pairs of drawn points of ‖g(x) − g(y)‖ / ‖x − y‖ <= shrink · certified bound."""

    def case(c: Case[Any]) -> Outcome:
        a = c.build()
        X = c.inputs().reshape(-1, a.in_features)
        X = torch.cat([X, X[:1] + 1e-3 * torch.ones_like(X[:1])])  # one close pair
        with torch.no_grad():
            g = a.routing(X)
        assert g is not None
        dx = torch.cdist(X, X) + torch.eye(len(X), dtype=X.dtype)  # no 0/0 on the diagonal
        ratio = float((torch.cdist(g, g) / dx).max())
        bound = shrink * router_bounds(a).upper
        return Outcome(max(0.0, ratio - bound), 0.0, f"ratio {ratio:.6g}, bound {bound:.6g}")

    return case


ROUTED = any_config().filter(lambda cfg: type(cfg).__name__ != "LoRAConfig")
SOFT = any_config(top_k=False).filter(lambda cfg: type(cfg).__name__ != "LoRAConfig")

CONTRACT: list[Claim[Any]] = [
    Claim(
        "fused_equals_reference_delta",
        "forward = reference_delta (outputs and gradients), every architecture",
        cases(any_config()),
        _fused_vs_reference(),
    ),
    Claim(
        "fused_equals_reference_delta__uniform_g",
        "twin: the reference with uniform routing",
        cases(ROUTED),
        _fused_vs_reference(uniform_routing=True),
        "refuted",
        "fused_equals_reference_delta",
    ),
    Claim(
        "routing_is_a_distribution",
        "g(x) >= 0, Σ g = 1, exactly k non-zero (k = E without top-k)",
        cases(any_config()),
        _routing_is_a_distribution,
    ),
    Claim(
        "batch_shape_invariance",
        "Δ on (..., n) equals Δ on the flattened rows, reshaped",
        cases(any_config()),
        _batch_invariance(),
    ),
    Claim(
        "batch_shape_invariance__rows_flipped",
        "twin: rows reordered between the two calls",
        cases(any_config()),
        _batch_invariance(flatten_wrong=True),
        "refuted",
        "batch_shape_invariance",
    ),
    Claim(
        "state_dict_round_trip",
        "a fresh instance loading the state dict computes the same Δ and g",
        cases(any_config()),
        _round_trip(),
    ),
    Claim(
        "state_dict_round_trip__router_dropped",
        "twin: the router's weights left out",
        cases(ROUTED),
        _round_trip(drop_router=True),
        "refuted",
        "state_dict_round_trip",
    ),
    Claim(
        "router_bound_not_exceeded",
        "‖g(x) − g(y)‖ <= certified Lip · ‖x − y‖ between drawn points, every soft router (top-k "
        "routing jumps: bounds/topk.py gives its witnesses)",
        cases(SOFT),
        _bound_holds(),
    ),
    Claim(
        "router_bound_not_exceeded__bound_over_1000",
        "twin: the certified bound divided by 1000",
        cases(SOFT),
        _bound_holds(shrink=1e-3),
        "refuted",
        "router_bound_not_exceeded",
    ),
]


@pytest.mark.theorems
@pytest.mark.parametrize("claim", CONTRACT, ids=lambda c: c.name)
def test_contract(claim: Claim[Any]) -> None:
    report = check_claim(claim)
    assert not report.raised, report.raised
    if claim.expect == "holds":
        assert report.holds, f"{claim.name} refuted: {report.counterexample} ({report.detail})"
        assert report.cases >= 200
    else:
        assert not report.holds, f"{claim.name} should be refuted but held on {report.cases} cases"
