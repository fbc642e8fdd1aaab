"""MoLA-style top-2 routing with a Switch load-balancing loss, and three plausible claims that are false.

    p(x) = softmax(W_g x),  g(x) = p restricted to its 2 largest entries, renormalised
    Δ(x) = s · Σ_i g_i(x) B_i A_i x
    L_bal = N · Σ_i f_i P_i,  f_i = share of the (token, slot) picks that go to expert i,  P_i = mean_t p_i(x_t)

True (checked): it is exactly the input-router MoELoRA with top_k = 2 (so its parameters are
E·r_e·(n + m) + E·n); L_bal = 1 when every token is routed uniformly (W_g = 0).
False (each comes back refuted with a counterexample):
  * "the parameters are E·r_e·(n + m)": the router's E·n are forgotten;
  * "the top-2 gate is ½‖W_g‖₂-Lipschitz, like softmax": it jumps where the 2nd and 3rd logits swap;
  * "L_bal >= 1, with the minimum at balanced routing": tokens that each favour a different pair of
    experts push it below 1.

Run: `moelora verify docs/examples/false_claim_variant.py` (exit code 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import sympy as sp
import torch
import torch.nn.functional as F
from torch import Tensor

from moelora_core import stacked
from moelora_core import symbols as S
from moelora_core.adapter import Adapter, weighted_heads
from moelora_core.errors import ConfigError, require_finite_float, require_positive_int
from moelora_core.maps import Dense, HeadLayout, Identity, LinearMap, SoftmaxRouter
from moelora_core.moelora import MoELoRA
from proofs_numeric import variants as v


@dataclass(frozen=True)
class MoLAConfig:
    in_features: int  # n
    out_features: int  # m
    num_experts: int  # E (= N in the loss)
    expert_rank: int  # r_e
    top_k: int = 2
    scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("in_features", "out_features", "num_experts", "expert_rank", "top_k"):
            require_positive_int(name, getattr(self, name))
        if self.top_k > self.num_experts:
            raise ConfigError(
                f"top_k={self.top_k}: expected top_k <= num_experts={self.num_experts}"
            )
        require_finite_float("scale", self.scale)


class MoLA(Adapter):
    family: ClassVar[str] = "mola"
    config: MoLAConfig

    def __init__(self, config: MoLAConfig) -> None:
        super().__init__()
        c = self.config = config
        self.heads = HeadLayout(c.num_experts, c.expert_rank)
        self.A = Dense(c.num_experts * c.expert_rank, c.in_features, name="A")  # [A_1; ...; A_E]
        self.B = Dense(
            c.out_features, c.num_experts * c.expert_rank, "zeros", name="B"
        )  # [B_1 ... B_E]
        self.router = SoftmaxRouter(Dense(c.num_experts, c.in_features, name="W_g"), c.top_k)

    @property
    def num_experts(self) -> int:
        return self.config.num_experts

    def forward(self, x: Tensor) -> Tensor:
        h = F.linear(self._check(x), self.A.weight)  # (..., E·r_e)
        g = self.routing(x)  # (..., E), top-2 renormalised
        assert g is not None
        return F.linear(
            weighted_heads(h, self.config.scale * g, self.config.expert_rank), self.B.weight
        )

    def load_balancing_loss(self, x: Tensor) -> Tensor:
        """N · Σ_i f_i P_i over the tokens of x (..., n)."""
        assert self.router is not None
        p = torch.softmax(self.router.logits(x), -1).flatten(0, -2)  # (T, E)
        picks = torch.zeros_like(p).scatter_(
            -1, p.topk(self.config.top_k, -1).indices, 1.0
        )  # (T, E)
        f = picks.mean(0) / self.config.top_k  # (E,), sums to 1
        return self.num_experts * (f * p.mean(0)).sum()

    def expert_matrices(self) -> Tensor:
        return stacked.expert_matrices(self)  # (E, m, n): s·B_i A_i

    def router_input_map(self) -> LinearMap:
        return Identity(self.in_features).to(self.A.weight)

    def param_formula(self) -> sp.Expr:
        return S.E * S.r_e * (S.n + S.m) + S.E * S.n

    def param_subs(self) -> dict[sp.Symbol, int]:
        c = self.config
        return {S.n: c.in_features, S.m: c.out_features, S.E: c.num_experts, S.r_e: c.expert_rank}


def as_moelora(a: MoLA) -> MoELoRA:
    """The input-router MoELoRA with the same A_i, B_i, W_g and top_k."""
    assert a.router is not None
    W = a.router.logits.dense()
    c = a.config
    return MoELoRA.from_factors(
        a.A.weight, a.B.weight, W, router="input", top_k=c.top_k, scale=c.scale
    )


def balanced_loss_is_one(a: Adapter, x: Tensor) -> float:
    """With W_g = 0 every token is routed uniformly and L_bal = 1."""
    assert isinstance(a, MoLA) and a.router is not None
    a.router.logits.dense().zero_()
    return abs(float(a.load_balancing_loss(x)) - 1)


def loss_at_least_one(a: Adapter, x: Tensor) -> v.Outcome:
    """L_bal >= 1: balanced routing minimises the Switch loss (FALSE)."""
    assert isinstance(a, MoLA)
    loss = float(a.load_balancing_loss(x))
    return v.Outcome(
        max(0.0, 1 - loss), 1e-12, f"L_bal = {loss:.6g} on these {x.shape[:-1].numel()} tokens"
    )


def half_router_norm(a: Adapter) -> float:
    """½‖W_g‖₂, the softmax bound (FALSE for the top-2 gate)."""
    assert a.router is not None
    return 0.5 * a.router.logits.spectral_norm()


SHAPES = {
    "in_features": (1, 6),
    "out_features": (1, 6),
    "num_experts": (2, 5),
    "expert_rank": (1, 2),
    "top_k": 2,
    "scale": [1.0, 0.5],
}

VARIANT = v.Variant(
    "mola_top2",
    build=MoLA,
    config=MoLAConfig,
    shapes=SHAPES,
    batches=[(8,), (4, 4)],  # the loss is a statistic over tokens: give it a few
    claims=[
        v.reduces_to("moelora", embed=as_moelora, name="is_top2_moelora"),
        v.property("balanced_loss_is_one", balanced_loss_is_one, tol=1e-12),
        # --- deliberately false
        v.param_formula("E*r_e*(n + m)", name="params_without_router"),
        v.lipschitz_bound(half_router_norm, name="top2_gate_lipschitz"),
        v.property("switch_loss_at_least_one", loss_at_least_one),
    ],
)
