"""Sparse top-k: compute only the k experts each token is routed to.

With top-k routing, g(x) has k non-zero entries, the softmax of the k largest logits:

    idx = topk(s, k),   w = softmax(s[idx]),   Δ(x) = Σ_{j<k} w_j · P_{idx_j} x

The dense forward multiplies every expert by a zero weight; the kernels here touch only the k chosen
experts. Two torch primitives do it without a loop over experts or tokens:

- **the expert-side product** Σ_j Σ_ρ c_{jρ} · U[:, idx_j·d + ρ] (the column blocks of a stacked
  up-projection U = [U_1 ... U_E], or of the stacked cores) is `F.embedding_bag` over the columns
  `idx_j·d + ρ` with per-sample weights c: k·d·m multiply–adds per token instead of E·d·m;
- **a per-expert down-projection** A_{idx_j} x (MoELoRA's input router) is a padded grouped matmul:
  the (token, slot) pairs are sorted by expert into an (E, C, n) block of rows (C the largest expert
  load), one `bmm` against the (E, d, n) stacked factors, and the k·d results gathered back.

Each architecture's `sparse_forward` (in its own module) is written with these tools; this module
holds no per-architecture code. The k experts are chosen by the dense gate's rule (`maps.topk_mask`: a stable descending sort, ties
to the lowest index), so the two paths select the same experts, exactly k, whatever the ties. Which path runs is decided per call by `use_sparse`: the fraction
k/E at or below `SPARSE_MAX_FRACTION` (CoMoL: `COMOL_MAX_FRACTION`) and at least `SPARSE_MIN_TOKENS`
tokens, all measured (docs/performance.md, benchmarks/sparse_crossover.py); inside torch.func transforms or forward-mode AD
the dense path always runs. `sparse_mode("dense" | "sparse" | "auto")` overrides the choice in a block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError

if TYPE_CHECKING:
    from .adapter import Adapter
    from .maps import SoftmaxRouter

Mode = Literal["auto", "dense", "sparse"]

# Measured crossovers (benchmarks/sparse_crossover.py, docs/performance.md "Sparse top-k").
SPARSE_MAX_FRACTION = 0.125  # sparse when k / E <= this (E >= 16 at k = 2)
COMOL_MAX_FRACTION = 0.0625  # CoMoL, whose r x r cores are a small part of it (E >= 32 at k = 2)
SPARSE_MIN_TOKENS = 256  # below this the sort/gather set-up costs more than the dense matmuls save
# MoELoRA input router: gather x per chosen expert when E·r_e > k·(GATHER_COPY + GATHER_MAC·r_e),
# i.e. when the dense down-projection's E·r_e·n multiply–adds cost more than moving k copies of x.
GATHER_COPY = 80.0
GATHER_MAC = 12.0

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
    """Logits (T, E) -> (idx (T, k), w (T, k) = softmax of the k kept logits).

    The k experts are those of `maps.topk_mask` (the dense gate's rule): a stable descending sort, so
    ties go to the lowest expert index and exactly k are kept.
    """
    idx = torch.sort(logits, dim=-1, descending=True, stable=True).indices[..., :k]
    return idx, torch.softmax(logits.gather(-1, idx), dim=-1)


def expert_columns(idx: Tensor, width: int) -> Tensor:
    """(T, k) expert indices -> (T, k·width) columns idx_j·width + ρ of a stacked [U_1 ... U_E]."""
    offs = torch.arange(width, device=idx.device)
    return (idx.unsqueeze(-1) * width + offs).flatten(-2)


def mix_columns(cols: Tensor, coef: Tensor, table: Tensor) -> Tensor:
    """out[t] = Σ_c coef[t, c] · table[cols[t, c]]: (T, C) x (T, C) x (R, m) -> (T, m)."""
    return F.embedding_bag(cols, table, per_sample_weights=coef, mode="sum")


def grouped_down(x: Tensor, idx: Tensor, A: Tensor) -> Tensor:
    """h[t, j] = A[idx[t, j]] x[t]: x (T, n), idx (T, k), A (E, d, n) -> (T, k, d).

    The (token, slot) pairs are sorted by expert into a padded (E, C, n) block (pad rows read token 0
    and are never gathered back), multiplied by one bmm and gathered back in (token, slot) order.
    """
    T, k = idx.shape
    E = A.shape[0]
    flat = idx.flatten()  # (T·k,) expert of each (token, slot)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=E)
    starts = torch.cumsum(counts, 0) - counts
    pos_sorted = torch.arange(T * k, device=x.device) - starts[flat[order]]
    C = int(counts.max())
    src = torch.zeros(E, C, dtype=torch.long, device=x.device)
    src.index_put_((flat[order], pos_sorted), order // k)  # (E, C) token of each padded row
    pos = torch.empty_like(pos_sorted).scatter_(0, order, pos_sorted)  # row of each (token, slot)
    hp = torch.bmm(x[src], A.transpose(1, 2))  # (E, C, d)
    out: Tensor = hp[flat, pos].unflatten(0, (T, k))
    return out


def flat_tokens(x: Tensor) -> Tensor:
    """(..., n) -> (T, n), the leading axes as one token axis."""
    return x.reshape(-1, x.shape[-1])


def gather_wins(E: int, k: int, d: int) -> bool:
    """Whether gathering x per chosen expert beats the dense down-projection (E·d > k·(copy + mac·d))."""
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
