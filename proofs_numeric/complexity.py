"""Asymptotic-complexity checks on sympy expressions.

`same_theta(f, g, variables, assume=...)` *decides* f = Θ(g) as all `variables` grow (each at its own
rate) on `[1, ∞)^k`, restricted by monomial-order assumptions such as `r <= n`; `big_o` decides f = O(g).
The procedure (`proofs_numeric.theta`) compares Newton polytopes with an exact LP, for polynomial and
rational expressions with rational exponents; outside that class (log, a difference whose sign is not
decided, a coefficient of unknown sign) it raises `ThetaUndecided` rather than guess.

`theta_path_refuter(f, g, vars)` is the old path test, kept as a fast *refuter* only: it looks for a path
`v = t^(a_v)`, a ∈ {1, 2}^k, along which lim f/g is 0 or ∞. A path found refutes f = Θ(g); none found
proves nothing (n⁶ + r⁵ and n⁶ + r⁵ + n³r³ pass every such path, yet their ratio is unbounded along
n = t^10, r = t^13).

`theta_degree(expr, var)` is the polynomial degree of `expr` in `var` (the others held fixed).
`limit_ratio(f, g, grow)` is lim f/g as the variables in `grow` go to infinity together (the others
fixed). `macs_formula(adapter)` is the per-token multiply–add count of the forward pass, which the suite
compares with torch's FLOP counter.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from typing import Any

import sympy as sp
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from moelora_core.adapter import Adapter
from moelora_core.errors import ArgumentTypeError
from moelora_core.validate import require_instance

from .theta import Assumption, ThetaUndecided, big_o_region, growth_witness, region

__all__ = [
    "Assumption",
    "ThetaUndecided",
    "big_o",
    "counted_macs_per_token",
    "limit_ratio",
    "macs_formula",
    "same_theta",
    "theta_degree",
    "theta_path_refuter",
    "theta_witness",
]

_t = sp.Symbol("t", positive=True)


def theta_degree(expr: sp.Expr, var: sp.Symbol) -> int:
    """Degree of `expr` in `var` (leading-order growth with the other symbols fixed)."""
    poly = sp.Poly(sp.together(expr).as_numer_denom()[0], var)
    den = sp.Poly(sp.together(expr).as_numer_denom()[1], var)
    return int(poly.degree() - den.degree())


def limit_ratio(f: sp.Expr, g: sp.Expr, grow: Iterable[sp.Symbol]) -> sp.Expr:
    """lim f/g as every symbol in `grow` -> ∞ at the same rate (the others fixed)."""
    sub = {v: _t for v in grow}
    return sp.limit(sp.simplify((f / g).subs(sub)), _t, sp.oo)


def big_o(
    f: sp.Expr, g: sp.Expr, variables: Iterable[sp.Symbol], *, assume: Sequence[Assumption] = ()
) -> bool:
    """Decide f = O(g) as all `variables` -> ∞ on [1, ∞)^k under `assume` (sympy relations or strings
    such as "r <= n"); raises `ThetaUndecided` outside the decidable class."""
    return big_o_region(sp.sympify(f), sp.sympify(g), region(variables, assume))


def same_theta(
    f: sp.Expr, g: sp.Expr, variables: Iterable[sp.Symbol], *, assume: Sequence[Assumption] = ()
) -> bool:
    """Decide f = Θ(g) (f = O(g) and g = O(f)) as all `variables` -> ∞ under `assume`."""
    reg = region(variables, assume)
    f, g = sp.sympify(f), sp.sympify(g)
    return big_o_region(f, g, reg) and big_o_region(g, f, reg)


def theta_witness(
    f: sp.Expr, g: sp.Expr, variables: Iterable[sp.Symbol], *, assume: Sequence[Assumption] = ()
) -> tuple[dict[sp.Symbol, int], str] | None:
    """Why f ≠ Θ(g): a path v = t^d (integer exponents >= 1, respecting `assume`) along which f/g -> ∞
    ("f/g") or g/f -> ∞ ("g/f"); None if f = Θ(g)."""
    reg = region(variables, assume)
    f, g = sp.sympify(f), sp.sympify(g)
    for num, den, label in ((f, g, "f/g"), (g, f, "g/f")):
        d = growth_witness(num, den, reg)
        if d is not None:
            return dict(zip(reg.variables, d, strict=True)), label
    return None


def theta_path_refuter(
    f: sp.Expr, g: sp.Expr, variables: Iterable[sp.Symbol]
) -> dict[sp.Symbol, int] | None:
    """A path v = t^a (a ∈ {1, 2}^k) along which lim f/g is 0 or ∞ (refuting f = Θ(g)), or None.

    None proves nothing: this is a necessary condition only (see the module docstring)."""
    vs = list(variables)
    for exponents in itertools.product((1, 2), repeat=len(vs)):
        sub = {v: _t**a for v, a in zip(vs, exponents, strict=True)}
        if not _positive_finite_limit(sp.cancel((f / g).subs(sub))):
            return dict(zip(vs, exponents, strict=True))
    return None


def _positive_finite_limit(ratio: sp.Expr) -> bool:
    """0 < lim_{t->∞} ratio(t) < ∞; by leading terms for a rational function of t, else sp.limit."""
    num, den = sp.fraction(sp.together(ratio))
    try:
        pn, pd = sp.Poly(num, _t), sp.Poly(den, _t)
    except sp.PolynomialError:
        pn = pd = None
    if (
        pn is not None
        and pd is not None
        and not pn.free_symbols_in_domain | pd.free_symbols_in_domain
    ):
        lim = (
            sp.oo
            if pn.degree() > pd.degree()
            else sp.Integer(0)
            if pn.degree() < pd.degree()
            else None
        )
        if lim is None:
            lim = pn.LC() / pd.LC()
    else:
        lim = sp.limit(ratio, _t, sp.oo)
    return not (lim in (0, sp.oo, -sp.oo, sp.zoo, sp.nan) or not lim.is_finite or lim <= 0)


def macs_formula(adapter: Adapter) -> sp.Expr:
    """Matmul multiply–adds of one token's forward pass (what torch's FLOP counter counts / 2): the
    adapter's own `macs_formula()`; ArgumentTypeError for an adapter that defines none."""
    require_instance("adapter", adapter, Adapter)
    try:
        return adapter.macs_formula()
    except NotImplementedError:
        raise ArgumentTypeError(
            f"adapter={type(adapter).__name__}: expected an adapter with a MAC formula"
        ) from None


class MatmulFlops(TorchDispatchMode):
    """Counts the FLOPs of matmul-like aten ops (mm, addmm, bmm, baddbmm, ...) run inside the block.

    The same per-op formulas as `torch.utils.flop_counter.FlopCounterMode`, without its module
    tracking (which costs ~50 ms per use on tiny models).
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.flops: int = 0

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.flops += int(count(*args, **kwargs, out_val=out))
        elif func._overloadpacket in _WEIGHTED_BAGS and _bag_weights(args, kwargs) is not None:
            # Σ_c w_c · table[idx_c]: one multiply–add per (index, column) of the weighted bags
            self.flops += 2 * int(args[1].numel()) * int(args[0].shape[1])
        elif func._overloadpacket is _BAG_DOTS:
            # table[idx_c] · x_t (sparse.gather_dot): one multiply–add per (index, column)
            self.flops += 2 * int(args[2].numel()) * int(args[1].shape[1])
        return out


_WEIGHTED_BAGS = (torch.ops.aten._embedding_bag, torch.ops.aten._embedding_bag_forward_only)
_BAG_DOTS = torch.ops.aten._embedding_bag_per_sample_weights_backward


def _bag_weights(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The per_sample_weights argument of an aten embedding_bag call (None: an unweighted sum)."""
    return args[6] if len(args) > 6 else kwargs.get("per_sample_weights")


def counted_macs_per_token(adapter: Adapter, *, sparse: bool = False) -> int:
    """Multiply–adds per token of `adapter`'s forward: counted FLOPs(2 tokens) - FLOPs(1 token), halved.

    The difference removes per-call work that does not scale with the tokens (e.g. folding the
    talking module into the router, W_r (T ⊗ I), once per call). `sparse`: of the sparse top-k path
    (`sparse_mode("sparse")`), whose expert side is a weighted `embedding_bag` and whose gathered
    down-projection is embedding_bag's row-dot kernel (`sparse.gather_dot`), both counted as above.
    """
    from moelora_core.sparse import sparse_mode

    p = require_instance("adapter", adapter, Adapter).reference
    counts: list[int] = []
    for tokens in (1, 2):
        x = torch.randn(tokens, adapter.in_features, dtype=p.dtype, device=p.device)
        with sparse_mode("sparse") if sparse else nullcontext(), MatmulFlops() as fc:
            adapter(x)
        counts.append(fc.flops)
    return (counts[1] - counts[0]) // 2


def interpolated_count(
    count: Callable[[dict[sp.Symbol, int]], int],
    variables: Sequence[sp.Symbol],
    degree: int = 2,
    check_at: int = 5,
) -> sp.Expr:
    """The polynomial (degree <= `degree` in each variable) through `count` on the grid
    {1, ..., degree+1}^k, by tensor-product Lagrange interpolation, checked at v = (check_at, ...,
    check_at + k − 1), off the grid. `count` measures a module (e.g. the numel of its router), so the
    formula is read from the module, not typed by hand. Raises ConfigError if the check fails (the count
    is not such a polynomial)."""
    import numpy as np

    from moelora_core.errors import ConfigError

    grid = range(1, degree + 2)
    grid_exps = range(degree + 1)
    k = len(variables)
    values = np.empty(
        (degree + 1,) * k, dtype=object
    )  # values[i, j, ...] = count at (i+1, j+1, ...)
    for point in itertools.product(grid, repeat=k):
        values[tuple(p - 1 for p in point)] = sp.Integer(
            count(dict(zip(variables, point, strict=True)))
        )
    # coefficients of v^e (e ∈ {0..degree}^k): the inverse Vandermonde applied along every axis
    vinv = np.array(
        sp.Matrix([[q**e for e in grid_exps] for q in grid]).inv().tolist(), dtype=object
    )
    coeffs = values
    for axis in range(k):
        coeffs = np.moveaxis(np.tensordot(vinv, coeffs, axes=([1], [axis])), 0, axis)
    expr = sp.Add(
        *(
            coeffs[e] * sp.Mul(*(v**ei for v, ei in zip(variables, e, strict=True)))
            for e in itertools.product(grid_exps, repeat=k)
        )
    )
    probe = {v: check_at + i for i, v in enumerate(variables)}
    if expr.subs(probe) != count(probe):
        raise ConfigError(
            f"count at {probe} = {count(probe)}, interpolant {expr.subs(probe)}: expected a polynomial "
            f"of degree <= {degree} in each of {list(variables)}"
        )
    return expr
