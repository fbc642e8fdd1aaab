"""Asymptotic-complexity checks on sympy expressions.

`theta_degree(expr, var)` is the polynomial degree of `expr` in `var` (the others held fixed), the
quantity that decides Θ-classes such as Θ(N·r) vs Θ(N·n). `same_theta(f, g, vars)` decides f = Θ(g)
as all `vars` grow, each at its own rate: lim f/g must be finite and non-zero along every path
`v = t^(a_v)`, t -> ∞, for all exponent vectors a ∈ {1, 2}^k (so Θ(N·r) and Θ(N·n) differ: along
r = t², n = t their ratio diverges). For polynomials with positive coefficients these paths probe the
leading monomials in every direction that matters at this size; it is a necessary condition in general.
`limit_ratio(f, g, grow)` is lim f/g as the variables in `grow` go to infinity together (the others
fixed). `macs_formula(adapter)` is the per-token multiply–add count of the forward pass, which the suite
compares with torch's FLOP counter.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import sympy as sp
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from moelora_core import symbols as S
from moelora_core.adapter import Adapter
from moelora_core.comol import CoMoL
from moelora_core.errors import ArgumentTypeError
from moelora_core.hydralora import HydraLoRA
from moelora_core.lora import LoRA
from moelora_core.moelora import MoELoRA
from moelora_core.talklora import TalkLoRA
from moelora_core.validate import require_instance

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


def same_theta(f: sp.Expr, g: sp.Expr, variables: Iterable[sp.Symbol]) -> bool:
    """f = Θ(g) as all `variables` grow: 0 < lim f/g < ∞ along several scaling directions."""
    vs = list(variables)
    for exponents in itertools.product((1, 2), repeat=len(vs)):
        sub = {v: _t**a for v, a in zip(vs, exponents, strict=True)}
        lim = sp.limit(sp.cancel((f / g).subs(sub)), _t, sp.oo)
        if lim in (0, sp.oo, -sp.oo, sp.zoo, sp.nan) or not lim.is_finite or lim <= 0:
            return False
    return True


def macs_formula(adapter: Adapter) -> sp.Expr:
    """Matmul multiply–adds of one token's forward pass (what torch's FLOP counter counts / 2)."""
    n, m, r, r_e, E, N = S.n, S.m, S.r, S.r_e, S.E, S.N
    if isinstance(adapter, LoRA):
        return r * (n + m)
    if isinstance(adapter, MoELoRA):
        router = E * n if adapter.config.router == "input" else E * (E * r_e)
        return E * r_e * (n + m) + router
    if isinstance(adapter, HydraLoRA):
        return r_e * n + E * n + E * r_e * m
    if isinstance(adapter, TalkLoRA):
        # A, then one fused matmul with [diag(K_i); W_r (T⊗I)] ((r + E) x r, the router folded once per
        # call), then B. The dense diag(K_i) costs r² instead of r²/E per token; r² << r·n in practice,
        # and one matmul beats E tiny ones (docs/performance.md).
        return r * n + r**2 + E * r + r * m
    if isinstance(adapter, CoMoL):
        router = N * r if adapter.config.core_router else N * n
        # A, router, then [M_1 ... M_N] (g ⊗ h): one (r x N·r) matmul (N r²), then B
        return r * n + router + N * r**2 + r * m
    raise ArgumentTypeError(
        f"adapter={type(adapter).__name__}: expected an adapter with a MAC formula"
    )


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
        return out


def counted_macs_per_token(adapter: Adapter) -> int:
    """Multiply–adds per token of `adapter`'s forward: counted FLOPs(2 tokens) - FLOPs(1 token), halved.

    The difference removes per-call work that does not scale with the tokens (e.g. folding the
    talking module into the router, W_r (T ⊗ I), once per call).
    """
    p = require_instance("adapter", adapter, Adapter).reference
    counts: list[int] = []
    for tokens in (1, 2):
        x = torch.randn(tokens, adapter.in_features, dtype=p.dtype, device=p.device)
        with MatmulFlops() as fc:
            adapter(x)
        counts.append(fc.flops)
    return (counts[1] - counts[0]) // 2
