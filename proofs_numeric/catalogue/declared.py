"""Claims generated for every registered architecture from what its class declares, so that a newly
registered architecture gets them without an edit here. Each is named `<family>_<claim>`.

* Each declared `Reduction` (`Adapter.reductions()`), on the configs where it `applies`: after
  `prepare(a)` (in place),

      Δ_a(x) = Δ_e(x)  and, where both route,  g_a(x) = g_e(x),     e = embed(a), of family `target`,

  within EXACT_TOL in float64 (`outcomes.reduction_outcome`); named `<family>_<reduction>` (the
  reduction's name when it already starts with the family). Where `unprepared_fails`, a twin
  `…__unprepared` skips `prepare` and must be refuted.
* `router_lipschitz == "refuted"`: the softmax gate's bound

      ‖g(x) − g(y)‖₂ <= ½ ‖W‖₂ ‖z(x) − z(y)‖₂        (z = router_input_map(), W the router's logits)

  stated for the architecture's own gate, with `expect="refuted"`: for each drawn instance the
  Lipschitz search (`variants.empirical_lipschitz`, power iteration on the Jacobian of x ↦ g(x), then
  bisection of the steepest segments) returns a pair (a, b); the claim is refuted when
  ‖g(a) − g(b)‖ > 1.01 · ½‖W‖₂ ‖z(a) − z(b)‖₂ on some instance, a 1% margin over rounding. This is
  where the papers' intuition ("a gate is as smooth as a softmax") fails, e.g. AdaMoLE's threshold.

The parameter and MAC formulas are checked for every registered architecture by `params_formula_all`,
`params_layer_shared`, `macs_per_token` and `sparse_macs_per_token` (`formulas.py`), which draw from
every entry of `strategies.CONFIG_STRATEGIES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from hypothesis.strategies import SearchStrategy

from moelora_core.adapter import Adapter, Reduction
from moelora_core.registry import ARCHITECTURES, architecture

from ..checking import Claim, ClaimError, Outcome, claim_with_twin
from ..outcomes import reduction_outcome
from ..strategies import CONFIG_STRATEGIES, DTYPE, Case, cases

LIPSCHITZ_MARGIN = 1.01  # a violation must exceed ½‖W‖₂ by 1%: rounding never does
ROUTER_SEARCH_CASES = 25  # instances searched (each a full Lipschitz search, ~30-100 ms)


def claim_name(family: str, name: str) -> str:
    """`<family>_<name>`, or `name` when it already starts with the family."""
    return name if name.startswith(f"{family}_") else f"{family}_{name}"


def _first_line(fn: Callable[..., Any]) -> str:
    doc = (fn.__doc__ or "").strip().splitlines()
    return doc[0].rstrip(".") if doc else getattr(fn, "__name__", "prepare")


def _reduction_case(family: str, red: Reduction, prepared: bool) -> Callable[[Case[Any]], Outcome]:
    target = architecture(red.target)

    def case(c: Case[Any]) -> Outcome:
        a = c.build()
        with torch.no_grad():
            if prepared:
                red.prepare(a)
            e = red.embed(a)
            if not isinstance(e, target):
                raise ClaimError(
                    f"reduction {red.name!r} of {family!r}: embed returned {type(e).__name__}; "
                    f"expected a {target.__name__} (target={red.target!r})"
                )
            return reduction_outcome(a, e, c.inputs())

    return case


def reduction_claims(
    family: str, cls: type[Adapter], configs: SearchStrategy[Any]
) -> list[Claim[Any]]:
    """The claims of every `Reduction` that `cls` declares, on `configs` where it applies."""
    out: list[Claim[Any]] = []
    for red in cls.reductions():
        name, drawn = claim_name(family, red.name), cases(configs.filter(red.applies))
        target = architecture(red.target).__name__
        after = _first_line(red.prepare)
        statement = (
            f"{cls.__name__} ({red.name}) equals its embedding, a {target}, after: {after} "
            "(Δ and routing)"
        )
        spec = f"declared by {cls.__name__}.reductions()"
        case = _reduction_case(family, red, prepared=True)
        if red.unprepared_fails:
            out += claim_with_twin(
                name, statement, drawn, case, spec=spec,
                twin=f"unprepared: the same embedding without '{after}'",
                twin_case=_reduction_case(family, red, prepared=False),
            )  # fmt: skip
        else:
            out.append(Claim(name, statement, drawn, case, spec=spec))
    return out


def _router_ratio(c: Case[Any]) -> Outcome:
    """The searched ‖g(a) − g(b)‖ / (½‖W‖₂ ‖z(a) − z(b)‖) of one instance, against LIPSCHITZ_MARGIN."""
    from ..variants import empirical_lipschitz

    a = c.build()
    router, logit_map = getattr(a, "router", None), a.router_logit_map()
    if router is None or logit_map is None:
        raise ClaimError(f"{type(a).__name__} declares router_lipschitz but has no router")
    half_w = 0.5 * float(torch.linalg.matrix_norm(router.logits.dense().detach(), ord=2))
    z = a.router_input_map()

    def gate(x: torch.Tensor) -> torch.Tensor:  # (P, n) -> (P, E)
        g = a.routing(x)
        assert g is not None  # a routed adapter: logit_map is not None
        return g

    with torch.no_grad():
        w = empirical_lipschitz(gate, a.in_features, seed=c.seed)
        pair = torch.stack([w.a, w.b]).to(DTYPE)  # (2, n)
        g, zz = gate(pair), z(pair)
        num = float(torch.linalg.vector_norm(g[0] - g[1])) - 1e-12 * (1 + float(g.abs().max()))
        den = half_w * float(torch.linalg.vector_norm(zz[0] - zz[1]))
    ratio = max(num, 0.0) / den if den > 0 else 0.0
    return Outcome(
        ratio,
        LIPSCHITZ_MARGIN,
        f"searched pair: ‖g(a) − g(b)‖ = {num:.6g} vs ½‖W‖₂ ‖z(a) − z(b)‖ = {den:.6g} "
        f"(ratio {ratio:.4g}; at a = {w.a.tolist()}, b = {w.b.tolist()})",
    )


def router_claims(
    family: str, cls: type[Adapter], configs: SearchStrategy[Any]
) -> list[Claim[Any]]:
    """`router_lipschitz == "refuted"`: the searched refutation of the ½‖W‖₂ gate bound."""
    if cls.router_lipschitz != "refuted":
        return []
    return [
        Claim(
            f"{family}_router_half_norm_lipschitz",
            f"{cls.__name__}'s gate is ½‖W‖₂-Lipschitz in the router input z like a softmax, "
            "‖g(x) − g(y)‖ <= ½‖W‖₂‖z(x) − z(y)‖ (declared refuted: the intuition that the gate "
            "is as smooth as a softmax fails; the search finds a pair above it by > 1%)",
            cases(configs),
            _router_ratio,
            "refuted",
            spec=f"declared by {cls.__name__}.router_lipschitz",
            max_examples=ROUTER_SEARCH_CASES,
        )
    ]


def declared_claims(
    architectures: Mapping[str, type[Adapter]] | None = None,
    strategies: Mapping[str, Callable[..., SearchStrategy[Any]]] | None = None,
) -> list[Claim[Any]]:
    """The declared claims of every registered architecture (or of `architectures`, drawn from
    `strategies`, both keyed by family)."""
    archs = ARCHITECTURES if architectures is None else architectures
    strats = CONFIG_STRATEGIES if strategies is None else strategies
    out: list[Claim[Any]] = []
    for family, cls in archs.items():
        if family not in strats:
            raise ClaimError(
                f"architecture {family!r} has no entry in CONFIG_STRATEGIES: expected one config "
                "strategy per registered family"
            )
        configs = strats[family]()
        out += reduction_claims(family, cls, configs)
        out += router_claims(family, cls, configs)
    return out


DECLARED_CLAIMS: list[Claim[Any]] = declared_claims()
