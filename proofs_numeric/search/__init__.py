"""One search engine for lower bounds on Lipschitz constants (used by `proofs_numeric.bounds` and by
`moelora verify`'s `lipschitz_bound`): Jacobian norms and pair ratios found over a region.

    from proofs_numeric.search import Probe, Region, search
    res = search(Probe(f, batched=True), Probe(f64, batched=True), starts, Region(None, None, 0.0),
                 iterations=4, ascent=6, pair_steps=4, keep=8)    # SearchResult: res.value, ...

Modules: `probe` (f, jvp, vjp, Jacobians at many points), `region` (balls or anywhere), `jacobian`
(screening, power iteration, exact small Jacobians, Danskin ascent), `pairs` (pair ratios, pair ascent,
bisection towards a jump), `differences` (finite-difference power stage for maps without forward AD),
`engine` (the driver).
"""

from .differences import difference_power
from .engine import SearchResult, search
from .jacobian import (
    EXACT_OUT,
    ascend_jacobian,
    exact_small,
    jacobian_at,
    jacobian_power,
    jacobians,
    power,
    screen,
    top_singular,
)
from .pairs import (
    MIN_SEPARATION,
    ascend_pairs,
    bisect_pairs,
    closing_ratio,
    pair_ratio,
    ratios,
)
from .probe import Fn, Probe
from .region import Region, ball, unit

__all__ = [
    "EXACT_OUT",
    "MIN_SEPARATION",
    "Fn",
    "Probe",
    "Region",
    "SearchResult",
    "ascend_jacobian",
    "ascend_pairs",
    "ball",
    "bisect_pairs",
    "closing_ratio",
    "difference_power",
    "exact_small",
    "jacobian_at",
    "jacobian_power",
    "jacobians",
    "pair_ratio",
    "power",
    "ratios",
    "screen",
    "search",
    "top_singular",
    "unit",
]
