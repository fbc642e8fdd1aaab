"""CoMoL: a core-space mixture. Shared `A: r x n`, `B: m x r`, N cores `M_i: r x r`.

    g(x) = softmax(W_c A x),  W_c: N x r          (core router)
    g(x) = softmax(W_g x),    W_g: N x n          (without core routing, "w/o CR")
    Δ(x) = s · B (Σ_i g_i M_i) A x

Params per layer `r(n+m) + N·r² + N·r` (core router) or `r(n+m) + N·r² + N·n` (w/o CR). With
`share_ab`, A and B are shared by the layers of one module type (cores and router stay per layer).

The merged core Σ_i g_i M_i is never materialised per token (the reference code does: O(r²) memory per
token). Instead Σ_i g_i (M_i h) = [M_1 ... M_N] (g ⊗ h) is one matmul of the column-stacked cores
(r x N·r) against g ⊗ h, O(N·r) memory per token; the two are equal (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import sympy as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import sparse
from . import symbols as S
from .adapter import Adapter
from .errors import (
    ArgumentTypeError,
    ConfigError,
    ShapeError,
    require_finite_float,
    require_positive_int,
    require_top_k,
)
from .maps import Dense, Identity, LinearMap, SoftmaxRouter, init_tensor_
from .validate import (
    checked_construction,
    require_bool,
    require_layer_size,
    require_shared,
)


@dataclass(frozen=True, kw_only=True)
class CoMoLConfig:
    in_features: int  # n
    out_features: int  # m
    rank: int  # r
    num_cores: int  # N
    core_router: bool = True
    top_k: int | None = None
    scale: float = 1.0  # the reference sets lora_alpha = r, so s = 1
    share_ab: bool = False

    def __post_init__(self) -> None:
        require_positive_int("in_features", self.in_features)
        require_positive_int("out_features", self.out_features)
        require_positive_int("rank", self.rank)
        require_positive_int("num_cores", self.num_cores)
        require_top_k(self.top_k, self.num_cores, "num_cores")
        require_finite_float("scale", self.scale)
        require_bool("core_router", self.core_router)
        require_bool("share_ab", self.share_ab)
        r, N, n = self.rank, self.num_cores, self.in_features
        router = N * (r if self.core_router else n)
        require_layer_size(repr(self), r * (n + self.out_features) + N * r * r + router)


class CoMoL(Adapter):
    family: ClassVar[str] = "comol"
    config: CoMoLConfig

    def __init__(
        self,
        config: CoMoLConfig,
        *,
        ab: tuple[Dense, Dense] | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        dtype, device = checked_construction(config, CoMoLConfig, dtype, device)
        if config.share_ab and ab is not None:
            if not isinstance(ab, tuple | list) or len(ab) != 2:
                raise ArgumentTypeError(
                    f"ab={type(ab).__name__}: expected a pair (A, B) from CoMoL.shared_ab(config)"
                )
            require_shared("ab[0] (A)", ab[0], (config.rank, config.in_features), dtype, device)
            require_shared("ab[1] (B)", ab[1], (config.out_features, config.rank), dtype, device)
        super().__init__()
        c = self.config = config
        N, r = c.num_cores, c.rank
        if c.share_ab:
            if ab is None:
                raise ConfigError(
                    "ab=None with share_ab=True: expected the shared (A, B) from CoMoL.shared_ab(config)"
                )
            A, B = ab
            if A.shape != (r, c.in_features) or B.shape != (c.out_features, r):
                raise ShapeError(
                    f"ab shapes {A.shape}, {B.shape}: expected ({r}, {c.in_features}) and ({c.out_features}, {r})"
                )
            self.A, self.B = A, B
        else:
            if ab is not None:
                raise ConfigError(
                    "ab given with share_ab=False: expected share_ab=True to share A, B"
                )
            self.A, self.B = CoMoL.shared_ab(c, dtype=dtype, device=device)
        self.cores = nn.Parameter(torch.empty(N, r, r, dtype=dtype, device=device))  # M_1..M_N
        for i in range(N):  # init only
            init_tensor_(self.cores.data[i], "kaiming_uniform")
        reads = r if c.core_router else c.in_features
        W = Dense(
            N,
            reads,
            "kaiming_uniform",
            name="W_c" if c.core_router else "W_g",
            dtype=dtype,
            device=device,
        )
        self.router = SoftmaxRouter(W, c.top_k)

    @staticmethod
    def shared_ab(
        config: CoMoLConfig,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> tuple[Dense, Dense]:
        dtype, device = checked_construction(config, CoMoLConfig, dtype, device)
        A = Dense(
            config.rank, config.in_features, "kaiming_uniform", name="A", dtype=dtype, device=device
        )
        B = Dense(config.out_features, config.rank, "zeros", name="B", dtype=dtype, device=device)
        return A, B

    @property
    def num_experts(self) -> int:
        return self.config.num_cores

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        assert self.router is not None
        if sparse.use_sparse(self.router, x, sparse.COMOL_MAX_FRACTION):
            return sparse.comol_forward(self, x)
        c = self.config
        W = self.router.logits.dense()
        if c.core_router:
            h = F.linear(x, self.A.weight)  # (..., r)
            logits = F.linear(h, W)  # (..., N) = W_c A x
        else:  # one matmul [A; W_g] x: x is read once, and dx is one matmul
            h, logits = F.linear(x, torch.cat([self.A.weight, W])).split(
                [c.rank, c.num_cores], dim=-1
            )
        g = self.router.gate(logits)  # (..., N)
        gh = (g.unsqueeze(-1) * h.unsqueeze(-2)).flatten(-2)  # (..., N*r): blocks g_i h
        Mcat = self.cores.transpose(0, 1).flatten(1)  # (r, N*r) = [M_1 ... M_N]
        merged = F.linear(gh, Mcat)  # (..., r) = Σ_i g_i M_i h
        return F.linear(c.scale * merged, self.B.weight)

    def forward_materialised(self, x: Tensor) -> Tensor:
        """The reference code's order: build the per-token core Σ_i g_i M_i (r x r), then apply it."""
        self._check(x)
        assert self.router is not None
        c = self.config
        h = F.linear(x, self.A.weight)
        g = self.router(h if c.core_router else x)
        M = torch.einsum("...n,nij->...ij", g, self.cores)  # (..., r, r) per token
        return c.scale * F.linear((M @ h.unsqueeze(-1)).squeeze(-1), self.B.weight)

    def router_input_map(self) -> LinearMap:
        return self.A if self.config.core_router else Identity(self.in_features).to(self.A.weight)

    def reference_delta(self, x: Tensor) -> Tensor:
        """s·B (Σ_i g_i(x) M_i) A x, the merged core built per token (the reference code's order)."""
        return self.forward_materialised(x)

    def expert_matrices(self) -> Tensor:
        # P_i = s · B M_i A, (N, m, n)
        return self.config.scale * torch.einsum(
            "mi,nij,jk->nmk", self.B.weight, self.cores, self.A.weight
        )

    def shared_parameters(self) -> list[nn.Parameter]:
        return [self.A.weight, self.B.weight] if self.config.share_ab else []

    def param_formula(self) -> sp.Expr:
        router = S.N * S.r if self.config.core_router else S.N * S.n
        ab = 0 if self.config.share_ab else S.r * (S.n + S.m)
        return ab + S.N * S.r**2 + router

    def param_subs(self) -> dict[sp.Symbol, int]:
        c = self.config
        return {S.n: c.in_features, S.m: c.out_features, S.r: c.rank, S.N: c.num_cores}
