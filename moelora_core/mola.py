"""MoLA (Gao et al., 2024): E LoRA experts, an input router that keeps the top k, and the Switch
Transformer's load-balancing term.

    p(x) = softmax(W x),   W: E x n;        K(x) = the k largest p_i (ties to the lowest index)
    g_i(x) = p_i(x) / Σ_{j∈K(x)} p_j(x) for i ∈ K(x), else 0     (= softmax of the k kept logits)
    Δ(x) = s · Σ_i g_i(x) B_i A_i x,        A_i: r_e x n,  B_i: m x r_e

Load balancing over the T tokens (rows) of the last forward:

    f_i = #{(t, j): K(x_t)_j = i} / (k·T)     (share of the k·T routed token-slots; Σ_i f_i = 1)
    P_i = (1/T) Σ_t p_i(x_t)                   (mean router probability, before the top-k)
    L_aux = E · Σ_i f_i P_i                    (1 when f and P are uniform; its gradient flows through P)

`auxiliary_loss()` is L_aux: the trainers add w · Σ over the adapters (w: their weight, Switch's α = 0.01).
(The reference implementation divides the counts by T, not k·T, so Σ_i f_i = k and its term is k·L_aux.)
MoLA's own point, more experts in higher layers, is a per-layer choice of E (one config per layer).

Storage as MoELoRA's: A = [A_1; ...; A_E] (E·r_e x n), B = [B_1 ... B_E] (m x E·r_e), so the dense
forward is one matmul [A; W] x, the gate, a per-head scaling and one matmul by B:
    Δ(x) = s · B ((g ⊗ 1_{r_e}) ⊙ A x).
Params E·r_e(n+m) + E·n; dense MACs per token the same. The sparse path computes only the k chosen
experts. With the same A, B, W, MoLA *is* the input-router MoELoRA with top_k = k (its reduction): what
it adds is the training term.
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
from .adapter import (
    AdapterSpecLike,
    ExpertFactors,
    Reduction,
    RoutedAdapter,
    no_preparation,
    weighted_heads,
)
from .errors import require_finite_float, require_positive_int, require_top_k
from .maps import Dense, Identity, LinearMap, SoftmaxRouter, softmax_last, topk_mask
from .moelora import MoELoRA
from .preconditions import on
from .spec import refuse_shared, spec_expert_rank, spec_options
from .validate import checked_construction, require_layer_size


@dataclass(frozen=True, kw_only=True)
class MoLAConfig:
    in_features: int  # n
    out_features: int  # m
    num_experts: int  # E
    expert_rank: int  # r_e
    top_k: int = 2  # k, 1 <= k <= E (MoLA routes top-2)
    scale: float = 1.0  # s

    def __post_init__(self) -> None:
        require_positive_int("in_features", self.in_features)
        require_positive_int("out_features", self.out_features)
        require_positive_int("num_experts", self.num_experts)
        require_positive_int("expert_rank", self.expert_rank)
        require_positive_int("top_k", self.top_k)  # None (soft routing) is MoELoRA, not MoLA
        require_top_k(self.top_k, self.num_experts, "num_experts")
        require_finite_float("scale", self.scale)
        E, n = self.num_experts, self.in_features
        require_layer_size(repr(self), E * self.expert_rank * (n + self.out_features) + E * n)

    @property
    def rank(self) -> int:
        """Total rank r = E·r_e."""
        return self.num_experts * self.expert_rank


class MoLA(RoutedAdapter):
    family: ClassVar[str] = "mola"
    config_class: ClassVar[type] = MoLAConfig
    config: MoLAConfig

    @classmethod
    def config_from_spec(
        cls, spec: AdapterSpecLike, in_features: int, out_features: int
    ) -> MoLAConfig:
        """E = experts, r_e = expert_rank (default rank // experts), top_k (default min(2, E)),
        scale."""
        refuse_shared(cls.family, spec)
        extra: dict[str, Any] = spec_options(
            MoLAConfig, spec, {"num_experts", "expert_rank", "top_k", "scale"}
        )
        k = min(2, spec.experts) if spec.top_k is None else spec.top_k
        return MoLAConfig(
            in_features=in_features, out_features=out_features, num_experts=spec.experts,
            expert_rank=spec_expert_rank(spec), top_k=k, scale=spec.scale, **extra,
        )  # fmt: skip

    def __init__(
        self,
        config: MoLAConfig,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        dtype, device = checked_construction(config, MoLAConfig, dtype, device)
        super().__init__()
        c = self.config = config
        E, n = c.num_experts, c.in_features
        self.A = Dense(c.rank, n, "kaiming_uniform", name="A", dtype=dtype, device=device)
        self.B = Dense(c.out_features, c.rank, "zeros", name="B", dtype=dtype, device=device)
        W = Dense(E, n, "kaiming_uniform", name="W_g", dtype=dtype, device=device)
        self.router = SoftmaxRouter(W, c.top_k)
        self._balance: Tensor | None = None  # L_aux of the last forward

    @property
    def num_experts(self) -> int:
        return self.config.num_experts

    # ----- the maths ---------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        if sparse.use_sparse(self.router, x):
            return self.sparse_forward(x)
        c = self.config
        h, logits = F.linear(x, torch.cat([self.A.weight, self.router.logits.dense()])).split(
            [c.rank, c.num_experts], dim=-1
        )  # (..., r), (..., E): [A; W] x in one matmul
        flat = logits.reshape(-1, c.num_experts)  # (T, E)
        self._record_balance(flat, topk_mask(flat, c.top_k).sum(0))
        g = self.router.gate(logits)  # (..., E)
        return F.linear(weighted_heads(h, c.scale * g, c.expert_rank), self.B.weight)

    def sparse_forward(self, x: Tensor) -> Tensor:
        """Σ_j w_j B_{idx_j} A_{idx_j} x over the k chosen experts only (`stacked.sparse_topk`),
        recording the balance term from its logits and choices."""
        c = self.config
        out, logits, idx = stacked.sparse_topk(
            sparse.flat_tokens(x), self.A.weight, self.B.weight, self.router.logits.dense(),
            c.top_k, c.expert_rank, c.scale, latent=False,
        )  # fmt: skip
        self._record_balance(logits, torch.bincount(idx.flatten(), minlength=c.num_experts))
        return out.reshape(*x.shape[:-1], c.out_features)

    def _record_balance(self, logits: Tensor, counts: Tensor) -> None:
        """L_aux = E·Σ_i f_i P_i from the logits (T, E) and the slot counts per expert (E,)."""
        if torch._C._functorch.peek_interpreter_stack() is not None:
            return  # inside torch.func transforms the term would escape its transform
        c = self.config
        T = logits.shape[0]
        if T == 0:
            self._balance = logits.new_zeros(())
            return
        P = softmax_last(logits).mean(0)  # (E,)
        f = counts.to(P.dtype) / (c.top_k * T)  # (E,), Σ f = 1
        self._balance = c.num_experts * (f * P).sum()

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave the last forward's term behind: it belongs to that forward's graph
        (and a non-leaf tensor cannot be deep-copied)."""
        state: dict[str, Any] = dict(super().__getstate__())  # type: ignore[no-untyped-call]
        state["_balance"] = None
        return state

    def auxiliary_loss(self) -> Tensor | None:
        """L_aux = E·Σ_i f_i P_i of the last forward (None before any)."""
        return self._balance

    def router_input_map(self) -> LinearMap:
        return Identity(self.in_features).to(self.A.weight)

    def expert_matrices(self) -> Tensor:
        return stacked.expert_matrices(self)  # (E, m, n): s·B_i A_i

    def expert_factors(self) -> ExpertFactors:
        return stacked.expert_factors(self)

    def reference_delta(self, x: Tensor) -> Tensor:
        """s·Σ_i g_i(x) B_i (A_i x), summed over the expert axis."""
        self._check(x)
        g = self._weights(x)  # (..., E)
        return stacked.reference_sum(g, x, *stacked.blocks(self), self.config.scale)

    # ----- counting ----------------------------------------------------------------------------------
    def param_formula(self) -> sp.Expr:
        return S.E * S.r_e * (S.n + S.m) + S.E * S.n

    def macs_formula(self) -> sp.Expr:
        return S.E * S.r_e * (S.n + S.m) + S.E * S.n

    def sparse_macs_formula(self) -> sp.Expr | None:
        """Router, the down-projection of the k chosen experts (`gather_wins`) or of all, then the k
        chosen B_i (k a number, not a symbol); None at k = E, which always runs the dense path."""
        c, k = self.config, self.config.top_k
        if k == c.num_experts:
            return None
        gather = sparse.gather_wins(c.num_experts, k, c.expert_rank)
        down = k * S.r_e * S.n if gather else S.E * S.r_e * S.n
        return S.E * S.n + down + k * S.r_e * S.m

    def subs(self) -> dict[sp.Symbol, int]:
        c = self.config
        return {S.n: c.in_features, S.m: c.out_features, S.E: c.num_experts, S.r_e: c.expert_rank}

    # ----- declared claims ---------------------------------------------------------------------------
    @classmethod
    def reductions(cls) -> tuple[Reduction, ...]:
        """-> the input-router MoELoRA with top_k = k (same Δ and g, no precondition); identical
        experts -> LoRA (A_1, B_1)."""
        return (
            Reduction("mola_is_topk_moelora", "moelora", no_preparation, on(MoLA, _as_moelora),
                      unprepared_fails=False),
            Reduction("mola_equal_experts_is_lora", "lora", on(MoLA, stacked.equal_experts_),
                      on(MoLA, stacked.first_expert_lora)),
        )  # fmt: skip


@torch.no_grad()
def _as_moelora(a: MoLA) -> MoELoRA:
    """The input-router MoELoRA with top_k = k and the same A_i, B_i, W: the same Δ and g."""
    W = a.router.logits.dense()
    c = a.config
    return MoELoRA.from_factors(
        a.A.weight, a.B.weight, W, router="input", top_k=c.top_k, scale=c.scale
    )
