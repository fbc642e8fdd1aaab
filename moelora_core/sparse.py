"""Sparse top-k: compute only the k experts each token is routed to.

With top-k routing, g(x) has k non-zero entries, the softmax of the k largest logits:

    idx = topk(s, k),   w = softmax(s[idx]),   Δ(x) = Σ_{j<k} w_j · P_{idx_j} x

The dense forward multiplies every expert by a zero weight; the kernels here touch only the k chosen
experts. Two mutually transposed kernels do it without a loop over experts or tokens:

- **the expert-side product** Σ_j Σ_ρ c_{jρ} · U[:, idx_j·d + ρ] (the column blocks of a stacked
  up-projection U = [U_1 ... U_E], or of the stacked cores) is `mix_columns`: `F.embedding_bag` over
  the columns `idx_j·d + ρ` with per-sample weights c, k·d·m multiply–adds per token instead of E·d·m;
- **a per-expert down-projection** A_{idx_j} x (MoELoRA; TalkLoRA's heads) is `dot_columns`: the
  k·d chosen rows of the stacked [A_1; ...; A_E] dotted with x per token (torch's kernel for
  embedding_bag's per-sample-weight gradient), k·d·n multiply–adds, no copy of x, no sort, no padding.
  Each is the other's backward (to the per-token coefficients); the table gradients are one sparse
  (rows x tokens) @ (tokens x n) product (`table_grad`). A padded grouped `bmm` and `torch._grouped_mm`
  over tokens sorted by expert were measured slower on CPU (benchmarks/sparse_kernels.py).
  `route_and_dot` runs a router that reads x (W_g, or a latent router folded to W_r A) and
  `dot_columns` as one autograd node, so that the backward writes dx once (`route_and_dot_logits`
  also returns the router's logits).

Each architecture's `sparse_forward` is written with these tools (the stacked experts of MoELoRA and
MoLA share `stacked.sparse_topk`); this module
holds no per-architecture code. The k experts are chosen by the dense gate's rule (`maps.topk_mask`:
ties to the lowest index; `topk_experts` finds them with `torch.topk`), so the two paths select the
same experts, exactly k, whatever the ties. Which path runs is decided per call by `use_sparse`: the
fraction k/E at or below `SPARSE_MAX_FRACTION` (CoMoL: `COMOL_MAX_FRACTION`) and at least
`SPARSE_MIN_TOKENS` tokens, all measured (docs/performance.md, benchmarks/sparse_crossover.py); inside
torch.func transforms or forward-mode AD the dense path always runs. `sparse_mode("dense" | "sparse" | "auto")` overrides the choice in a block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .errors import ConfigError

if TYPE_CHECKING:
    from .adapter import Adapter
    from .maps import SoftmaxRouter

Mode = Literal["auto", "dense", "sparse"]

# Measured crossovers (benchmarks/sparse_crossover.py, docs/performance.md "Sparse top-k").
SPARSE_MAX_FRACTION = 0.125  # sparse when k / E <= this (E >= 16 at k = 2)
COMOL_MAX_FRACTION = 0.0625  # CoMoL, whose r x r cores are a small part of it (E >= 32 at k = 2)
SPARSE_MIN_TOKENS = 256  # below this the sort/gather set-up costs more than the dense matmuls save
# MoELoRA, MoLA (`stacked.sparse_topk`) and TalkLoRA: `route_and_dot(_logits)` for the chosen experts' A_i x when E·r_e > k·(GATHER_COPY +
# GATHER_MAC·r_e), else the dense [A; W_g] x (benchmarks/sparse_kernels.py, docs/performance.md):
# the dense one's E·r_e extra columns against k·r_e dot products and their own passes over x.
GATHER_COPY = 32.0
GATHER_MAC = 4.0

_MODE: Mode = "auto"


@contextmanager
def sparse_mode(mode: Mode) -> Iterator[None]:
    """Force the dense or the sparse top-k path (or restore the automatic choice) inside a block."""
    global _MODE
    if mode not in ("auto", "dense", "sparse"):
        raise ConfigError(f"sparse_mode={mode!r}: expected 'auto', 'dense' or 'sparse'")
    previous, _MODE = _MODE, mode
    try:
        yield
    finally:
        _MODE = previous


def _transformed() -> bool:
    """True inside torch.func transforms (vmap, grad, jvp, jacrev) or a forward-mode AD level."""
    return torch._C._functorch.peek_interpreter_stack() is not None or fwAD._current_level >= 0


def use_sparse(router: SoftmaxRouter, x: Tensor, max_fraction: float = SPARSE_MAX_FRACTION) -> bool:
    """Whether the top-k forward of `router`'s layer on `x` (..., n) takes the sparse path."""
    k = router.top_k
    if k is None or k == router.num_experts or _MODE == "dense" or _transformed():
        return False
    if _MODE == "sparse":
        return True
    tokens = x.numel() // max(1, x.shape[-1])
    return k <= max_fraction * router.num_experts and tokens >= SPARSE_MIN_TOKENS


def topk_route(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Logits (T, E) -> (idx (T, k), w (T, k) = softmax of the k kept logits); idx by `topk_experts`."""
    idx = topk_experts(logits.detach(), k)
    return idx, torch.softmax(logits.gather(-1, idx), dim=-1)


def topk_experts(logits: Tensor, k: int) -> Tensor:
    """Logits (T, E) -> idx (T, k), the k kept experts of each row.

    The k experts are those of `maps.topk_mask` (the dense gate's rule: ties go to the lowest expert
    index, exactly k are kept), found with `torch.topk` (3 x faster than the stable sort at E = 64).
    When no row has a tie at its k-th largest value (one comparison checks it) topk's k indices are
    the rule's; otherwise every logit above the k-th value is kept, then the lowest-index ties with it
    until there are k. Non-finite logits (no such k) fall back to the stable sort itself.
    """
    top = torch.topk(logits, k, dim=-1)
    kth = top.values[..., -1:]  # (T, 1) the k-th largest value
    at_least = logits >= kth  # (T, E)
    if bool((at_least.sum(-1) == k).all()):  # no tie at the k-th value: topk's set is the rule's
        idx = top.indices
    else:
        above, tied = logits > kth, logits == kth
        keep = above | (tied & (tied.cumsum(-1) <= k - above.sum(-1, keepdim=True)))
        pos = keep.nonzero()  # (T·k, 2), row-major: each row's k experts together
        if pos.shape[0] == logits.shape[0] * k:
            idx = pos[:, 1].reshape(logits.shape[0], k)
        else:  # NaN logits: keep the dense gate's rule exactly
            idx = torch.sort(logits, dim=-1, descending=True, stable=True).indices[..., :k]
    return idx


def expert_columns(idx: Tensor, width: int) -> Tensor:
    """(T, k) expert indices -> (T, k·width) columns idx_j·width + ρ of a stacked [U_1 ... U_E]."""
    offs = torch.arange(width, device=idx.device)
    return (idx.unsqueeze(-1) * width + offs).flatten(-2)


def _bags(cols: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(T, c) columns -> flat indices (T·c,), bag offsets (T,), bag of each index (T·c,)."""
    T, c = cols.shape
    ar = torch.arange(T, device=cols.device)
    return cols.reshape(-1), ar * c, ar.repeat_interleave(c)


def gather_dot(x: Tensor, table: Tensor, cols: Tensor) -> Tensor:
    """out[t, c] = table[cols[t, c]] · x[t]: (T, n) x (R, n) x (T, c) -> (T, c), no autograd.

    The transpose of `scatter_mix`: torch's kernel for embedding_bag's per-sample-weight gradient,
    c·n multiply–adds per token, nothing (T, c, n)-sized formed.
    """
    flat, offsets, bag = _bags(cols)
    out: Tensor = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        x.contiguous(), table.contiguous(), flat, offsets, bag, 0, -1
    )  # mode 0 = sum, no padding index
    return out.view(cols.shape)


def scatter_mix(coef: Tensor, table: Tensor, cols: Tensor) -> Tensor:
    """out[t] = Σ_c coef[t, c] · table[cols[t, c]]: (T, c) x (R, n) x (T, c) -> (T, n), no autograd."""
    return F.embedding_bag(cols, table, per_sample_weights=coef, mode="sum")


def table_grad(coef: Tensor, x: Tensor, cols: Tensor, rows: int) -> Tensor:
    """G[ρ] = Σ_{(t, c): cols[t, c] = ρ} coef[t, c] · x[t]: (T, c) x (T, n) -> (rows, n), no autograd.

    On CPU one sparse (rows x T) @ dense (T, n) product (COO, T·c non-zeros): each x[t] is read once
    per column, nothing (T·c, n)-sized formed. Elsewhere (sparse products do not cover every dtype on
    every device) `table_grad_indexed`.
    """
    if x.device.type != "cpu":
        return table_grad_indexed(coef, x, cols, rows)
    T = cols.shape[0]
    flat, _, bag = _bags(cols)
    S = torch.sparse_coo_tensor(
        torch.stack([flat, bag]),
        coef.reshape(-1),
        (rows, T),
        dtype=coef.dtype,
        device=coef.device,
        check_invariants=False,
    )
    out: Tensor = torch.sparse.mm(S, x.contiguous())
    return out


def table_grad_indexed(coef: Tensor, x: Tensor, cols: Tensor, rows: int) -> Tensor:
    """`table_grad` by `index_add_` of the (T·c, n) products coef[t, c] · x[t] (any device, dtype)."""
    flat, _, bag = _bags(cols)
    terms = coef.reshape(-1, 1) * x.index_select(0, bag)  # (T·c, n)
    return torch.zeros(rows, x.shape[-1], dtype=x.dtype, device=x.device).index_add_(0, flat, terms)


class _GatherDot(torch.autograd.Function):
    """h = gather_dot(x, table, cols); dx = scatter_mix(dh, table), dtable = table_grad(dh, x)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, table: Tensor, cols: Tensor) -> Tensor:
        ctx.save_for_backward(x, table, cols)
        return gather_dot(x, table, cols)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dh: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, table, cols = ctx.saved_tensors
        dh = dh.contiguous()
        dx = scatter_mix(dh, table, cols) if ctx.needs_input_grad[0] else None
        dt = table_grad(dh, x, cols, table.shape[0]) if ctx.needs_input_grad[1] else None
        return dx, dt, None


class _ScatterMix(torch.autograd.Function):
    """y = scatter_mix(coef, table, cols); dcoef = gather_dot(dy, table), dtable = table_grad(coef, dy)."""

    @staticmethod
    def forward(ctx: Any, coef: Tensor, table: Tensor, cols: Tensor) -> Tensor:
        ctx.save_for_backward(coef, table, cols)
        return scatter_mix(coef, table, cols)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        coef, table, cols = ctx.saved_tensors
        dy = dy.contiguous()
        dc = gather_dot(dy, table, cols) if ctx.needs_input_grad[0] else None
        dt = table_grad(coef, dy, cols, table.shape[0]) if ctx.needs_input_grad[1] else None
        return dc, dt, None


def mix_columns(cols: Tensor, coef: Tensor, table: Tensor) -> Tensor:
    """out[t] = Σ_c coef[t, c] · table[cols[t, c]]: (T, C) x (T, C) x (R, m) -> (T, m).

    `F.embedding_bag` forward; backward by `gather_dot` (to coef) and one sparse product (to table),
    faster on CPU than embedding_bag's own dense-table backward.
    """
    out: Tensor = _ScatterMix.apply(coef, table, cols)  # type: ignore[no-untyped-call]
    return out


def dot_columns(x: Tensor, table: Tensor, cols: Tensor) -> Tensor:
    """h[t, c] = table[cols[t, c]] · x[t]: (T, n) x (R, n) x (T, C) -> (T, C), differentiable.

    The chosen rows of a stacked down-projection [A_1; ...; A_E] applied per token (C = k·d rows of
    the R): C·n multiply–adds per token, no copy of x per expert, no sort, no padding.
    """
    out: Tensor = _GatherDot.apply(x, table, cols)  # type: ignore[no-untyped-call]
    return out


class _RouteDot(torch.autograd.Function):
    """logits = x Wᵀ, idx = topk_experts(logits), h = gather_dot(x, table, columns of idx), with one
    backward that writes dx once: scatter_mix(dh, table) + dlogits W, accumulated in place."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, W: Tensor, table: Tensor, k: int, width: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        logits = F.linear(x, W)  # (T, E)
        idx = topk_experts(logits, k)  # (T, k)
        cols = expert_columns(idx, width)  # (T, k·width)
        ctx.save_for_backward(x, W, table, cols)
        ctx.mark_non_differentiable(idx, cols)
        return logits, idx, cols, gather_dot(x, table, cols)

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, dlogits: Tensor, _di: Tensor, _dc: Tensor, dh: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        x, W, table, cols = ctx.saved_tensors
        dh = dh.contiguous()
        dx = dW = dt = None
        if ctx.needs_input_grad[0]:
            dx = scatter_mix(dh, table, cols).addmm_(dlogits, W)  # (T, n): both paths, one buffer
        if ctx.needs_input_grad[1]:
            dW = dlogits.t().mm(x)  # (E, n)
        if ctx.needs_input_grad[2]:
            dt = table_grad(dh, x, cols, table.shape[0])
        return dx, dW, dt, None, None


def route_and_dot(
    x: Tensor, W: Tensor, table: Tensor, k: int, width: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A router that reads x and the chosen experts' down-projections, together: x (T, n), W (E, n),
    table (E·width, n) -> idx (T, k), w (T, k), cols (T, k·width), h (T, k·width) with
    h[t, j·width + ρ] = table[idx_j·width + ρ] · x[t] and w = softmax of the k kept logits x Wᵀ.

    The two passes over x stay two (the route decides which rows to dot), but the backward writes
    dx once (`dot_columns` and the router's dx would be two (T, n) buffers and their sum).
    """
    _, idx, w, cols, h = route_and_dot_logits(x, W, table, k, width)
    return idx, w, cols, h


def route_and_dot_logits(
    x: Tensor, W: Tensor, table: Tensor, k: int, width: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """`route_and_dot` that also returns the router's logits x Wᵀ (T, E), differentiable (their
    gradient joins dx and dW in the same backward), for a caller that reads the whole distribution
    too, e.g. a load-balancing term: (logits, idx, w, cols, h)."""
    logits, idx, cols, h = _RouteDot.apply(x, W, table, k, width)  # type: ignore[no-untyped-call]
    return logits, idx, torch.softmax(logits.gather(-1, idx), dim=-1), cols, h


def flat_tokens(x: Tensor) -> Tensor:
    """(..., n) -> (T, n), the leading axes as one token axis."""
    return x.reshape(-1, x.shape[-1])


def gather_wins(E: int, k: int, d: int) -> bool:
    """Whether `dot_columns` beats the dense down-projection for the chosen experts (E·d > k·(copy +
    mac·d): the dense one's E·d columns against the k·d dot products and their passes over x)."""
    return E * d > k * (GATHER_COPY + GATHER_MAC * d)


def top_k_of(router: SoftmaxRouter) -> int:
    """The router's k; ConfigError for a soft router (the sparse path needs top-k routing)."""
    if router.top_k is None:
        raise ConfigError("top_k=None: expected an integer k for the sparse top-k forward")
    return router.top_k


def sparse_macs(mod: Adapter) -> int:
    """Matmul multiply–adds per token of `mod`'s sparse top-k forward, `mod.sparse_macs_formula()` at
    its sizes (the dense count is `mod.macs_formula()`); ConfigError if it has no sparse path."""
    formula = mod.sparse_macs_formula()
    if formula is None:
        raise ConfigError(
            f"adapter={type(mod).__name__} (top_k={getattr(mod.config, 'top_k', None)!r}): expected "
            "an adapter with a sparse top-k forward"
        )
    return int(formula.subs(mod.subs()))
