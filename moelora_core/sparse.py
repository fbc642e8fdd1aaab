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

The k experts are chosen by the dense gate's rule (`maps.topk_mask`: a stable descending sort, ties
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
    from .comol import CoMoL
    from .hydralora import HydraLoRA
    from .maps import SoftmaxRouter
    from .moelora import MoELoRA
    from .talklora import TalkLoRA

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


def _flat(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-1])


def _gather_wins(E: int, k: int, d: int) -> bool:
    return E * d > k * (GATHER_COPY + GATHER_MAC * d)


def moelora_forward(mod: MoELoRA, x: Tensor) -> Tensor:
    """Sparse MoELoRA: Σ_j w_j B_{idx_j} A_{idx_j} x with the k chosen experts only."""
    assert mod.router is not None and mod.router.top_k is not None
    c, k = mod.config, mod.router.top_k
    E, d = c.num_experts, c.expert_rank
    xf = _flat(x)  # (T, n)
    W = mod.router.logits.dense()
    if c.router == "input" and _gather_wins(E, k, d):
        idx, w = topk_route(F.linear(xf, W), k)
        h = grouped_down(xf, idx, mod.A.weight.unflatten(0, (E, d)))  # (T, k, d)
    else:
        if c.router == "input":  # [A; W_g] x in one matmul
            hall, logits = F.linear(xf, torch.cat([mod.A.weight, W])).split([c.rank, E], dim=-1)
        else:
            hall = F.linear(xf, mod.A.weight)
            logits = F.linear(hall, W)
        idx, w = topk_route(logits, k)
        h = hall.gather(-1, expert_columns(idx, d)).unflatten(-1, (k, d))  # (T, k, d)
    coef = (h * (c.scale * w).unsqueeze(-1)).flatten(-2)  # (T, k·d)
    out = mix_columns(expert_columns(idx, d), coef, mod.B.weight.t().contiguous())
    return out.reshape(*x.shape[:-1], c.out_features)


def hydralora_forward(mod: HydraLoRA, x: Tensor) -> Tensor:
    """Sparse HydraLoRA: Σ_j w_j B_{idx_j} (A x), the shared A x computed once."""
    assert mod.router is not None and mod.router.top_k is not None
    c, k = mod.config, mod.router.top_k
    xf = _flat(x)
    W = mod.router.logits.dense()
    h, logits = F.linear(xf, torch.cat([mod.A.weight, W])).split(
        [c.expert_rank, c.num_experts], dim=-1
    )  # (T, r_e), (T, E)
    idx, w = topk_route(logits, k)
    coef = ((c.scale * w).unsqueeze(-1) * h.unsqueeze(-2)).flatten(-2)  # (T, k·r_e)
    out = mix_columns(expert_columns(idx, c.expert_rank), coef, mod.B.weight.t().contiguous())
    return out.reshape(*x.shape[:-1], c.out_features)


def talklora_forward(mod: TalkLoRA, x: Tensor) -> Tensor:
    """Sparse TalkLoRA: the router reads every talked head; only the k chosen heads run K_i and B_i."""
    assert mod.router is not None and mod.router.top_k is not None
    c, k = mod.config, mod.router.top_k
    E, d = c.num_experts, c.head_dim
    xf = _flat(x)
    h = F.linear(xf, mod.A.weight)  # (T, r)
    idx, w = topk_route(F.linear(h, mod.router.logits.dense() @ mod.talk.dense()), k)
    heads = h.unflatten(-1, (E, d)).gather(1, idx.unsqueeze(-1).expand(-1, -1, d))  # (T, k, d)
    kh = torch.einsum("tkij,tkj->tki", mod.K.weight[idx], heads)  # K_{idx_j} h_{idx_j}
    coef = (kh * (c.scale * w).unsqueeze(-1)).flatten(-2)  # (T, k·d)
    out = mix_columns(expert_columns(idx, d), coef, mod.B.weight.t().contiguous())
    return out.reshape(*x.shape[:-1], c.out_features)


def comol_forward(mod: CoMoL, x: Tensor) -> Tensor:
    """Sparse CoMoL: Σ_j w_j M_{idx_j} h with the k chosen cores, h = A x, then B."""
    assert mod.router is not None and mod.router.top_k is not None
    c, k = mod.config, mod.router.top_k
    N, r = c.num_cores, c.rank
    xf = _flat(x)
    W = mod.router.logits.dense()
    if c.core_router:
        h = F.linear(xf, mod.A.weight)  # (T, r)
        logits = F.linear(h, W)
    else:
        h, logits = F.linear(xf, torch.cat([mod.A.weight, W])).split([r, N], dim=-1)
    idx, w = topk_route(logits, k)
    coef = (w.unsqueeze(-1) * h.unsqueeze(-2)).flatten(-2)  # (T, k·r): blocks w_j h
    table = mod.cores.transpose(1, 2).reshape(N * r, r)  # row i·r + ρ = column ρ of M_i
    merged = mix_columns(expert_columns(idx, r), coef, table)  # (T, r) = Σ_j w_j M_{idx_j} h
    out = F.linear(c.scale * merged, mod.B.weight)
    return out.reshape(*x.shape[:-1], c.out_features)


def sparse_macs(mod: MoELoRA | HydraLoRA | TalkLoRA | CoMoL) -> int:
    """Matmul multiply–adds per token of the sparse top-k forward (the dense count is
    `proofs_numeric.complexity.macs_formula`): the router and whatever the router reads in full,
    then only the k chosen experts."""
    from .comol import CoMoL
    from .hydralora import HydraLoRA
    from .moelora import MoELoRA

    assert mod.router is not None and mod.router.top_k is not None
    k, n, m = mod.router.top_k, mod.in_features, mod.out_features
    if isinstance(mod, MoELoRA):
        mc = mod.config
        E, d = mc.num_experts, mc.expert_rank
        if mc.router == "input":
            down = k * d * n if _gather_wins(E, k, d) else E * d * n
            return E * n + down + k * d * m
        return E * d * n + E * E * d + k * d * m
    if isinstance(mod, HydraLoRA):
        hc = mod.config
        return (hc.expert_rank + hc.num_experts) * n + k * hc.expert_rank * m
    if isinstance(mod, CoMoL):
        cc = mod.config
        router = cc.num_cores * (cc.rank if cc.core_router else n)
        return cc.rank * n + router + k * cc.rank * cc.rank + cc.rank * m
    tc = mod.config  # TalkLoRA
    d = tc.head_dim
    return tc.rank * n + tc.num_experts * tc.rank + k * d * d + k * d * m
