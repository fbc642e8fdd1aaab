"""FlyLoRA: a frozen sparse random down-projection and a top-k mask over the rank-1 components.

    y = A x,                  A: r x n frozen (a buffer), p = ⌈ρ n⌉ non-zeros per row, from `a_seed`
    g(x) = topk_mask(|y|, k)  ∈ {0,1}^r, exactly k ones (ties to the lowest index)
    Δ(x) = s · B (g(x) ⊙ y) = Σ_j g_j(x) P_j x,   P_j = s · b_j a_jᵀ   (E = r rank-1 experts)

B: m x r is the only trained tensor (zero init, so Δ = 0 at init); there is no trainable router: the
frozen projection A routes and projects at once. Parameters `r·m`; matmul multiply-adds per token
`r(n + m)` (A is stored dense; the mask zeroes components, it does not skip them).

A is drawn on the CPU in float64 by `torch.Generator(a_seed)`: in each row p distinct columns (the first
p of a random permutation) with values N(0, 1/p), so E‖a_j‖² = 1; then cast to the adapter's dtype.
The sparsity is a density ρ (not a count), so that one spec serves layers of every width. Every layer
built from the same config holds the same A (the paper draws one per layer).

Claims (tests/test_flylora.py): with k = r, FlyLoRA is LoRA with that frozen A (`reductions()`); with
k < r, Δ jumps where the selection switches, so it has no Lipschitz constant: `switch_pair` builds,
without any search, inputs x, x' with ‖Δ(x) − Δ(x')‖ / ‖x − x'‖ ≥ c/ε for any ε > 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar

import sympy as sp
import torch
import torch.nn.functional as F
from torch import Tensor

from . import stacked
from . import symbols as S
from .adapter import Adapter, AdapterSpecLike, ExpertFactors, Reduction, RoutingKind, no_preparation
from .errors import ConfigError, ReductionError, require_finite_float, require_positive_int
from .lora import LoRA
from .maps import Dense, topk_mask
from .spec import refuse_shared, spec_options
from .validate import (
    checked_construction,
    require_instance,
    require_int,
    require_layer_size,
    require_real,
    require_seed,
)


@dataclass(frozen=True, kw_only=True)
class FlyLoRAConfig:
    in_features: int  # n
    out_features: int  # m
    rank: int  # r: rank-1 components (the experts)
    top_k: int  # k: components kept per token, 1 <= k <= r
    density: float = 0.25  # ρ ∈ (0, 1]: each row of A has p = ⌈ρ n⌉ non-zeros
    a_seed: int = 0  # seed of A's sparsity pattern and values
    scale: float = 1.0  # s

    def __post_init__(self) -> None:
        require_positive_int("in_features", self.in_features)
        require_positive_int("out_features", self.out_features)
        require_positive_int("rank", self.rank)
        require_positive_int("top_k", self.top_k)
        if self.top_k > self.rank:
            raise ConfigError(f"top_k={self.top_k}: expected 1 <= top_k <= rank={self.rank}")
        if require_real("density", self.density, positive=True) > 1:
            raise ConfigError(
                f"density={self.density!r}: expected 0 < density <= 1 (the share of non-zeros in "
                "each row of A)"
            )
        require_seed("a_seed", self.a_seed)
        require_finite_float("scale", self.scale)
        require_layer_size(repr(self), self.rank * (self.in_features + self.out_features))

    @property
    def nnz(self) -> int:
        """p = ⌈ρ n⌉, the non-zeros of each row of A (ρ read as written: 0.3·10 = 3, not 4)."""
        return math.ceil(Fraction(repr(self.density)) * self.in_features)


def sparse_projection(config: FlyLoRAConfig) -> Tensor:
    """A (r, n), float64 on the CPU: p distinct columns per row, values N(0, 1/p), from `a_seed`."""
    r, n, p = config.rank, config.in_features, config.nnz
    gen = torch.Generator(device="cpu").manual_seed(config.a_seed)
    f64, cpu = torch.float64, torch.device("cpu")  # whatever the default device (meta, cuda)
    cols = torch.rand(r, n, generator=gen, dtype=f64, device=cpu).argsort(dim=-1)[:, :p]  # (r, p)
    vals = torch.randn(r, p, generator=gen, dtype=f64, device=cpu) / math.sqrt(p)  # (r, p)
    return torch.zeros(r, n, dtype=f64, device=cpu).scatter_(-1, cols, vals)


class FlyLoRA(Adapter):
    family: ClassVar[str] = "flylora"
    config_class: ClassVar[type] = FlyLoRAConfig
    routing_kind: ClassVar[RoutingKind] = "mask"
    config: FlyLoRAConfig
    A: Tensor  # (r, n), a buffer: frozen, in the state dict, never a parameter

    def __init__(
        self,
        config: FlyLoRAConfig,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        dtype, device = checked_construction(config, FlyLoRAConfig, dtype, device)
        super().__init__()
        c = self.config = config
        self.B = Dense(
            c.out_features, c.rank, "zeros", name="B", dtype=dtype, device=device
        )  # m x r
        A = sparse_projection(c).to(dtype=self.B.weight.dtype, device=self.B.weight.device)
        self.register_buffer("A", A)  # r x n
        self.router = None

    # ----- building ----------------------------------------------------------------------------------
    @classmethod
    def config_from_spec(
        cls, spec: AdapterSpecLike, in_features: int, out_features: int
    ) -> FlyLoRAConfig:
        """rank r, top_k k (None: ⌈r/4⌉), scale s; options `density`, `a_seed`; nothing shared."""
        refuse_shared(cls.family, spec)
        extra: dict[str, Any] = spec_options(FlyLoRAConfig, spec, {"rank", "top_k", "scale"})
        require_positive_int("rank", spec.rank)
        k = spec.top_k if spec.top_k is not None else math.ceil(spec.rank / 4)
        return FlyLoRAConfig(
            in_features=in_features, out_features=out_features, rank=spec.rank, top_k=k,
            scale=spec.scale, **extra,
        )  # fmt: skip

    # ----- the maths ---------------------------------------------------------------------------------
    @property
    def num_experts(self) -> int:
        return self.config.rank

    @property
    def top_k(self) -> int:
        return self.config.top_k

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        c = self.config
        y = F.linear(x, self.A)  # (..., r) = A x
        if c.top_k < c.rank:
            y = y * topk_mask(y.detach().abs(), c.top_k)  # g ⊙ y: the k largest |y_j| kept
        return F.linear(c.scale * y, self.B.weight)  # (..., m)

    def routing(self, x: Tensor) -> Tensor:
        """g(x) ∈ {0,1}^r (..., r): ones at the k largest |(A x)_j|, ties to the lowest index."""
        self._check(x)
        y = torch.einsum("rn,...n->...r", self.A, x)  # (..., r)
        return self._checked(topk_mask(y.abs(), self.config.top_k).to(x.dtype), "g(x)")

    def reference_delta(self, x: Tensor) -> Tensor:
        """Σ_j g_j(x) · s · b_j (a_jᵀ x), one rank-1 term per component, then summed."""
        g = self.routing(x)  # (..., r)
        coef = torch.einsum("jn,...n->...j", self.A, x)  # (..., r): a_jᵀ x
        terms = self.config.scale * (g * coef).unsqueeze(-2) * self.B.weight  # (..., m, r)
        return terms.sum(-1)  # (..., m)

    def _rank_one_blocks(self) -> tuple[Tensor, Tensor]:
        """(a_jᵀ) as (r, 1, n) and (b_j) as (r, m, 1): r stacked experts of rank 1 (views)."""
        r = self.config.rank
        return stacked.down_blocks(self.A, r, 1), stacked.up_blocks(self.B.weight, r, 1)

    def expert_matrices(self) -> Tensor:
        """P_j = s · b_j a_jᵀ, (r, m, n)."""
        return stacked.matrices(*self._rank_one_blocks(), self.config.scale)

    def expert_factors(self) -> ExpertFactors:
        """P_j = s · (b_j) (a_jᵀ): left (r, m, 1), right (r, 1, n), exact float64 on the CPU."""
        return stacked.factors(*self._rank_one_blocks(), self.config.scale)

    # ----- counting ----------------------------------------------------------------------------------
    def param_formula(self) -> sp.Expr:
        return S.r * S.m  # B only; A is frozen

    def macs_formula(self) -> sp.Expr:
        return S.r * (S.n + S.m)  # A x (dense), then B (g ⊙ y)

    def subs(self) -> dict[sp.Symbol, int]:
        c = self.config
        return {S.n: c.in_features, S.m: c.out_features, S.r: c.rank}

    # ----- declared claims ---------------------------------------------------------------------------
    @classmethod
    def reductions(cls) -> tuple[Reduction, ...]:
        return (
            Reduction(
                name="full_k_is_lora",
                target="lora",
                prepare=no_preparation,
                embed=as_lora,
                unprepared_fails=False,
                applies=lambda config: config.top_k == config.rank,
            ),
        )


@torch.no_grad()
def as_lora(a: Adapter) -> LoRA:
    """FlyLoRA with k = r as the LoRA `s·B A` with the frozen A; ReductionError when k < r."""
    if not isinstance(a, FlyLoRA):
        raise ReductionError(f"adapter={type(a).__name__}: expected a FlyLoRA")
    c = a.config
    if c.top_k != c.rank:
        raise ReductionError(
            f"top_k={c.top_k}, rank={c.rank}: expected top_k = rank (every component kept)"
        )
    return stacked.lora_of(a.A, a.B.weight, c.scale)


def switch_pair(a: Adapter, eps: float) -> tuple[Tensor, Tensor]:
    """Inputs x± = A⁺ t(½ ± ε) on either side of a selection switch; no search, no randomness.

    t(τ) = (1-τ) u + τ w in R^r with u = (3,…,3, 2, 1, 0,…) (k-1 threes, then components k-1 and k,
    0-based, at 2 and 1) and w the same with those two swapped: for τ < ½ the mask keeps component
    k-1, for τ > ½ component k. When A has full row rank (r <= n), A x± = t(½ ± ε) up to rounding, so
    Δ(x+) − Δ(x−) → 1.5·s·(b_k − b_{k−1}) while ‖x+ − x−‖ = 2ε‖A⁺(w − u)‖: the ratio grows like 1/ε
    whenever b_k ≠ b_{k−1}. Requires k < r; ConfigError otherwise or when A is rank deficient.
    """
    a = require_instance("a", a, FlyLoRA)
    c = a.config
    require_real("eps", eps, positive=True)
    require_int("top_k", c.top_k, maximum=c.rank - 1)
    k = c.top_k
    A = a.A.detach().to(torch.float64)
    rank = int(torch.linalg.matrix_rank(A))
    if rank < c.rank:
        raise ConfigError(
            f"A: rank {rank}: expected full row rank {c.rank} (r <= n, distinct supports)"
        )
    u = torch.zeros(c.rank, dtype=torch.float64)
    u[: k - 1] = 3.0
    u[k - 1], u[k] = 2.0, 1.0
    w = u.clone()
    w[k - 1], w[k] = 1.0, 2.0
    pinv = torch.linalg.pinv(A)  # (n, r)
    lo, hi = (pinv @ ((0.5 + s * eps) * w + (0.5 - s * eps) * u) for s in (-1.0, 1.0))
    ref = a.B.weight
    return lo.to(ref), hi.to(ref)
