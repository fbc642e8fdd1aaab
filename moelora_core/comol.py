"""CoMoL: a core-space mixture. Shared `A: r x n`, `B: m x r`, N cores `M_i: r x r`.

    g(x) = softmax(W_c A x),  W_c: N x r          (core router)
    g(x) = softmax(W_g x),    W_g: N x n          (without core routing, "w/o CR")
    Δ(x) = s · B (Σ_i g_i M_i) A x

Params per layer `r(n+m) + N·r² + N·r` (core router) or `r(n+m) + N·r² + N·n` (w/o CR). With
`share_ab`, A and B are shared by the layers of one module type (cores and router stay per layer).

The merged core Σ_i g_i M_i is never materialised per token (the reference code does: O(r²) memory per
token). Instead Σ_i g_i (M_i h) = [M_1 ... M_N] (g ⊗ h) is one matmul of the column-stacked cores
(r x N·r) against g ⊗ h, O(N·r) memory per token; the two are equal (tested). MACs per token
`r·n + router + N·r² + r·m`; sparse top-k `r·n + router + k·r² + r·m` (only the k chosen cores).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import sympy as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import sparse
from . import symbols as S
from .adapter import AdapterSpecLike, ExpertFactors, Reduction, RoutedAdapter
from .errors import (
    ArgumentTypeError,
    ConfigError,
    ShapeError,
    require_finite_float,
    require_positive_int,
    require_top_k,
)
from .maps import Dense, Identity, LinearMap, SoftmaxRouter, init_tensor_
from .spec import spec_options
from .validate import (
    checked_construction,
    require_bool,
    require_instance,
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


class SharedAB(nn.Module):
    """CoMoL's A (r x n) and B (m x r), shared by the layers of one module type under share_ab."""

    def __init__(self, A: Dense, B: Dense) -> None:
        super().__init__()
        self.A, self.B = A, B


class CoMoL(RoutedAdapter):
    family: ClassVar[str] = "comol"
    config_class: ClassVar[type] = CoMoLConfig
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

    # ----- building ----------------------------------------------------------------------------------
    @classmethod
    def config_from_spec(
        cls, spec: AdapterSpecLike, in_features: int, out_features: int
    ) -> CoMoLConfig:
        """rank r, N = experts, core_router, top_k, scale; `shared` is share_ab (A, B shared)."""
        taken = {"rank", "num_cores", "core_router", "top_k", "scale", "share_ab"}
        extra: dict[str, Any] = spec_options(CoMoLConfig, spec, taken)
        return CoMoLConfig(
            in_features=in_features, out_features=out_features, rank=spec.rank,
            num_cores=spec.experts, core_router=spec.core_router, top_k=spec.top_k,
            scale=spec.scale, share_ab=spec.shared, **extra,
        )  # fmt: skip

    @classmethod
    def create(
        cls,
        config: Any,
        *,
        shared: nn.Module | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> CoMoL:
        """With share_ab, `shared` is the `SharedAB` from `make_shared` (made here when None)."""
        require_instance("config", config, CoMoLConfig)
        ab = None if shared is None else require_instance("shared", shared, SharedAB)
        if config.share_ab and ab is None:
            ab = SharedAB(*cls.shared_ab(config, dtype=dtype, device=device))
        return cls(config, ab=None if ab is None else (ab.A, ab.B), dtype=dtype, device=device)

    @classmethod
    def make_shared(
        cls,
        config: Any,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> SharedAB | None:
        """The shared (A, B) under share_ab; None otherwise."""
        require_instance("config", config, CoMoLConfig)
        if not config.share_ab:
            return None
        return SharedAB(*cls.shared_ab(config, dtype=dtype, device=device))

    def shared_part(self) -> SharedAB | None:
        return SharedAB(self.A, self.B) if self.config.share_ab else None

    @property
    def num_experts(self) -> int:
        return self.config.num_cores

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        if sparse.use_sparse(self.router, x, sparse.COMOL_MAX_FRACTION):
            return self.sparse_forward(x)
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

    def param_formula(self) -> sp.Expr:
        router = S.N * S.r if self.config.core_router else S.N * S.n
        ab = 0 if self.config.share_ab else S.r * (S.n + S.m)
        return ab + S.N * S.r**2 + router

    def shared_param_formula(self) -> sp.Expr:
        """A and B (r(n + m)) once per module type under share_ab."""
        return S.r * (S.n + S.m) if self.config.share_ab else sp.Integer(0)

    def _router_macs(self) -> sp.Expr:
        return S.N * S.r if self.config.core_router else S.N * S.n

    def macs_formula(self) -> sp.Expr:
        """A, router, then [M_1 ... M_N] (g ⊗ h): one (r x N·r) matmul (N r²), then B."""
        return S.r * S.n + self._router_macs() + S.N * S.r**2 + S.r * S.m

    def sparse_macs_formula(self) -> sp.Expr | None:
        """A and the router in full, then the k chosen cores (k r²), then B."""
        k = self.config.top_k
        return None if k is None else S.r * S.n + self._router_macs() + k * S.r**2 + S.r * S.m

    def subs(self) -> dict[sp.Symbol, int]:
        c = self.config
        return {S.n: c.in_features, S.m: c.out_features, S.r: c.rank, S.N: c.num_cores}

    # ----- bounds, declared claims, sparse top-k -----------------------------------------------------
    @torch.no_grad()
    def expert_factors(self) -> ExpertFactors:
        """P_i = s · B M_i · A: left (B (1, m, r), M_i (N, r, r)), right A (1, r, n)."""
        B = self.B.weight.detach().to("cpu", torch.float64).unsqueeze(0)  # (1, m, r)
        M = self.cores.detach().to("cpu", torch.float64)  # (N, r, r)
        A = self.A.weight.detach().to("cpu", torch.float64).unsqueeze(0)  # (1, r, n)
        return ExpertFactors((B, M), A, self.config.scale)

    @classmethod
    def reductions(cls) -> tuple[Reduction, ...]:
        """-> MoELoRA with N experts of rank r (A_i = A, B_i = B M_i; any cores); equal cores -> LoRA
        (A, B M_1)."""
        from . import preconditions as pre
        from . import reductions as red

        return (
            Reduction("comol_is_moelora", "moelora", pre.no_preparation,
                      pre.on(CoMoL, red.comol_to_moelora), unprepared_fails=False),
            Reduction("equal_cores_is_lora", "lora", pre.on(CoMoL, pre.equal_cores_),
                      pre.on(CoMoL, pre.first_core_lora)),
        )  # fmt: skip

    def sparse_forward(self, x: Tensor) -> Tensor:
        """Σ_j w_j M_{idx_j} h with the k chosen cores, h = A x, then B (see `sparse`)."""
        c, k = self.config, sparse.top_k_of(self.router)
        N, r = c.num_cores, c.rank
        xf = sparse.flat_tokens(x)
        W = self.router.logits.dense()
        if c.core_router:
            h = F.linear(xf, self.A.weight)  # (T, r)
            logits = F.linear(h, W)
        else:
            h, logits = F.linear(xf, torch.cat([self.A.weight, W])).split([r, N], dim=-1)
        idx, w = sparse.topk_route(logits, k)
        coef = (w.unsqueeze(-1) * h.unsqueeze(-2)).flatten(-2)  # (T, k·r): blocks w_j h
        table = self.cores.transpose(1, 2).reshape(N * r, r)  # row i·r + ρ = column ρ of M_i
        merged = sparse.mix_columns(sparse.expert_columns(idx, r), coef, table)  # Σ_j w_j M_j h
        out = F.linear(c.scale * merged, self.B.weight)
        return out.reshape(*x.shape[:-1], c.out_features)
