"""AdaMoLE (Liu et al., 2024) written from the toolkit's maps, with the claims it satisfies.

    p(x) = softmax(W_g x)                         W_g: E x n      (router probabilities)
    τ(x) = τ_max · σ(w_τ · x + b_τ)               w_τ: 1 x n, b_τ (input-dependent threshold)
    g_i(x) = relu(p_i − τ) / Σ_j relu(p_j − τ)    (experts with p_i − τ >= 0, renormalised)
    Δ(x) = s · Σ_i g_i(x) B_i A_i x               A_i: r_e x n, B_i: m x r_e

τ_max defaults to 1/E, as in the reference code, so that the largest p_i (>= 1/E) always clears the
threshold; when rounding makes every relu(p_i − τ) zero the weights stay 0 (the reference's guard).
Parameters: E·r_e·(n + m) + E·n + n + 1.

Run: `moelora verify docs/examples/adamole_variant.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import sympy as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moelora_core import stacked
from moelora_core import symbols as S
from moelora_core.adapter import Adapter, weighted_heads
from moelora_core.errors import ConfigError, require_finite_float, require_positive_int
from moelora_core.lora import LoRA
from moelora_core.maps import Dense, HeadLayout, Identity, LinearMap, SoftmaxRouter
from moelora_core.moelora import MoELoRA
from proofs_numeric import variants as v


@dataclass(frozen=True)
class AdaMoLEConfig:
    in_features: int  # n
    out_features: int  # m
    num_experts: int  # E
    expert_rank: int  # r_e
    max_threshold: float | None = None  # τ_max; None: 1/E
    scale: float = 1.0  # s

    def __post_init__(self) -> None:
        for name in ("in_features", "out_features", "num_experts", "expert_rank"):
            require_positive_int(name, getattr(self, name))
        require_finite_float("scale", self.scale)
        if self.max_threshold is not None:
            require_finite_float("max_threshold", self.max_threshold)
            if not 0 <= self.max_threshold <= 1 / self.num_experts:
                raise ConfigError(
                    f"max_threshold={self.max_threshold}: expected 0 <= τ_max <= 1/E = {1 / self.num_experts:.4g}"
                )

    @property
    def tau_max(self) -> float:
        return 1 / self.num_experts if self.max_threshold is None else self.max_threshold


class AdaMoLE(Adapter):
    family: ClassVar[str] = "adamole"
    config: AdaMoLEConfig

    def __init__(self, config: AdaMoLEConfig) -> None:
        super().__init__()
        c = self.config = config
        E, n = c.num_experts, c.in_features
        self.heads = HeadLayout(E, c.expert_rank)
        self.A = Dense(E * c.expert_rank, n, name="A")  # [A_1; ...; A_E]
        self.B = Dense(c.out_features, E * c.expert_rank, "zeros", name="B")  # [B_1 ... B_E]
        self.router = SoftmaxRouter(Dense(E, n, name="W_g"))  # p(x)
        self.w_tau = Dense(1, n, name="w_tau")
        self.b_tau = nn.Parameter(torch.zeros(1))

    @property
    def num_experts(self) -> int:
        return self.config.num_experts

    def probabilities(self, x: Tensor) -> Tensor:
        """p(x) = softmax(W_g x), (..., n) -> (..., E)."""
        assert self.router is not None
        return self.router(x)

    def threshold(self, x: Tensor) -> Tensor:
        """τ(x) = τ_max σ(w_τ·x + b_τ), (..., n) -> (..., 1)."""
        return self.config.tau_max * torch.sigmoid(F.linear(x, self.w_tau.weight, self.b_tau))

    def routing(self, x: Tensor) -> Tensor:
        self._check(x)
        kept = torch.relu(self.probabilities(x) - self.threshold(x))  # (..., E)
        total = kept.sum(-1, keepdim=True)
        return kept / torch.where(total > 0, total, torch.ones_like(total))

    def forward(self, x: Tensor) -> Tensor:
        h = F.linear(self._check(x), self.A.weight)  # (..., E·r_e)
        g = self.routing(x)  # (..., E)
        return F.linear(
            weighted_heads(h, self.config.scale * g, self.config.expert_rank), self.B.weight
        )

    def expert_matrices(self) -> Tensor:
        return stacked.expert_matrices(self)  # (E, m, n): s·B_i A_i

    def router_input_map(self) -> LinearMap:
        return Identity(self.in_features).to(self.A.weight)

    def param_formula(self) -> sp.Expr:
        return S.E * S.r_e * (S.n + S.m) + S.E * S.n + S.n + 1

    def param_subs(self) -> dict[sp.Symbol, int]:
        c = self.config
        return {S.n: c.in_features, S.m: c.out_features, S.E: c.num_experts, S.r_e: c.expert_rank}


# ----- embeddings --------------------------------------------------------------------------------------


def equal_experts(a: AdaMoLE) -> None:
    """Set every (A_i, B_i) to (A_1, B_1)."""
    stacked.equal_experts_(a)


def first_expert_as_lora(a: AdaMoLE) -> LoRA:
    """LoRA with A = A_1, B = B_1 (exact when E = 1 or all experts are equal: Σ_i g_i = 1)."""
    return stacked.first_expert_lora(a)


def as_input_moelora(a: AdaMoLE) -> MoELoRA:
    """The input-router MoELoRA with the same A_i, B_i, W_g (exact when τ_max = 0)."""
    assert a.router is not None
    W = a.router.logits.dense()
    return MoELoRA.from_factors(
        a.A.weight, a.B.weight, W, router="input", top_k=None, scale=a.config.scale
    )


def lora_as_adamole(lora: LoRA) -> AdaMoLE:
    """A LoRA of rank r is an AdaMoLE with one expert of rank r (g = 1 whatever the router)."""
    c = lora.config
    out = AdaMoLE(AdaMoLEConfig(c.in_features, c.out_features, 1, c.rank, None, c.scale)).to(
        lora.A.weight
    )
    out.A.weight.copy_(lora.A.weight)
    out.B.weight.copy_(lora.B.weight)
    return out


# ----- bounds and properties ---------------------------------------------------------------------------


def half_router_norm(a: AdaMoLE) -> float:
    """½‖W_g‖₂: the softmax Jacobian has norm <= ½."""
    assert a.router is not None
    return 0.5 * a.router.logits.spectral_norm()


def threshold_bound(a: AdaMoLE) -> float:
    """τ_max ‖w_τ‖₂ / 4: σ' <= 1/4."""
    return a.config.tau_max * a.w_tau.spectral_norm() / 4


def gate_is_a_distribution(a: Adapter, x: Tensor) -> float:
    """g(x) >= 0, Σ_i g_i(x) = 1, and an expert is active only if p_i(x) >= τ(x)."""
    assert isinstance(a, AdaMoLE)
    g, p, tau = a.routing(x), a.probabilities(x), a.threshold(x)
    off_threshold = (g * (p < tau)).abs().max()  # weight given to an expert below the threshold
    return float(
        torch.stack([(g.sum(-1) - 1).abs().max(), (-g).clamp_min(0).max(), off_threshold]).max()
    )


VARIANT = v.Variant(
    "adamole",
    build=AdaMoLE,
    config=AdaMoLEConfig,
    shapes={
        "in_features": (1, 8),
        "out_features": (1, 8),
        "num_experts": (1, 4),
        "expert_rank": (1, 3),
        "max_threshold": [None, 0.0, 0.1],
        "scale": [1.0, 0.5],
    },
    claims=[
        # E is drawn from 1..4, so this includes "one expert is LoRA"
        # τ < 1/E <= max_i p_i keeps some weight positive; at τ_max = 1/E (the default) σ rounds to 1
        # for large logits and every weight is 0 (the search phase's large_weights finds it)
        v.reduces_to(
            "lora",
            embed=first_expert_as_lora,
            when=equal_experts,
            where=lambda c: c.tau_max < 1 / c.num_experts,
            name="equal_experts_is_lora",
        ),
        v.reduces_to(
            "moelora",
            embed=as_input_moelora,
            shapes={"max_threshold": 0.0},
            name="zero_threshold_is_moelora",
        ),
        v.embeds("lora", embed=lora_as_adamole),
        v.param_formula("E*r_e*(n + m) + E*n + n + 1"),
        v.complexity("E*r_e*(n + m) + E*n + n + 1", theta="E*r_e*(n + m)", variables="n m E r_e"),
        v.lipschitz_bound(
            half_router_norm,
            of="probabilities",
            name="router_probabilities_lipschitz",
            max_examples=40,
        ),
        v.lipschitz_bound(
            threshold_bound, of="threshold", name="threshold_lipschitz", max_examples=40
        ),
        v.property(
            "gate_is_a_distribution",
            gate_is_a_distribution,
            tol=1e-12,
            where=lambda c: (
                c.tau_max < 1 / c.num_experts
            ),  # as above: at τ = 1/E every g_i can be 0
        ),
        v.lipschitz_bound(
            half_router_norm,
            name="gate_lipschitz_like_softmax",
            statement="the thresholded gate g(x) is ½‖W_g‖₂-Lipschitz like softmax (false: renormalising "
            "by Σ relu(p_j − τ) amplifies by up to 1/(1 − E·τ))",
            expect="refuted",
            shapes={
                "num_experts": (2, 4)
            },  # with E = 1 the search finds a float64 artefact instead
            max_examples=40,
        ),
    ],
)
