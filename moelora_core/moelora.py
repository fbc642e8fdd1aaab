"""MoELoRA (MoLoRA): E LoRA experts mixed by a softmax router.

    Δ(x) = s · Σ_i g_i(x) B_i A_i x,     A_i: r_e x n,  B_i: m x r_e

Input router (MoLoRA):  g(x) = softmax(W_g x),  W_g: E x n.        Params E·r_e(n+m) + E·n.
Latent router:          g(x) = softmax(W_r h),  h = [A_1 x; ...; A_E x] ∈ R^r (r = E·r_e),
                        W_r: E x r.                                 Params E·r_e(n+m) + E·r.
Top-k: keep the k largest g_i and renormalise them to sum 1 (MoLA style).

Storage: the A_i are the row blocks of one `A: r x n`, the B_i the column blocks of one `B: m x r`, so
the forward pass is two matmuls and a per-head scaling, with no loop over experts:
    Δ(x) = s · B ((g ⊗ 1_{r_e}) ⊙ A x).
MACs per token: E·r_e(n + m) + E·n (input router) or + E·E·r_e (latent router). Sparse top-k: only the
k chosen experts' B_i (k·r_e·m), and their A_i when gathering x pays (k·r_e·n instead of E·r_e·n).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import sympy as sp
import torch
import torch.nn.functional as F
from torch import Tensor

from . import sparse, stacked
from . import symbols as S
from .adapter import AdapterSpecLike, ExpertFactors, Reduction, RoutedAdapter, weighted_heads
from .errors import ConfigError, require_finite_float, require_positive_int, require_top_k
from .maps import Dense, HeadLayout, Identity, LinearMap, SoftmaxRouter
from .spec import refuse_shared, spec_expert_rank, spec_options
from .validate import checked_construction, require_layer_size

RouterKind = Literal["input", "latent"]


@dataclass(frozen=True, kw_only=True)
class MoELoRAConfig:
    in_features: int  # n
    out_features: int  # m
    num_experts: int  # E
    expert_rank: int  # r_e
    router: RouterKind = "input"
    top_k: int | None = None  # None: soft routing over all E
    scale: float = 1.0

    def __post_init__(self) -> None:
        require_positive_int("in_features", self.in_features)
        require_positive_int("out_features", self.out_features)
        require_positive_int("num_experts", self.num_experts)
        require_positive_int("expert_rank", self.expert_rank)
        if self.router not in ("input", "latent"):
            raise ConfigError(f"router={self.router!r}: expected 'input' or 'latent'")
        require_top_k(self.top_k, self.num_experts, "num_experts")
        require_finite_float("scale", self.scale)
        E, r, n = self.num_experts, self.rank, self.in_features
        require_layer_size(
            repr(self), r * (n + self.out_features) + E * (n if self.router == "input" else r)
        )

    @property
    def rank(self) -> int:
        """Total rank r = E·r_e."""
        return self.num_experts * self.expert_rank


class MoELoRA(RoutedAdapter):
    family: ClassVar[str] = "moelora"
    config_class: ClassVar[type] = MoELoRAConfig
    config: MoELoRAConfig

    @classmethod
    def config_from_spec(
        cls, spec: AdapterSpecLike, in_features: int, out_features: int
    ) -> MoELoRAConfig:
        """E = experts, r_e = expert_rank (default rank // experts), router, top_k, scale."""
        refuse_shared(cls.family, spec)
        if spec.router not in ("input", "latent"):
            raise ConfigError(f"router={spec.router!r}: expected 'input' or 'latent'")
        router: RouterKind = "latent" if spec.router == "latent" else "input"
        taken = {"num_experts", "expert_rank", "router", "top_k", "scale"}
        extra: dict[str, Any] = spec_options(MoELoRAConfig, spec, taken)
        return MoELoRAConfig(
            in_features=in_features, out_features=out_features, num_experts=spec.experts,
            expert_rank=spec_expert_rank(spec), router=router, top_k=spec.top_k, scale=spec.scale,
            **extra,
        )  # fmt: skip

    @classmethod
    @torch.no_grad()
    def from_factors(
        cls, A: Tensor, B: Tensor, W: Tensor, *, router: RouterKind, top_k: int | None, scale: float
    ) -> MoELoRA:
        """The MoELoRA s·Σ_i g_i B_i A_i x with A = [A_1; ...; A_E] (E·r_e x n), B = [B_1 ... B_E]
        (m x E·r_e) and router logits W (E x n for an input router, E x E·r_e for a latent one), all
        copied; E = W.shape[0], r_e = A.shape[0] / E, dtype and device those of A."""
        E = W.shape[0]
        cfg = MoELoRAConfig(
            in_features=A.shape[1], out_features=B.shape[0], num_experts=E,
            expert_rank=A.shape[0] // E, router=router, top_k=top_k, scale=scale,
        )  # fmt: skip
        out = cls(cfg, dtype=A.dtype, device=A.device)
        out.A.weight.copy_(A)
        out.B.weight.copy_(B)
        out.router.logits.dense().copy_(W)
        return out

    def __init__(
        self,
        config: MoELoRAConfig,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        dtype, device = checked_construction(config, MoELoRAConfig, dtype, device)
        super().__init__()
        c = self.config = config
        E, r = c.num_experts, c.rank
        self.heads = HeadLayout(E, c.expert_rank)
        self.A = Dense(
            r, c.in_features, "kaiming_uniform", name="A", dtype=dtype, device=device
        )  # [A_1; ...; A_E]
        self.B = Dense(
            c.out_features, r, "zeros", name="B", dtype=dtype, device=device
        )  # [B_1 ... B_E]
        reads = c.in_features if c.router == "input" else r
        W = Dense(
            E,
            reads,
            "kaiming_uniform",
            name="W_g" if c.router == "input" else "W_r",
            dtype=dtype,
            device=device,
        )
        self.router = SoftmaxRouter(W, c.top_k)

    @property
    def num_experts(self) -> int:
        return self.config.num_experts

    def expert_A(self, i: int) -> Tensor:
        return self.heads.rows(self.A.weight, i)  # (r_e, n)

    def expert_B(self, i: int) -> Tensor:
        return self.heads.cols(self.B.weight, i)  # (m, r_e)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        if sparse.use_sparse(self.router, x):
            return self.sparse_forward(x)
        c = self.config
        if c.router == "input":  # one matmul [A; W_g] x: x is read once, and dx is one matmul
            h, logits = F.linear(x, torch.cat([self.A.weight, self.router.logits.dense()])).split(
                [c.rank, c.num_experts], dim=-1
            )  # (..., r), (..., E)
        else:
            h = F.linear(x, self.A.weight)  # (..., r)
            logits = F.linear(h, self.router.logits.dense())  # (..., E) = W_r h
        g = self.router.gate(logits)  # (..., E)
        return F.linear(weighted_heads(h, c.scale * g, c.expert_rank), self.B.weight)

    def router_input_map(self) -> LinearMap:
        return (
            Identity(self.in_features).to(self.A.weight)
            if self.config.router == "input"
            else self.A
        )

    def expert_matrices(self) -> Tensor:
        return stacked.expert_matrices(self)  # (E, m, n): s·B_i A_i

    def reference_delta(self, x: Tensor) -> Tensor:
        """s·Σ_i g_i(x) B_i (A_i x), summed over the expert axis."""
        return stacked.reference_sum(self._weights(x), x, *stacked.blocks(self), self.config.scale)

    def param_formula(self) -> sp.Expr:
        router = S.E * S.n if self.config.router == "input" else S.E * (S.E * S.r_e)
        return S.E * S.r_e * (S.n + S.m) + router

    def macs_formula(self) -> sp.Expr:
        """[A; W_g] x or A x then W_r h, then B: E·r_e(n + m) + router."""
        router = S.E * S.n if self.config.router == "input" else S.E**2 * S.r_e
        return S.E * S.r_e * (S.n + S.m) + router

    def sparse_macs_formula(self) -> sp.Expr | None:
        """Router, then the k chosen experts (k a number, not a symbol). When `sparse.gather_wins`,
        only their A_i x (a latent router reads x through W_r A, folded once per call); else all of A x."""
        c, k = self.config, self.config.top_k
        if k is None:
            return None
        if sparse.gather_wins(c.num_experts, k, c.expert_rank):  # latent: W_r A folded per call
            return S.E * S.n + k * S.r_e * S.n + k * S.r_e * S.m
        if c.router == "latent":
            return S.E * S.r_e * S.n + S.E * S.E * S.r_e + k * S.r_e * S.m
        return S.E * S.n + S.E * S.r_e * S.n + k * S.r_e * S.m

    def subs(self) -> dict[sp.Symbol, int]:
        c = self.config
        return {S.n: c.in_features, S.m: c.out_features, S.E: c.num_experts, S.r_e: c.expert_rank}

    @torch.no_grad()
    def expert_factors(self) -> ExpertFactors:
        """P_i = s · B_i · A_i: left (B_i (E, m, r_e),), right A_i (E, r_e, n)."""
        return stacked.expert_factors(self)

    @classmethod
    def reductions(cls) -> tuple[Reduction, ...]:
        """Identical experts -> LoRA (A_1, B_1); -> CoMoL of rank E·r_e (block-selector cores);
        latent router -> TalkLoRA (K_i = I, T = I)."""
        from . import preconditions as pre
        from . import reductions as red

        return (
            Reduction("identical_experts_is_lora", "lora", pre.on(MoELoRA, stacked.equal_experts_),
                      pre.on(MoELoRA, stacked.first_expert_lora)),
            Reduction("moelora_in_comol", "comol", pre.no_preparation,
                      pre.on(MoELoRA, red.moelora_to_comol), unprepared_fails=False),
            Reduction("latent_moelora_is_talklora", "talklora", pre.no_preparation,
                      pre.on(MoELoRA, red.moelora_to_talklora), unprepared_fails=False,
                      applies=_latent),
        )  # fmt: skip

    def sparse_forward(self, x: Tensor) -> Tensor:
        """Σ_j w_j B_{idx_j} A_{idx_j} x with the k chosen experts only (`stacked.sparse_topk`)."""
        c = self.config
        out, _, _ = stacked.sparse_topk(
            sparse.flat_tokens(x), self.A.weight, self.B.weight, self.router.logits.dense(),
            sparse.top_k_of(self.router), c.expert_rank, c.scale, latent=c.router == "latent",
        )  # fmt: skip
        return out.reshape(*x.shape[:-1], c.out_features)


def _latent(config: Any) -> bool:
    """The configs on which MoELoRA -> TalkLoRA is claimed: a latent router."""
    return getattr(config, "router", None) == "latent"
