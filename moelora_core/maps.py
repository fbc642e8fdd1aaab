"""Linear-map algebra: the pieces every architecture is built from.

Convention: a map `L: R^in -> R^out` acts on the last axis of `x` of shape (..., in) and has a dense
matrix `L.dense()` of shape (out, in), so `L(x) == x @ L.dense().T` (torch.nn.Linear's convention).
Every map reports its `shape`, its trainable `num_params()`, its `dense()` matrix and its `spectral_norm()`.
Composition is written `outer @ inner` and means `x -> outer(inner(x))`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from .errors import ConfigError, ShapeError, check_input, require_positive_int, require_top_k
from .validate import (
    MAX_ELEMENTS,
    require_choice,
    require_device,
    require_dtype,
    require_instance,
    require_int,
    require_layer_size,
    require_tensor,
)

Init = Literal["kaiming_uniform", "zeros", "normal", "identity"]
INIT_NAMES: tuple[str, ...] = get_args(Init)


class LinearMap(nn.Module):
    """A linear map R^in -> R^out acting on the last axis."""

    in_features: int
    out_features: int

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in), the shape of `dense()`."""
        return (self.out_features, self.in_features)

    def dense(self) -> Tensor:
        """The matrix of the map, shape (out, in)."""
        raise NotImplementedError

    def num_params(self) -> int:
        """Trainable parameters owned by this map (shared modules counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def spectral_norm(self) -> float:
        """‖L‖₂, the largest singular value of `dense()` (exact, via svdvals)."""
        return float(torch.linalg.matrix_norm(self.dense().detach(), ord=2))

    def factors(self) -> list[LinearMap]:
        """The maps whose composition this is, innermost first ([self] for an atom)."""
        return [self]

    def __matmul__(self, inner: LinearMap) -> Compose:
        return Compose(self, inner)


def _reference_tensor(m: nn.Module) -> Tensor:
    for p in m.parameters():
        return p
    for b in m.buffers():
        return b
    return torch.empty(0)


class Dense(LinearMap):
    """A full matrix `W: out x in`; `x -> x Wᵀ`."""

    def __init__(
        self,
        out_features: int,
        in_features: int,
        init: Init = "kaiming_uniform",
        *,
        name: str = "W",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        require_positive_int(f"{name}.out_features", out_features)
        require_positive_int(f"{name}.in_features", in_features)
        require_layer_size(
            f"{name}: {out_features} x {in_features}", out_features * in_features, MAX_ELEMENTS
        )
        require_choice("init", init, INIT_NAMES)
        dtype, device = require_dtype("dtype", dtype), require_device("device", device)
        self.name = name
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features, dtype=dtype, device=device)
        )
        init_tensor_(self.weight, init)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.in_features, self.weight, name=f"input of {self.name}")
        return x @ self.weight.T

    def dense(self) -> Tensor:
        return self.weight

    def extra_repr(self) -> str:
        return f"{self.name}: {self.out_features}x{self.in_features}"


class Identity(LinearMap):
    """`I_d`; no parameters."""

    def __init__(self, features: int) -> None:
        super().__init__()
        require_int("features", features, 1, MAX_ELEMENTS)
        self.in_features = self.out_features = features
        self.register_buffer("_ref", torch.empty(0), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return x

    def dense(self) -> Tensor:
        ref = self.get_buffer("_ref")
        return torch.eye(self.in_features, dtype=ref.dtype, device=ref.device)

    def spectral_norm(self) -> float:
        return 1.0


class Compose(LinearMap):
    """`outer ∘ inner`: x -> outer(inner(x)); dense = outer.dense() @ inner.dense()."""

    def __init__(self, outer: LinearMap, inner: LinearMap) -> None:
        super().__init__()
        require_instance("outer", outer, LinearMap)
        require_instance("inner", inner, LinearMap)
        if outer.in_features != inner.out_features:
            raise ShapeError(
                f"compose: outer.in_features={outer.in_features} but inner.out_features="
                f"{inner.out_features}; expected them equal"
            )
        self.outer, self.inner = outer, inner
        self.in_features, self.out_features = inner.in_features, outer.out_features

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.outer(self.inner(x))
        return out

    def dense(self) -> Tensor:
        return self.outer.dense() @ self.inner.dense()

    def factors(self) -> list[LinearMap]:
        return self.inner.factors() + self.outer.factors()


class BlockDiagonal(LinearMap):
    """`diag(K_1, ..., K_E)`, blocks `K_i: out_block x in_block`, stored as one (E, out_block, in_block) tensor.

    x (..., E*in_block) -> view (..., E, in_block) -> per-block matmul -> (..., E*out_block).
    """

    def __init__(
        self,
        num_blocks: int,
        out_block: int,
        in_block: int,
        init: Init = "kaiming_uniform",
        *,
        name: str = "K",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        require_positive_int(f"{name}.num_blocks", num_blocks)
        require_positive_int(f"{name}.out_block", out_block)
        require_positive_int(f"{name}.in_block", in_block)
        size = num_blocks * out_block * in_block
        require_layer_size(f"{name}: {num_blocks} x {out_block} x {in_block}", size, MAX_ELEMENTS)
        require_choice("init", init, INIT_NAMES)
        dtype, device = require_dtype("dtype", dtype), require_device("device", device)
        self.name = name
        self.num_blocks, self.out_block, self.in_block = num_blocks, out_block, in_block
        self.in_features, self.out_features = num_blocks * in_block, num_blocks * out_block
        self.weight = nn.Parameter(
            torch.empty(num_blocks, out_block, in_block, dtype=dtype, device=device)
        )
        for i in range(num_blocks):  # init only; forward passes never loop over blocks
            init_tensor_(self.weight.data[i], init)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.in_features, self.weight, name=f"input of {self.name}")
        xb = x.unflatten(-1, (self.num_blocks, self.in_block))  # (..., E, in_block)
        yb = torch.einsum("...ei,eoi->...eo", xb, self.weight)  # (..., E, out_block)
        out: Tensor = yb.flatten(-2)
        return out

    def dense(self) -> Tensor:
        out: Tensor = torch.block_diag(*self.weight.unbind(0))
        return out

    def spectral_norm(self) -> float:
        return float(torch.linalg.matrix_norm(self.weight.detach(), ord=2).max())


class KronIdentity(LinearMap):
    """`T ⊗ I_d` for a square `T: E x E` (the talking module): head i of the output is Σ_j T_ij h_j.

    x (..., E*d) -> view (..., E, d) -> (..., E, d) mixed across heads -> (..., E*d).
    ‖T ⊗ I_d‖₂ = ‖T‖₂.
    """

    def __init__(self, talk: Dense, head_dim: int) -> None:
        super().__init__()
        require_instance("talk", talk, Dense)
        if talk.in_features != talk.out_features:
            raise ShapeError(f"talk.shape={talk.shape}: expected a square E x E matrix")
        require_int("head_dim", head_dim, 1, MAX_ELEMENTS // talk.in_features)
        self.talk, self.head_dim = talk, head_dim
        self.num_heads = talk.in_features
        self.in_features = self.out_features = self.num_heads * head_dim

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.in_features, self.talk.weight, name="input of T⊗I")
        heads = x.unflatten(-1, (self.num_heads, self.head_dim))  # (..., E, d)
        return torch.einsum("ij,...jd->...id", self.talk.weight, heads).flatten(-2)

    def dense(self) -> Tensor:
        eye = torch.eye(self.head_dim, dtype=self.talk.weight.dtype, device=self.talk.weight.device)
        return torch.kron(self.talk.weight, eye)

    def spectral_norm(self) -> float:
        return self.talk.spectral_norm()


@dataclass(frozen=True)
class HeadLayout:
    """Contiguous split of a rank-r vector into E heads of size r/E: `h = [h_1; ...; h_E]`."""

    num_heads: int
    head_dim: int

    def __post_init__(self) -> None:
        require_positive_int("num_heads", self.num_heads)
        require_positive_int("head_dim", self.head_dim)

    @property
    def total(self) -> int:
        return self.num_heads * self.head_dim

    def split(self, h: Tensor) -> Tensor:
        """(..., E*d) -> (..., E, d)."""
        if h.shape[-1] != self.total:
            raise ShapeError(
                f"h.shape={tuple(h.shape)}: expected (..., {self.total}) to split into heads"
            )
        out: Tensor = h.unflatten(-1, (self.num_heads, self.head_dim))
        return out

    def concat(self, heads: Tensor) -> Tensor:
        """(..., E, d) -> (..., E*d)."""
        if tuple(heads.shape[-2:]) != (self.num_heads, self.head_dim):
            raise ShapeError(
                f"heads.shape={tuple(heads.shape)}: expected (..., {self.num_heads}, {self.head_dim})"
            )
        return heads.flatten(-2)

    def rows(self, W: Tensor, i: int) -> Tensor:
        """Block i of rows of W (E*d, ...) -> (d, ...)."""
        return W[i * self.head_dim : (i + 1) * self.head_dim]

    def cols(self, W: Tensor, i: int) -> Tensor:
        """Block i of columns of W (..., E*d) -> (..., d)."""
        return W[..., i * self.head_dim : (i + 1) * self.head_dim]


class SoftmaxRouter(nn.Module):
    """`g(z) = softmax(W z)` over E experts; with `top_k`, keep the k largest and renormalise them to sum 1.

    Renormalising the k kept softmax weights equals a softmax over the k kept logits, which is how it is
    computed. The router reads `z`, whatever the architecture feeds it (x itself, or a latent).
    """

    def __init__(self, logits: LinearMap, top_k: int | None = None) -> None:
        super().__init__()
        require_instance("logits", logits, LinearMap)
        E = logits.out_features
        require_top_k(top_k, E)
        self.logits, self.top_k = logits, top_k
        self.num_experts = E

    def forward(self, z: Tensor) -> Tensor:
        return self.gate(self.logits(z))

    def gate(self, s: Tensor) -> Tensor:
        """Logits (..., E) -> routing weights (..., E), for callers that computed W z themselves.

        With top_k, exactly k experts keep a weight (see `topk_mask` for the tie rule). The logits
        are checked for type, dtype and shape (no device sync); their finiteness is the caller's
        (forward passes check x, so the logits are finite unless they overflow).
        """
        require_tensor("logits", s, min_ndim=1, data=False)
        if s.shape[-1] != self.num_experts:
            raise ShapeError(
                f"logits.shape={tuple(s.shape)}: expected (..., {self.num_experts}) (one per expert)"
            )
        if self.top_k is None or self.top_k == self.num_experts:
            return softmax_last(s)
        masked = s.masked_fill(~topk_mask(s, self.top_k), float("-inf"))
        return softmax_last(masked)


def topk_mask(logits: Tensor, k: int) -> Tensor:
    """Bool mask (..., E) of the k largest logits of each row; ties go to the lowest expert index.

    Exactly k entries of every row are True, whatever the ties: a stable descending sort orders equal
    logits by index and the first k positions are kept (torch.topk promises no order among ties, and a
    comparison with the k-th value, `s >= kth`, keeps every tied expert). The one rule every top-k
    path (dense gate, sparse dispatch, the discontinuity witness) calls.
    """
    idx = torch.sort(logits, dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, idx, True)


def softmax_last(s: Tensor) -> Tensor:
    """softmax over the last axis. On CPU it is computed over the leading axis of the moved tensor:
    torch's CPU kernel is ~4x slower (forward + backward) on a short last axis such as E = 8."""
    if s.device.type != "cpu" or s.dim() < 2:
        return torch.softmax(s, dim=-1)
    return torch.softmax(s.movedim(-1, 0), dim=0).movedim(0, -1).contiguous()


def init_tensor_(t: Tensor, init: Init) -> None:
    """In-place initialisation by name."""
    with torch.no_grad():
        if init == "kaiming_uniform":
            nn.init.kaiming_uniform_(t, a=math.sqrt(5))
        elif init == "zeros":
            nn.init.zeros_(t)
        elif init == "normal":
            nn.init.normal_(t, std=1.0 / math.sqrt(t.shape[-1]))
        elif init == "identity":
            if t.dim() != 2 or t.shape[0] != t.shape[1]:
                raise ConfigError(
                    f"init='identity' on shape {tuple(t.shape)}: expected a square matrix"
                )
            t.copy_(torch.eye(t.shape[0], dtype=t.dtype, device=t.device))
        else:
            raise ConfigError(
                f"init={init!r}: expected one of 'kaiming_uniform', 'zeros', 'normal', 'identity'"
            )


def chain(*maps: LinearMap) -> LinearMap:
    """`chain(m1, m2, m3)` = m3 ∘ m2 ∘ m1 (applied left to right)."""
    if not maps:
        raise ConfigError("chain(): expected at least one map")
    for i, m in enumerate(maps):
        require_instance(f"maps[{i}]", m, LinearMap)
    out = maps[0]
    for m in maps[1:]:
        out = Compose(m, out)
    return out


def stack_dense(matrices: Sequence[Tensor]) -> Tensor:
    """Row-stack matrices (each (p_i, q)) into one (Σp_i, q) matrix, checking the column counts."""
    for i, M in enumerate(matrices):
        require_tensor(f"matrices[{i}]", M, ndim=2, data=False)
    if not matrices:
        raise ShapeError("stack_dense(): expected at least one matrix")
    q = {int(M.shape[-1]) for M in matrices}
    if len(q) != 1:
        raise ShapeError(f"stack_dense: column counts {sorted(q)}; expected all equal")
    return torch.cat(list(matrices), dim=0)
