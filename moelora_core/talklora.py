"""TalkLoRA: a shared down-projection split into E heads, per-head experts, and a talking module that
mixes the heads for the router only.

    h   = A x ∈ R^r,  A: r x n,  heads h_i ∈ R^{r/E} (contiguous blocks; r divisible by E)
    h̃   = (T ⊗ I_{r/E}) h,  i.e. h̃_i = Σ_j T_ij h_j,   T: E x E   (talking module)
    g   = softmax(W_r h̃),  W_r: E x r
    Δ(x) = s · Σ_i g_i B_i K_i h_i,  K_i: (r/E) x (r/E),  B_i: m x (r/E)   (experts see un-talked heads)

Per layer params `r·n + r²/E + E² + E·r + r·m`; with `share_b` the `B_i` are shared by every layer of
one module type (as in the reference code) and `r·m` is counted once per module type, not per layer.
The reference code initialises T with kaiming-uniform (not identity) and does not constrain it; it has
no α/r scaling (s = 1).

Storage: K is one block-diagonal map diag(K_1..K_E), B one `m x r` matrix [B_1 ... B_E], so
    Δ(x) = s · B ((g ⊗ 1_{r/E}) ⊙ K A x)     with no loop over experts.
MACs per token `r·n + r² + E·r + r·m` (the dense diag(K_i) costs r², one matmul beating E tiny ones);
sparse top-k `r·n + E·r + k·(r/E)² + k·(r/E)·m` (the router reads every talked head).
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
from .adapter import AdapterSpecLike, ExpertFactors, Reduction, RoutedAdapter, weighted_heads
from .errors import (
    ConfigError,
    ShapeError,
    require_finite_float,
    require_positive_int,
    require_top_k,
)
from .maps import (
    INIT_NAMES,
    BlockDiagonal,
    Dense,
    HeadLayout,
    Init,
    KronIdentity,
    LinearMap,
    SoftmaxRouter,
)
from .spec import spec_options
from .validate import (
    checked_construction,
    require_bool,
    require_choice,
    require_instance,
    require_layer_size,
    require_shared,
)


@dataclass(frozen=True, kw_only=True)
class TalkLoRAConfig:
    in_features: int  # n
    out_features: int  # m
    rank: int  # r (total; r/E per head)
    num_experts: int = 4  # E (hard-coded 4 in the reference code)
    top_k: int | None = None
    scale: float = 1.0  # the reference code has none
    share_b: bool = False  # B_i shared across the layers of one module type
    talk_init: Init = "kaiming_uniform"  # the reference's init; "identity" gives T = I

    def __post_init__(self) -> None:
        require_positive_int("in_features", self.in_features)
        require_positive_int("out_features", self.out_features)
        require_positive_int("rank", self.rank)
        require_positive_int("num_experts", self.num_experts)
        if self.rank % self.num_experts != 0:
            raise ConfigError(
                f"rank={self.rank}: expected a multiple of num_experts={self.num_experts} "
                "(the rank is split into E equal heads)"
            )
        require_top_k(self.top_k, self.num_experts, "num_experts")
        require_finite_float("scale", self.scale)
        require_bool("share_b", self.share_b)
        require_choice("talk_init", self.talk_init, INIT_NAMES)
        r, E, n, m = self.rank, self.num_experts, self.in_features, self.out_features
        require_layer_size(repr(self), r * (n + m) + r * r // E + E * E + E * r)

    @property
    def head_dim(self) -> int:
        return self.rank // self.num_experts


_TALK_ALIAS, _TALK_KEY = "talk.talk.weight", "T.weight"


def _drop_talk_alias(module: nn.Module, state: dict[str, Any], prefix: str, meta: Any) -> None:
    state.pop(prefix + _TALK_ALIAS, None)


def _fill_talk_alias(module: nn.Module, state: dict[str, Any], prefix: str, *_: Any) -> None:
    if prefix + _TALK_KEY in state:
        state.setdefault(prefix + _TALK_ALIAS, state[prefix + _TALK_KEY])


class TalkLoRA(RoutedAdapter):
    family: ClassVar[str] = "talklora"
    config_class: ClassVar[type] = TalkLoRAConfig
    config: TalkLoRAConfig

    def __init__(
        self,
        config: TalkLoRAConfig,
        *,
        b: Dense | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        dtype, device = checked_construction(config, TalkLoRAConfig, dtype, device)
        if config.share_b and b is not None:
            require_shared("b", b, (config.out_features, config.rank), dtype, device)
        super().__init__()
        c = self.config = config
        E, r, d = c.num_experts, c.rank, c.head_dim
        self.heads = HeadLayout(E, d)
        self.A = Dense(
            r, c.in_features, "kaiming_uniform", name="A", dtype=dtype, device=device
        )  # r x n
        self.K = BlockDiagonal(
            E, d, d, "kaiming_uniform", name="K", dtype=dtype, device=device
        )  # diag(K_i)
        self.T = Dense(E, E, c.talk_init, name="T", dtype=dtype, device=device)  # talking module
        self.talk = KronIdentity(self.T, d)  # T ⊗ I_d (holds the same Dense as self.T)
        # T is reachable as `T` and as `talk.talk`: the state dict holds it once, as `T.weight`
        # (safetensors refuses aliased tensors), and loading fills the alias from it.
        self.register_state_dict_post_hook(_drop_talk_alias)  # type: ignore[no-untyped-call]
        self.register_load_state_dict_pre_hook(_fill_talk_alias)  # type: ignore[no-untyped-call]
        self.router = SoftmaxRouter(
            Dense(E, r, "kaiming_uniform", name="W_r", dtype=dtype, device=device), c.top_k
        )
        if c.share_b:
            if b is None:
                raise ConfigError(
                    "b=None with share_b=True: expected the shared B, from TalkLoRA.shared_b(config)"
                )
            if b.shape != (c.out_features, r):
                raise ShapeError(
                    f"b.shape={b.shape}: expected ({c.out_features}, {r}) = (out_features, rank)"
                )
            self.B = b
        else:
            if b is not None:
                raise ConfigError(
                    "b given with share_b=False: expected share_b=True to share B across layers"
                )
            self.B = Dense(
                c.out_features, r, "zeros", name="B", dtype=dtype, device=device
            )  # [B_1 ... B_E]

    @staticmethod
    def shared_b(
        config: TalkLoRAConfig,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Dense:
        """The B = [B_1 ... B_E] (m x r) that layers of one module type share."""
        dtype, device = checked_construction(config, TalkLoRAConfig, dtype, device)
        return Dense(
            config.out_features, config.rank, "zeros", name="B", dtype=dtype, device=device
        )

    # ----- building ----------------------------------------------------------------------------------
    @classmethod
    def config_from_spec(
        cls, spec: AdapterSpecLike, in_features: int, out_features: int
    ) -> TalkLoRAConfig:
        """rank r, E = experts, top_k, scale; `shared` is share_b (B shared by a module type)."""
        taken = {"rank", "num_experts", "top_k", "scale", "share_b"}
        extra: dict[str, Any] = spec_options(TalkLoRAConfig, spec, taken)
        return TalkLoRAConfig(
            in_features=in_features, out_features=out_features, rank=spec.rank,
            num_experts=spec.experts, top_k=spec.top_k, scale=spec.scale, share_b=spec.shared,
            **extra,
        )  # fmt: skip

    @classmethod
    def create(
        cls,
        config: Any,
        *,
        shared: nn.Module | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> TalkLoRA:
        """With share_b, `shared` is the B from `make_shared` (made here when None)."""
        require_instance("config", config, TalkLoRAConfig)
        b = None if shared is None else require_instance("shared", shared, Dense)
        if config.share_b and b is None:
            b = cls.shared_b(config, dtype=dtype, device=device)
        return cls(config, b=b, dtype=dtype, device=device)

    @classmethod
    def make_shared(
        cls,
        config: Any,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Dense | None:
        """The shared B (m x r) under share_b; None otherwise."""
        require_instance("config", config, TalkLoRAConfig)
        return cls.shared_b(config, dtype=dtype, device=device) if config.share_b else None

    def shared_part(self) -> Dense | None:
        return self.B if self.config.share_b else None

    @property
    def num_experts(self) -> int:
        return self.config.num_experts

    @property
    def talking(self) -> Dense:
        """The talking module T (E x E), for callers that ask (`adapter.HasTalking`)."""
        return self.T

    def expert_B(self, i: int) -> Tensor:
        return self.heads.cols(self.B.weight, i)  # (m, r/E)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        if sparse.use_sparse(self.router, x):
            return self.sparse_forward(x)
        c = self.config
        h = F.linear(x, self.A.weight)  # (..., r)
        # One small matmul gives the expert heads K_i h_i and the logits W_r (T ⊗ I) h: the r x r
        # block-diagonal K and the E x r product W_r (T ⊗ I) are stacked (O(E·r²) per call).
        W = torch.cat([self.K.dense(), self.router.logits.dense() @ self.talk.dense()])  # (r+E, r)
        k, logits = F.linear(h, W).split([c.rank, c.num_experts], dim=-1)  # (..., r), (..., E)
        g = self.router.gate(logits)  # (..., E) from the talked heads
        return F.linear(weighted_heads(k, c.scale * g, c.head_dim), self.B.weight)

    def router_input_map(self) -> LinearMap:
        return self.talk @ self.A  # x -> (T ⊗ I) A x

    def expert_matrices(self) -> Tensor:
        c = self.config
        KA = self.K(self.A.weight.T).T  # (r, n): rows block i = K_i A_(i)
        Bh = self.B.weight.unflatten(1, (c.num_experts, c.head_dim))  # (m, E, d)
        return c.scale * torch.einsum(
            "mei,ein->emn", Bh, KA.unflatten(0, (c.num_experts, c.head_dim))
        )

    def reference_delta(self, x: Tensor) -> Tensor:
        """s·Σ_i g_i(x) B_i K_i h_i with h = A x split into heads, g from the talked heads."""
        c = self.config
        g = self._weights(x)  # (..., E) = softmax(W_r (T ⊗ I) A x)
        h = torch.einsum("rn,...n->...r", self.A.weight, x)  # (..., r)
        heads = h.unflatten(-1, (c.num_experts, c.head_dim))  # (..., E, d): h_i
        k = torch.einsum("eoi,...ei->...eo", self.K.weight, heads)  # (..., E, d): K_i h_i
        Bh = self.B.weight.unflatten(1, (c.num_experts, c.head_dim))  # (m, E, d)
        y = torch.einsum("meo,...eo->...em", Bh, k)  # (..., E, m): B_i K_i h_i
        return c.scale * torch.einsum("...e,...em->...m", g, y)

    def param_formula(self) -> sp.Expr:
        per_layer = S.r * S.n + S.r**2 / S.E + S.E**2 + S.E * S.r
        return per_layer if self.config.share_b else per_layer + S.r * S.m

    def shared_param_formula(self) -> sp.Expr:
        """B (r·m) once per module type under share_b."""
        return S.r * S.m if self.config.share_b else sp.Integer(0)

    def macs_formula(self) -> sp.Expr:
        """A, then one fused matmul with [diag(K_i); W_r (T⊗I)] ((r + E) x r, the router folded once
        per call), then B. The dense diag(K_i) costs r² instead of r²/E per token; r² << r·n in
        practice, and one matmul beats E tiny ones (docs/performance.md)."""
        return S.r * S.n + S.r**2 + S.E * S.r + S.r * S.m

    def sparse_macs_formula(self) -> sp.Expr | None:
        """The router, then K_i and B_i of the k chosen heads. When `sparse.gather_wins`, the router
        reads x through W_r (T ⊗ I) A (folded once per call) and only the chosen heads' A_(i) x run;
        else all of A x, and the router reads the talked heads."""
        c, k = self.config, self.config.top_k
        d = S.r / S.E  # head dimension
        if k is None:
            return None
        if sparse.gather_wins(c.num_experts, k, c.head_dim):
            return S.E * S.n + k * d * S.n + k * d**2 + k * d * S.m
        return S.r * S.n + S.E * S.r + k * d**2 + k * d * S.m

    def subs(self) -> dict[sp.Symbol, int]:
        c = self.config
        return {S.n: c.in_features, S.m: c.out_features, S.r: c.rank, S.E: c.num_experts}

    # ----- bounds, declared claims, sparse top-k -----------------------------------------------------
    @torch.no_grad()
    def expert_factors(self) -> ExpertFactors:
        """P_i = s · B_i K_i · A_(i): left (B_i (E, m, d), K_i (E, d, d)), right A_(i) (E, d, n)."""
        c = self.config
        B = self.B.weight.detach().to("cpu", torch.float64)
        Bh = B.unflatten(1, (c.num_experts, c.head_dim)).permute(1, 0, 2)  # (E, m, d)
        K = self.K.weight.detach().to("cpu", torch.float64)  # (E, d, d)
        A = self.A.weight.detach().to("cpu", torch.float64)
        return ExpertFactors((Bh, K), A.unflatten(0, (c.num_experts, c.head_dim)), c.scale)

    @classmethod
    def reductions(cls) -> tuple[Reduction, ...]:
        """T = I -> latent MoELoRA (B_i' = B_i K_i; exact for any T, by absorbing T into W_r); SPEC
        claim 1 as stated (A_i = K_i A_(i), W_r unchanged) after T = I and K_i = I; -> input-router
        MoELoRA with W_g = W_r (T ⊗ I) A (any T)."""
        from . import preconditions as pre
        from . import reductions as red

        return (
            Reduction("identity_talking_is_moelora", "moelora",
                      pre.on(TalkLoRA, pre.identity_talking_),
                      pre.on(TalkLoRA, red.talklora_to_moelora), unprepared_fails=False),
            Reduction("identity_talking_and_experts_as_stated", "moelora",
                      pre.on(TalkLoRA, pre.identity_talking_and_experts_),
                      pre.on(TalkLoRA, red.talklora_to_moelora_as_stated)),
            Reduction("talklora_in_input_moelora", "moelora", pre.no_preparation,
                      pre.on(TalkLoRA, red.talklora_to_input_moelora), unprepared_fails=False),
        )  # fmt: skip

    def sparse_forward(self, x: Tensor) -> Tensor:
        """Only the k chosen heads run K_i and B_i; the router reads every talked head, through the
        folded W_r (T ⊗ I) A when `sparse.gather_wins` (then only the chosen heads' A_(i) x run)."""
        c, k = self.config, sparse.top_k_of(self.router)
        E, d = c.num_experts, c.head_dim
        xf = sparse.flat_tokens(x)
        Wt = self.router.logits.dense() @ self.talk.dense()  # (E, r) = W_r (T ⊗ I)
        if sparse.gather_wins(E, k, d):  # router through the folded W_r (T ⊗ I) A (E x n, per call)
            idx, w, cols, hk = sparse.route_and_dot(xf, Wt @ self.A.weight, self.A.weight, k, d)
            heads = hk.unflatten(-1, (k, d))  # (T, k, d): the chosen heads A_(i) x
        else:
            h = F.linear(xf, self.A.weight)  # (T, r)
            idx, w = sparse.topk_route(F.linear(h, Wt), k)
            heads = h.unflatten(-1, (E, d)).gather(1, idx.unsqueeze(-1).expand(-1, -1, d))
            cols = sparse.expert_columns(idx, d)
        kh = torch.einsum("tkij,tkj->tki", self.K.weight[idx], heads)  # K_{idx_j} h_{idx_j}
        coef = (kh * (c.scale * w).unsqueeze(-1)).flatten(-2)  # (T, k·d)
        out = sparse.mix_columns(cols, coef, self.B.weight.t().contiguous())
        return out.reshape(*x.shape[:-1], c.out_features)
