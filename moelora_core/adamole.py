"""AdaMoLE (Liu and Luo, 2024): E LoRA experts behind an input-dependent threshold on the router's
probabilities; the experts above the threshold share the weight, renormalised.

    p(x) = softmax(W x)                           W: E x n
    τ(x) = τ_max · σ(w_τ·x + b_τ)                 w_τ ∈ R^n, b_τ ∈ R;  τ_max = 1/E by default
    g_i(x) = relu(p_i − τ) / Σ_j relu(p_j − τ)    a distribution: max_j p_j >= 1/E >= τ_max > τ
    Δ(x) = s · Σ_i g_i(x) B_i A_i x               A_i: r_e x n,  B_i: m x r_e

Routing kind "threshold": g is a distribution with 1 to E non-zero weights, varying per token.

Rounding: σ(t) rounds to 1 for large t (τ = τ_max = 1/E), and then, with p uniform, every relu(p_i − τ)
is 0. The gate takes its limit as τ rises to max_j p_j there: equal weights on the experts with
p_i = max_j p_j. (The reference code returns all-zero weights instead, i.e. Δ = 0.)

Not ½‖W‖₂-Lipschitz, unlike a softmax gate: on the active set S, ∂g_S/∂p = (I − g_S 1ᵀ)/D with
D = Σ_{j∈S} (p_j − τ), which can be as small as 1/E − τ, so the gain grows like 1/(1/E − τ) as τ → 1/E.
`lipschitz_witness()`: E = 2, n = 1, W = [1; 0], w_τ = 0, σ(b_τ) = 9/10 (τ = 0.45); between x = 0 and
y = 1/10, ‖g(x) − g(y)‖₂ = 0.3533 while ½‖W‖₂·|x − y| = 0.05.

Storage: A = [A_1; ...; A_E] (E·r_e x n), B = [B_1 ... B_E] (m x E·r_e); [A; W; w_τ] x is one matmul.
Params E·r_e(n+m) + E·n + n + 1; MACs per token E·r_e(n+m) + E·n + n. No sparse path: the number of
active experts varies per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import sympy as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import stacked
from . import symbols as S
from .adapter import (
    AdapterSpecLike,
    ExpertFactors,
    Reduction,
    RoutedAdapter,
    RouterLipschitz,
    RoutingKind,
    no_preparation,
    weighted_heads,
)
from .errors import ConfigError, require_finite_float, require_positive_int
from .maps import Dense, Identity, LinearMap, SoftmaxRouter, softmax_last
from .moelora import MoELoRA
from .preconditions import on
from .spec import refuse_shared, spec_expert_rank, spec_options
from .validate import checked_construction, require_layer_size, require_real


@dataclass(frozen=True, kw_only=True)
class AdaMoLEConfig:
    in_features: int  # n
    out_features: int  # m
    num_experts: int  # E
    expert_rank: int  # r_e
    max_threshold: float | None = None  # τ_max in [0, 1/E]; None: 1/E (the reference's default)
    scale: float = 1.0  # s

    def __post_init__(self) -> None:
        require_positive_int("in_features", self.in_features)
        require_positive_int("out_features", self.out_features)
        require_positive_int("num_experts", self.num_experts)
        require_positive_int("expert_rank", self.expert_rank)
        require_finite_float("scale", self.scale)
        if self.max_threshold is not None:
            t = require_real("max_threshold", self.max_threshold, minimum=0.0)
            if t > 1 / self.num_experts:
                raise ConfigError(
                    f"max_threshold={self.max_threshold!r}: expected a real in [0, 1/num_experts] = "
                    f"[0, {1 / self.num_experts:.6g}] (above 1/E every p_i may fall below τ)"
                )
        E, n = self.num_experts, self.in_features
        require_layer_size(
            repr(self), E * self.expert_rank * (n + self.out_features) + E * n + n + 1
        )

    @property
    def rank(self) -> int:
        """Total rank r = E·r_e."""
        return self.num_experts * self.expert_rank

    @property
    def tau_max(self) -> float:
        """τ_max: `max_threshold`, or 1/E if None."""
        return 1 / self.num_experts if self.max_threshold is None else float(self.max_threshold)


def threshold_gate(p: Tensor, tau: Tensor) -> Tensor:
    """g_i = relu(p_i − τ) / Σ_j relu(p_j − τ): p (..., E) probabilities, τ (..., 1) -> (..., E).

    Where rounding leaves no p_j above τ (only at τ = max_j p_j), the limit τ -> max_j p_j from
    below: equal weights on the experts with p_i = max_j p_j.
    """
    kept = torch.relu(p - tau)  # (..., E)
    total = kept.sum(-1, keepdim=True)  # (..., 1)
    top = (p == p.amax(-1, keepdim=True)).to(p.dtype)  # (..., E)
    limit = top / top.sum(-1, keepdim=True)
    return torch.where(total > 0, kept / torch.where(total > 0, total, 1.0), limit)


class AdaMoLE(RoutedAdapter):
    family: ClassVar[str] = "adamole"
    config_class: ClassVar[type] = AdaMoLEConfig
    routing_kind: ClassVar[RoutingKind] = "threshold"
    router_lipschitz: ClassVar[RouterLipschitz] = "refuted"  # see `lipschitz_witness`
    config: AdaMoLEConfig

    @classmethod
    def config_from_spec(
        cls, spec: AdapterSpecLike, in_features: int, out_features: int
    ) -> AdaMoLEConfig:
        """E = experts, r_e = expert_rank (default rank // experts), scale; `max_threshold` from the
        options. `top_k` is not read (as LoRA reads no experts): the threshold picks the experts."""
        refuse_shared(cls.family, spec)
        extra: dict[str, Any] = spec_options(
            AdaMoLEConfig, spec, {"num_experts", "expert_rank", "scale"}
        )
        return AdaMoLEConfig(
            in_features=in_features, out_features=out_features, num_experts=spec.experts,
            expert_rank=spec_expert_rank(spec), scale=spec.scale, **extra,
        )  # fmt: skip

    def __init__(
        self,
        config: AdaMoLEConfig,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        dtype, device = checked_construction(config, AdaMoLEConfig, dtype, device)
        super().__init__()
        c = self.config = config
        E, n = c.num_experts, c.in_features
        self.A = Dense(c.rank, n, "kaiming_uniform", name="A", dtype=dtype, device=device)
        self.B = Dense(c.out_features, c.rank, "zeros", name="B", dtype=dtype, device=device)
        self.router = SoftmaxRouter(Dense(E, n, name="W_g", dtype=dtype, device=device))  # p(x)
        self.w_tau = Dense(1, n, "kaiming_uniform", name="w_tau", dtype=dtype, device=device)
        self.b_tau = nn.Parameter(torch.zeros(1, dtype=dtype, device=device))

    @property
    def num_experts(self) -> int:
        return self.config.num_experts

    # ----- the maths ---------------------------------------------------------------------------------
    def _gate(self, logits: Tensor, t: Tensor) -> Tensor:
        """g from the logits W x (..., E) and the threshold pre-activation w_τ·x (..., 1)."""
        tau = self.config.tau_max * torch.sigmoid(t + self.b_tau)  # (..., 1)
        return threshold_gate(softmax_last(logits), tau)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        c = self.config
        A_W_w = torch.cat([self.A.weight, self.router.logits.dense(), self.w_tau.weight])
        h, logits, t = F.linear(x, A_W_w).split([c.rank, c.num_experts, 1], dim=-1)
        g = self._gate(logits, t)  # (..., E)
        return F.linear(weighted_heads(h, c.scale * g, c.expert_rank), self.B.weight)

    def routing(self, x: Tensor) -> Tensor:
        """g(x), (..., n) -> (..., E)."""
        self._check(x)
        W_w = torch.cat([self.router.logits.dense(), self.w_tau.weight])
        logits, t = F.linear(x, W_w).split([self.config.num_experts, 1], dim=-1)
        return self._checked(self._gate(logits, t), "routing weights g(x)")

    def probabilities(self, x: Tensor) -> Tensor:
        """p(x) = softmax(W x), (..., n) -> (..., E)."""
        self._check(x)
        p: Tensor = self.router(x)
        return p

    def threshold(self, x: Tensor) -> Tensor:
        """τ(x) = τ_max·σ(w_τ·x + b_τ), (..., n) -> (..., 1)."""
        self._check(x)
        return self.config.tau_max * torch.sigmoid(F.linear(x, self.w_tau.weight, self.b_tau))

    def router_input_map(self) -> LinearMap:
        return Identity(self.in_features).to(self.A.weight)

    def expert_matrices(self) -> Tensor:
        return stacked.expert_matrices(self)  # (E, m, n): s·B_i A_i

    def expert_factors(self) -> ExpertFactors:
        return stacked.expert_factors(self)

    def reference_delta(self, x: Tensor) -> Tensor:
        """s·Σ_i g_i(x) B_i (A_i x), summed over the expert axis."""
        g = self.routing(x)  # (..., E)
        return stacked.reference_sum(g, x, *stacked.blocks(self), self.config.scale)

    # ----- counting ----------------------------------------------------------------------------------
    def param_formula(self) -> sp.Expr:
        return S.E * S.r_e * (S.n + S.m) + S.E * S.n + S.n + 1

    def macs_formula(self) -> sp.Expr:
        return S.E * S.r_e * (S.n + S.m) + S.E * S.n + S.n

    def subs(self) -> dict[sp.Symbol, int]:
        c = self.config
        return {S.n: c.in_features, S.m: c.out_features, S.E: c.num_experts, S.r_e: c.expert_rank}

    # ----- declared claims ---------------------------------------------------------------------------
    @classmethod
    def reductions(cls) -> tuple[Reduction, ...]:
        """τ_max = 0 -> the soft input-router MoELoRA (g = p; claimed there only); identical experts
        -> LoRA (A_1, B_1), whatever the threshold (Σ_i g_i = 1)."""
        return (
            Reduction("adamole_zero_threshold_is_soft_moelora", "moelora", no_preparation,
                      on(AdaMoLE, _as_soft_moelora), unprepared_fails=False, applies=_no_threshold),
            Reduction("adamole_equal_experts_is_lora", "lora", on(AdaMoLE, stacked.equal_experts_),
                      on(AdaMoLE, stacked.first_expert_lora)),
        )  # fmt: skip


def _no_threshold(config: AdaMoLEConfig) -> bool:
    """The configs on which the reduction to the soft MoELoRA is claimed: τ_max = 0."""
    return config.tau_max == 0


def lipschitz_witness() -> tuple[AdaMoLE, Tensor, Tensor]:
    """(adapter, x, y) with ‖g(x) − g(y)‖₂ > ½‖W‖₂‖x − y‖₂: E = 2, n = m = r_e = 1, W = [1; 0],
    w_τ = 0, σ(b_τ) = 9/10 (τ = 0.45 everywhere), x = 0, y = 1/10. In exact arithmetic
    g(0) = (1/2, 1/2) and g(1/10) = (σ(0.1) − 0.45, 0.55 − σ(0.1)) / 0.1 = (0.7498, 0.2502), so
    ‖g(x) − g(y)‖₂ = 0.3533 against ½‖W‖₂·0.1 = 0.05."""
    cfg = AdaMoLEConfig(in_features=1, out_features=1, num_experts=2, expert_rank=1)
    a = AdaMoLE(cfg, dtype=torch.float64)
    with torch.no_grad():
        a.router.logits.dense().copy_(torch.tensor([[1.0], [0.0]]))
        a.w_tau.weight.zero_()
        a.b_tau.fill_(math.log(9.0))  # σ(log 9) = 9/10
    x = torch.zeros(1, dtype=torch.float64)
    return a, x, x + 0.1


@torch.no_grad()
def _as_soft_moelora(a: AdaMoLE) -> MoELoRA:
    """The soft input-router MoELoRA with the same A_i, B_i, W: equal when τ_max = 0 (then g = p)."""
    W = a.router.logits.dense()
    c = a.config
    return MoELoRA.from_factors(
        a.A.weight, a.B.weight, W, router="input", top_k=None, scale=c.scale
    )
