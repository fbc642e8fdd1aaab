r"""DenseLoRA: a shared encoder-decoder around one dense r x r matrix per layer.

    Δ(x) = s · GELU(B M GELU(A x)),    GELU(t) = t Φ(t)

A: r x n (encoder) and B: m x r (decoder) are shared by the layers of one module type (`make_shared`,
counted once by `shared_param_formula`: r(n + m)); M: r x r is per layer (zero init, so Δ = 0 at init;
A and B start kaiming-uniform, else no gradient would reach M). Parameters per layer `r²`. The forward
folds B M (m x r) once per call, so a token costs `r(n + m)` multiply-adds, LoRA's count.

Δ is not of the form Σ g_i P_i x (`linear_experts = False`: `expert_matrices`/`delta_weight` raise
NotLinearError). Δ(0) = 0 since GELU(0) = 0. Bounds use `lipschitz_chain()`:
‖Δ(x) − Δ(y)‖ ≤ |s| · c² · ‖A‖₂ ‖B M‖₂ · ‖x − y‖ with c = sup|GELU'| = GELU_LIPSCHITZ.

Proof that sup_t |GELU'(t)| = Φ(√2) + √2 φ(√2) = (1 + erf 1)/2 + 1/(e√π) = 1.12890415...:
GELU'(t) = Φ(t) + t φ(t) and GELU''(t) = 2φ(t) + t φ'(t) = φ(t)(2 − t²), since φ'(t) = −t φ(t).
So GELU' decreases on (−∞, −√2], increases on [−√2, √2] and decreases on [√2, ∞), with limits 0 at
−∞ and 1 at +∞. Its maximum is GELU'(√2) (> 1, the limit, since it decreases towards it) and its
minimum GELU'(−√2) = 1 − GELU'(√2) (Φ(−t) = 1 − Φ(t), φ even) ≈ −0.1289, whose absolute value is
smaller. By the mean value theorem GELU is c-Lipschitz with c = GELU'(√2), and no smaller constant
works (the slope at √2 is c). GELU_LIPSCHITZ = 1.1289042 is c rounded upward (checked with mpmath
at 50 digits in tests/test_denselora.py); ReLU's constant 1 is too small (refuted there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import sympy as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import symbols as S
from .adapter import Adapter, AdapterSpecLike, LipschitzChain, RoutingKind
from .errors import require_finite_float, require_positive_int
from .maps import Dense
from .spec import spec_options
from .validate import checked_construction, require_instance, require_layer_size, require_shared

GELU_LIPSCHITZ = 1.1289042  # ≥ sup |GELU'| = Φ(√2) + √2 φ(√2) = 1.12890415..., rounded upward


@dataclass(frozen=True, kw_only=True)
class DenseLoRAConfig:
    in_features: int  # n
    out_features: int  # m
    rank: int  # r
    scale: float = 1.0  # s

    def __post_init__(self) -> None:
        require_positive_int("in_features", self.in_features)
        require_positive_int("out_features", self.out_features)
        require_positive_int("rank", self.rank)
        require_finite_float("scale", self.scale)
        require_layer_size(
            repr(self), self.rank * (self.in_features + self.out_features + self.rank)
        )


class EncoderDecoder(nn.Module):
    """The part shared by the layers of one module type: encoder A (r x n), decoder B (m x r)."""

    def __init__(
        self,
        config: DenseLoRAConfig,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        dtype, device = checked_construction(config, DenseLoRAConfig, dtype, device)
        super().__init__()
        c = config
        self.A = Dense(
            c.rank, c.in_features, "kaiming_uniform", name="A", dtype=dtype, device=device
        )  # r x n
        self.B = Dense(
            c.out_features, c.rank, "kaiming_uniform", name="B", dtype=dtype, device=device
        )  # m x r


def gelu(t: Tensor) -> Tensor:
    """GELU(t) = t Φ(t) = t (1 + erf(t/√2)) / 2, written out (the reference path's activation)."""
    out: Tensor = 0.5 * t * (1.0 + torch.special.erf(t / math.sqrt(2.0)))
    return out


class DenseLoRA(Adapter):
    family: ClassVar[str] = "denselora"
    config_class: ClassVar[type] = DenseLoRAConfig
    routing_kind: ClassVar[RoutingKind] = "none"
    linear_experts: ClassVar[bool] = False
    config: DenseLoRAConfig

    def __init__(
        self,
        config: DenseLoRAConfig,
        *,
        shared: EncoderDecoder | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        dtype, device = checked_construction(config, DenseLoRAConfig, dtype, device)
        c = config
        if shared is None:  # a module type of one layer
            shared = EncoderDecoder(c, dtype=dtype, device=device)
        else:
            require_instance("shared", shared, EncoderDecoder)
            require_shared("shared.A", shared.A, (c.rank, c.in_features), dtype, device)
            require_shared("shared.B", shared.B, (c.out_features, c.rank), dtype, device)
        super().__init__()
        self.config = c
        self.shared = shared
        w = shared.A.weight
        self.M = nn.Parameter(torch.zeros(c.rank, c.rank, dtype=w.dtype, device=w.device))  # r x r
        self.router = None

    # ----- building ----------------------------------------------------------------------------------
    @classmethod
    def config_from_spec(
        cls, spec: AdapterSpecLike, in_features: int, out_features: int
    ) -> DenseLoRAConfig:
        """rank r and scale s. A and B are shared by the layers of a module type whatever
        `spec.shared` says: the sharing is DenseLoRA's definition, not an option."""
        extra: dict[str, Any] = spec_options(DenseLoRAConfig, spec, {"rank", "scale"})
        return DenseLoRAConfig(
            in_features=in_features, out_features=out_features, rank=spec.rank, scale=spec.scale,
            **extra,
        )  # fmt: skip

    @classmethod
    def make_shared(
        cls,
        config: DenseLoRAConfig,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> EncoderDecoder:
        return EncoderDecoder(config, dtype=dtype, device=device)

    @classmethod
    def create(
        cls,
        config: DenseLoRAConfig,
        *,
        shared: nn.Module | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> DenseLoRA:
        if shared is not None:
            shared = require_instance("shared", shared, EncoderDecoder)
        return cls(config, shared=shared, dtype=dtype, device=device)

    def shared_part(self) -> EncoderDecoder:
        return self.shared

    # ----- the maths ---------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        h = F.gelu(F.linear(x, self.shared.A.weight))  # (..., r) = GELU(A x)
        BM = self.shared.B.weight @ self.M  # (m, r), once per call
        out = F.gelu(F.linear(h, BM))  # (..., m)
        s = self.config.scale
        return out if s == 1.0 else s * out  # (s = 1: no pass over the output)

    def reference_delta(self, x: Tensor) -> Tensor:
        """s · GELU(B (M (GELU(A x)))), one map at a time, GELU written as t Φ(t)."""
        self._check(x)
        h = gelu(torch.einsum("rn,...n->...r", self.shared.A.weight, x))  # (..., r)
        z = torch.einsum("qr,...r->...q", self.M, h)  # (..., r) = M h
        v = torch.einsum("mq,...q->...m", self.shared.B.weight, z)  # (..., m) = B M h
        return self.config.scale * gelu(v)

    def lipschitz_chain(self) -> LipschitzChain:
        """Δ = s · GELU ∘ (B M) ∘ GELU ∘ A: maps (A, B M) exact float64, constants (c, c), scale |s|
        (the sign of s changes no distance)."""
        A = self.shared.A.weight.detach().to("cpu", torch.float64)
        B = self.shared.B.weight.detach().to("cpu", torch.float64)
        M = self.M.detach().to("cpu", torch.float64)
        return LipschitzChain(
            maps=(A, B @ M),
            constants=(GELU_LIPSCHITZ, GELU_LIPSCHITZ),
            scale=abs(float(self.config.scale)),
        )

    # ----- counting ----------------------------------------------------------------------------------
    def param_formula(self) -> sp.Expr:
        return S.r**2  # M; A and B are counted once per module type

    def shared_param_formula(self) -> sp.Expr:
        return S.r * (S.n + S.m)

    def macs_formula(self) -> sp.Expr:
        return S.r * (S.n + S.m)  # A x, then (B M) h; B M folded once per call

    def subs(self) -> dict[sp.Symbol, int]:
        c = self.config
        return {S.n: c.in_features, S.m: c.out_features, S.r: c.rank}
