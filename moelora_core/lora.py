"""LoRA: `Δ(x) = s·B A x`, `A: r x n`, `B: m x r`. Parameters `r(n + m)`, MACs per token `r(n + m)`.

Unrouted (E = 1, g = 1): one expert P_1 = s·B A, factors ((B,), A, s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import sympy as sp
import torch
import torch.nn.functional as F
from torch import Tensor

from . import symbols as S
from .adapter import Adapter, AdapterSpecLike, ExpertFactors
from .errors import require_finite_float, require_positive_int
from .maps import Dense
from .spec import refuse_shared, spec_options
from .validate import checked_construction, require_layer_size


@dataclass(frozen=True, kw_only=True)
class LoRAConfig:
    in_features: int  # n
    out_features: int  # m
    rank: int  # r
    scale: float = 1.0  # s = alpha / r

    def __post_init__(self) -> None:
        require_positive_int("in_features", self.in_features)
        require_positive_int("out_features", self.out_features)
        require_positive_int("rank", self.rank)
        require_finite_float("scale", self.scale)
        require_layer_size(repr(self), self.rank * (self.in_features + self.out_features))


class LoRA(Adapter):
    family: ClassVar[str] = "lora"
    config_class: ClassVar[type] = LoRAConfig
    config: LoRAConfig

    @classmethod
    def config_from_spec(
        cls, spec: AdapterSpecLike, in_features: int, out_features: int
    ) -> LoRAConfig:
        """rank r and scale s from the spec (experts, top_k and the routers do not apply)."""
        refuse_shared(cls.family, spec)
        extra: dict[str, Any] = spec_options(LoRAConfig, spec, {"rank", "scale"})
        return LoRAConfig(
            in_features=in_features, out_features=out_features, rank=spec.rank, scale=spec.scale,
            **extra,
        )  # fmt: skip

    def __init__(
        self,
        config: LoRAConfig,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        dtype, device = checked_construction(config, LoRAConfig, dtype, device)
        super().__init__()
        c = self.config = config
        self.A = Dense(
            c.rank, c.in_features, "kaiming_uniform", name="A", dtype=dtype, device=device
        )  # r x n
        self.B = Dense(
            c.out_features, c.rank, "zeros", name="B", dtype=dtype, device=device
        )  # m x r
        self.router = None

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        h = self.config.scale * F.linear(x, self.A.weight)  # (..., r): s applied to the r latents
        return F.linear(h, self.B.weight)  # (..., m)

    def expert_matrices(self) -> Tensor:
        return (self.config.scale * (self.B.weight @ self.A.weight)).unsqueeze(0)  # (1, m, n)

    def reference_delta(self, x: Tensor) -> Tensor:
        """s·B (A x)."""
        self._check(x)
        h = torch.einsum("rn,...n->...r", self.A.weight, x)  # (..., r) = A x
        return self.config.scale * torch.einsum("mr,...r->...m", self.B.weight, h)

    def param_formula(self) -> sp.Expr:
        return S.r * (S.n + S.m)

    def macs_formula(self) -> sp.Expr:
        """A x (r·n), then B (m·r)."""
        return S.r * S.n + S.r * S.m

    def subs(self) -> dict[sp.Symbol, int]:
        c = self.config
        return {S.n: c.in_features, S.m: c.out_features, S.r: c.rank}

    @torch.no_grad()
    def expert_factors(self) -> ExpertFactors:
        """P_1 = s · B · A: left (B (1, m, r),), right A (1, r, n)."""
        B = self.B.weight.detach().to("cpu", torch.float64).unsqueeze(0)  # (1, m, r)
        A = self.A.weight.detach().to("cpu", torch.float64).unsqueeze(0)  # (1, r, n)
        return ExpertFactors((B,), A, float(self.config.scale))
