"""The contract every registered architecture keeps, one table for all (`any_config` draws every family
of `proofs_numeric.strategies.CONFIG_STRATEGIES`, one per entry of `moelora_core.registry`).

* the fused `forward` equals `reference_delta` (the paper's sum over experts, unfused), outputs and
  gradients with respect to every parameter and the input, in float64 (EXACT_TOL);
* Δ = 0 at initialisation (`registry.create`, shared parts from `make_shared`);
* counted trainable parameters of L layers sharing one `make_shared` part
  = L · `param_formula` + `shared_param_formula`, and each layer's own count = `param_formula`;
* counted matmul multiply–adds per token (`counted_macs_per_token`) = `macs_formula`;
  (these two are `proofs_numeric.outcomes.shared_layers_outcome` and `counted_macs_outcome`, the same
  checks the claim catalogue's `params_layer_shared` and `macs_per_token` run);
* routing by the class's `routing_kind`: softmax and threshold gates are distributions (softmax:
  exactly k non-zero under top-k), a mask has exactly k ones, an unrouted adapter has no g;
* batch-shape invariance: the leading axes are only batch axes;
* a state-dict round trip into a fresh instance gives the same Δ;
* the certified router-Lipschitz bound of a soft router declared "half_norm" is not exceeded between
  the drawn points.

Each property has a mutated twin that the checker must refute. A property that does not apply to a
family is left out by the family's declarations (`routing_kind`, `linear_experts`, `router_lipschitz`),
never by its name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sympy as sp
import torch

from moelora_core import symbols as S
from moelora_core.adapter import Adapter
from moelora_core.registry import architecture_of, create
from proofs_numeric.bounds import router_bounds
from proofs_numeric.checking import Claim, Outcome, check_claim, claim_with_twin, exact
from proofs_numeric.outcomes import counted_macs_outcome, shared_layers_outcome
from proofs_numeric.strategies import DTYPE, Case, any_config, build_random, cases

Case_ = Callable[[Case[Any]], Outcome]


def _grads(a: Adapter, x: torch.Tensor, out: torch.Tensor) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    dy = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    wrt = [x, *(p for p in a.parameters() if p.requires_grad)]
    grads = torch.autograd.grad(out, wrt, dy, allow_unused=True)  # unused (a twin): zero
    return [torch.zeros_like(w) if g is None else g for w, g in zip(wrt, grads, strict=True)]


def _fused_vs_reference(uniform_routing: bool = False) -> Case_:
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


def _zero_at_init(randomised: bool = False) -> Case_:
    """max |Δ(x)| of a freshly created adapter (twin: after `randomize_`)."""

    def case(c: Case[Any]) -> Outcome:
        a = create(c.config, dtype=DTYPE)
        if randomised:
            a.randomize_(c.seed)
        with torch.no_grad():
            err = float(a(c.inputs()).abs().max())
        return Outcome(err, 0.0, f"max |Δ(x)| = {err:.3g} at initialisation")

    return case


def _params(shared_per_layer: bool = False, layers: int = 2) -> Case_:
    """`outcomes.shared_layers_outcome` (also behind the catalogue's `params_layer_shared`): unique
    trainable parameters of `layers` layers sharing one `make_shared` part = formula, and each layer's
    own count = its `param_formula` (twin: the shared part counted in every layer)."""

    def case(c: Case[Any]) -> Outcome:
        return shared_layers_outcome(c.config, layers, shared_per_layer=shared_per_layer)

    return case


def _macs(swap_in_out: bool = False) -> Case_:
    """`outcomes.counted_macs_outcome` (also behind the catalogue's `macs_per_token`): counted MACs
    per token = macs_formula (twin: the formula with n and m swapped)."""

    def case(c: Case[Any]) -> Outcome:
        a = c.build()
        formula = a.macs_formula()
        if swap_in_out:
            formula = sp.sympify(formula).subs({S.n: S.m, S.m: S.n}, simultaneous=True)
        return counted_macs_outcome(a, formula)

    return case


def _routing(unnormalised: bool = False) -> Case_:
    """g(x) as the class's `routing_kind` says (twin: every row divided by its largest weight)."""

    def case(c: Case[Any]) -> Outcome:
        a = c.build()
        with torch.no_grad():
            g = a.routing(c.inputs())
        if a.routing_kind == "none":
            return Outcome(0.0 if g is None else 1.0, 0.0, "unrouted: g must be None")
        assert g is not None, f"{type(a).__name__} declares routing_kind={a.routing_kind!r}"
        if unnormalised:
            g = g / g.amax(-1, keepdim=True)
        top_k = getattr(a.config, "top_k", None)
        k = g.shape[-1] if top_k is None else int(top_k)
        nonzero = (g > 0).sum(-1)
        if a.routing_kind == "mask":
            err = float(((g != 0) & (g != 1)).any()) + float((nonzero != k).any())
            return Outcome(err, 0.0, f"mask rows with {nonzero.tolist()} ones, expected {k}")
        err = max(float((g.sum(-1) - 1).abs().max()), float((-g).clamp_min(0).max()))
        if a.routing_kind == "softmax":
            err = max(err, float((nonzero != k).any()))
        return Outcome(err, 1e-12, f"sum err {err:.2e}, non-zero counts {nonzero.tolist()}")

    return case


def _batch_invariance(flatten_wrong: bool = False) -> Case_:
    def case(c: Case[Any]) -> Outcome:
        a = c.build()
        x = c.inputs()
        flat = x.reshape(-1, x.shape[-1])
        if flatten_wrong:  # twin: rows permuted before the call, not after
            flat = flat.flip(0)
        return exact((a(x), a(flat).reshape(*x.shape[:-1], -1)))

    return case


def _round_trip(drop_router: bool = False) -> Case_:
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


def _bound_holds(shrink: float = 1.0) -> Case_:
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


def _declares(predicate: Callable[[type[Adapter]], bool]) -> Callable[[Any], bool]:
    return lambda config: predicate(architecture_of(config))


ROUTED_LINEAR = any_config().filter(
    _declares(lambda cls: cls.routing_kind != "none" and cls.linear_experts)
)
ROUTED = any_config().filter(_declares(lambda cls: cls.routing_kind != "none"))
HALF_NORM = any_config(top_k=False).filter(
    _declares(lambda cls: cls.router_lipschitz == "half_norm")
)

CONTRACT: list[Claim[Any]] = [
    *claim_with_twin(
        "fused_equals_reference_delta",
        "forward = reference_delta (outputs and gradients), every architecture",
        cases(any_config()),
        _fused_vs_reference(),
        twin="uniform_g: the reference with uniform routing (linear, routed architectures)",
        twin_case=_fused_vs_reference(uniform_routing=True),
        twin_strategy=cases(ROUTED_LINEAR),
    ),
    *claim_with_twin(
        "zero_at_initialisation",
        "Δ(x) = 0 for a freshly created adapter (shared parts included), every architecture",
        cases(any_config(shared=True)),
        _zero_at_init(),
        twin="randomised: the same adapter after randomize_",
        twin_case=_zero_at_init(randomised=True),
    ),
    *claim_with_twin(
        "params_equal_formula",
        "counted trainable parameters of 2 layers sharing one make_shared part = 2 · param_formula "
        "+ shared_param_formula, and each layer's own count = param_formula",
        cases(any_config(shared=True)),
        _params(),
        twin="shared_per_layer: the shared part counted in every layer",
        twin_case=_params(shared_per_layer=True),
    ),
    *claim_with_twin(
        "macs_equal_formula",
        "counted matmul multiply–adds per token = macs_formula (sizes >= 2: torch lowers a size-1 "
        "contraction to an elementwise product, which no FLOP counter sees)",
        cases(any_config(lo=2)),
        _macs(),
        twin="in_out_swapped: the formula with n and m swapped",
        twin_case=_macs(swap_in_out=True),
    ),
    *claim_with_twin(
        "routing_as_declared",
        "g(x) as routing_kind says: softmax a distribution with exactly k non-zero (k = E without "
        "top-k), threshold a distribution, mask exactly k ones, none no g",
        cases(any_config()),
        _routing(),
        twin="unnormalised: every row divided by its largest weight",
        twin_case=_routing(unnormalised=True),
    ),
    *claim_with_twin(
        "batch_shape_invariance",
        "Δ on (..., n) equals Δ on the flattened rows, reshaped",
        cases(any_config()),
        _batch_invariance(),
        twin="rows_flipped: rows reordered between the two calls",
        twin_case=_batch_invariance(flatten_wrong=True),
    ),
    *claim_with_twin(
        "state_dict_round_trip",
        "a fresh instance loading the state dict computes the same Δ and g",
        cases(any_config()),
        _round_trip(),
        twin="router_dropped: the router's weights left out",
        twin_case=_round_trip(drop_router=True),
        twin_strategy=cases(ROUTED),
    ),
    *claim_with_twin(
        "router_bound_not_exceeded",
        "‖g(x) − g(y)‖ <= certified Lip · ‖x − y‖ between drawn points, every soft router declared "
        "half_norm (top-k routing jumps: bounds/topk.py gives its witnesses)",
        cases(HALF_NORM),
        _bound_holds(),
        twin="bound_over_1000: the certified bound divided by 1000",
        twin_case=_bound_holds(shrink=1e-3),
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
