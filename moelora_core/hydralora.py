"""HydraLoRA: one shared down-projection, E up-projection heads, an input router.

    Δ(x) = s · Σ_i g_i(x) B_i A x,   A: r_e x n (shared),  B_i: m x r_e,  g = softmax(W_g x), W_g: E x n

Params `r_e·n + E·r_e·m + E·n`. Storage: the B_i are the column blocks of one `B: m x (E·r_e)`, so
Δ(x) = s · B (g ⊗ A x), with no loop over heads. MACs per token `(r_e + E)·n + E·r_e·m`; sparse top-k
`(r_e + E)·n + k·r_e·m` (the shared A x is computed once, only the k chosen heads B_i run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import sympy as sp
import torch
import torch.nn.functional as F
from torch import Tensor

from . import sparse, stacked
from . import symbols as S
from .adapter import AdapterSpecLike, ExpertFactors, Reduction, RoutedAdapter
from .errors import require_finite_float, require_positive_int, require_top_k
from .maps import Dense, HeadLayout, Identity, LinearMap, SoftmaxRouter
from .spec import refuse_shared, spec_expert_rank, spec_options
from .validate import checked_construction, require_layer_size


@dataclass(frozen=True, kw_only=True)
class HydraLoRAConfig:
    in_features: int  # n
    out_features: int  # m
    num_experts: int  # E (heads)
    expert_rank: int  # r_e (rank of the shared A)
    top_k: int | None = None
    scale: float = 1.0

    def __post_init__(self) -> None:
        require_positive_int("in_features", self.in_features)
        require_positive_int("out_features", self.out_features)
        require_positive_int("num_experts", self.num_experts)
        require_positive_int("expert_rank", self.expert_rank)
        require_top_k(self.top_k, self.num_experts, "num_experts")
        require_finite_float("scale", self.scale)
        E, r_e, n = self.num_experts, self.expert_rank, self.in_features
        require_layer_size(repr(self), r_e * n + E * r_e * self.out_features + E * n)


class HydraLoRA(RoutedAdapter):
    family: ClassVar[str] = "hydralora"
    config_class: ClassVar[type] = HydraLoRAConfig
    config: HydraLoRAConfig

    @classmethod
    def config_from_spec(
        cls, spec: AdapterSpecLike, in_features: int, out_features: int
    ) -> HydraLoRAConfig:
        """E = experts (heads), r_e = expert_rank (default rank // experts), top_k, scale."""
        refuse_shared(cls.family, spec)
        taken = {"num_experts", "expert_rank", "top_k", "scale"}
        extra: dict[str, Any] = spec_options(HydraLoRAConfig, spec, taken)
        return HydraLoRAConfig(
            in_features=in_features, out_features=out_features, num_experts=spec.experts,
            expert_rank=spec_expert_rank(spec), top_k=spec.top_k, scale=spec.scale, **extra,
        )  # fmt: skip

    def __init__(
        self,
        config: HydraLoRAConfig,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        dtype, device = checked_construction(config, HydraLoRAConfig, dtype, device)
        super().__init__()
        c = self.config = config
        self.heads = HeadLayout(c.num_experts, c.expert_rank)
        self.A = Dense(
            c.expert_rank, c.in_features, "kaiming_uniform", name="A", dtype=dtype, device=device
        )
        self.B = Dense(
            c.out_features,
            c.num_experts * c.expert_rank,
            "zeros",
            name="B",
            dtype=dtype,
            device=device,
        )
        W = Dense(
            c.num_experts, c.in_features, "kaiming_uniform", name="W_g", dtype=dtype, device=device
        )
        self.router = SoftmaxRouter(W, c.top_k)

    @property
    def num_experts(self) -> int:
        return self.config.num_experts

    def expert_B(self, i: int) -> Tensor:
        return self.heads.cols(self.B.weight, i)  # (m, r_e)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        if sparse.use_sparse(self.router, x):
            return self.sparse_forward(x)
        c = self.config
        h, logits = F.linear(x, torch.cat([self.A.weight, self.router.logits.dense()])).split(
            [c.expert_rank, c.num_experts], dim=-1
        )  # [A; W_g] x in one matmul: (..., r_e), (..., E)
        g = c.scale * self.router.gate(logits)  # (..., E)
        gh = (g.unsqueeze(-1) * h.unsqueeze(-2)).flatten(-2)  # (..., E*r_e) = s·g ⊗ h
        return F.linear(gh, self.B.weight)

    def router_input_map(self) -> LinearMap:
        return Identity(self.in_features).to(self.A.weight)

    def _stacks(self) -> tuple[Tensor, Tensor]:
        """The shared A as (1, r_e, n) (A_i = A) and the heads (B_i) as (E, m, r_e)."""
        c = self.config
        return self.A.weight.unsqueeze(0), stacked.up_blocks(
            self.B.weight, c.num_experts, c.expert_rank
        )

    def expert_matrices(self) -> Tensor:
        return stacked.matrices(*self._stacks(), self.config.scale)  # (E, m, n): s·B_i A

    def reference_delta(self, x: Tensor) -> Tensor:
        """s·Σ_i g_i(x) B_i (A x), summed over the head axis."""
        return stacked.reference_sum(self._weights(x), x, *self._stacks(), self.config.scale)

    def param_formula(self) -> sp.Expr:
        return S.r_e * S.n + S.E * S.r_e * S.m + S.E * S.n

    def macs_formula(self) -> sp.Expr:
        """[A; W_g] x (r_e·n + E·n), then B (E·r_e·m)."""
        return S.r_e * S.n + S.E * S.n + S.E * S.r_e * S.m

    def sparse_macs_formula(self) -> sp.Expr | None:
        """[A; W_g] x in full, then the k chosen heads B_i."""
        k = self.config.top_k
        return None if k is None else (S.r_e + S.E) * S.n + k * S.r_e * S.m

    def subs(self) -> dict[sp.Symbol, int]:
        c = self.config
        return {S.n: c.in_features, S.m: c.out_features, S.E: c.num_experts, S.r_e: c.expert_rank}

    def expert_factors(self) -> ExpertFactors:
        """P_i = s · B_i · A: left (B_i (E, m, r_e),), right A (1, r_e, n), shared by the heads."""
        return stacked.factors(*self._stacks(), self.config.scale)

    @classmethod
    def reductions(cls) -> tuple[Reduction, ...]:
        """Equal heads B_i = B_1 -> LoRA (A, B_1)."""
        from . import preconditions as pre

        return (
            Reduction("equal_heads_is_lora", "lora", pre.on(HydraLoRA, pre.equal_heads_),
                      pre.on(HydraLoRA, pre.first_head_lora)),
        )  # fmt: skip

    def sparse_forward(self, x: Tensor) -> Tensor:
        """Σ_j w_j B_{idx_j} (A x), the shared A x computed once (see `sparse`)."""
        c, k = self.config, sparse.top_k_of(self.router)
        xf = sparse.flat_tokens(x)
        W = self.router.logits.dense()
        h, logits = F.linear(xf, torch.cat([self.A.weight, W])).split(
            [c.expert_rank, c.num_experts], dim=-1
        )  # (T, r_e), (T, E)
        idx, w = sparse.topk_route(logits, k)
        coef = ((c.scale * w).unsqueeze(-1) * h.unsqueeze(-2)).flatten(-2)  # (T, k·r_e)
        cols = sparse.expert_columns(idx, c.expert_rank)
        out = sparse.mix_columns(cols, coef, self.B.weight.t().contiguous())
        return out.reshape(*x.shape[:-1], c.out_features)
