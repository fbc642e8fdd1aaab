"""Experts stored stacked: A = [A_1; ...; A_E] (E·r_e x n), B = [B_1 ... B_E] (m x E·r_e).

MoELoRA, MoLA and AdaMoLE keep their experts this way, HydraLoRA its heads B_i (with one shared A,
i.e. A_i = A for every i). The helpers here read the blocks as views and state, once, what those
architectures share:

    P_i = s · B_i A_i                                   (`matrices`, `factors`)
    Δ_ref(x) = s · Σ_i g_i(x) B_i (A_i x)               (`reference_sum`: the literal sum, unfused)
    A_i := A_1, B_i := B_1 for every i                  (`equal_experts_`: then Δ = s B_1 A_1 x)
    LoRA(A_1, B_1) with scale s                         (`first_expert_lora`)
    s · Σ_j w_j B_{idx_j} A_{idx_j} x over the k chosen   (`sparse_topk`: the sparse top-k path)
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from . import sparse
from .declared import ExpertFactors
from .lora import LoRA, LoRAConfig
from .maps import Dense

__all__ = [
    "StackedAdapter",
    "StackedConfig",
    "blocks",
    "down_blocks",
    "equal_experts_",
    "equalise_",
    "expert_factors",
    "expert_matrices",
    "factors",
    "first_expert_lora",
    "lora_of",
    "matrices",
    "reference_sum",
    "sparse_topk",
    "up_blocks",
]


class StackedConfig(Protocol):
    @property
    def num_experts(self) -> int: ...  # E
    @property
    def expert_rank(self) -> int: ...  # r_e
    @property
    def scale(self) -> float: ...  # s


class StackedAdapter(Protocol):
    """An adapter with A: E·r_e x n and B: m x E·r_e stacked as above."""

    A: Dense
    B: Dense

    @property
    def config(self) -> StackedConfig: ...


def down_blocks(A: Tensor, num_experts: int, expert_rank: int) -> Tensor:
    """(A_i) as (E, r_e, n): a view of A (E·r_e, n)."""
    out: Tensor = A.unflatten(0, (num_experts, expert_rank))
    return out


def up_blocks(B: Tensor, num_experts: int, expert_rank: int) -> Tensor:
    """(B_i) as (E, m, r_e): a view of B (m, E·r_e)."""
    out: Tensor = B.unflatten(1, (num_experts, expert_rank)).transpose(0, 1)
    return out


def blocks(a: StackedAdapter) -> tuple[Tensor, Tensor]:
    """(A_i) as (E, r_e, n) and (B_i) as (E, m, r_e), views of the adapter's A and B."""
    c = a.config
    return (
        down_blocks(a.A.weight, c.num_experts, c.expert_rank),
        up_blocks(a.B.weight, c.num_experts, c.expert_rank),
    )


def matrices(A: Tensor, B: Tensor, scale: float) -> Tensor:
    """P_i = s·B_i A_i (E, m, n) from A (E, r_e, n) (or (1, r_e, n), shared) and B (E, m, r_e)."""
    return scale * torch.matmul(B, A)


def factors(A: Tensor, B: Tensor, scale: float) -> ExpertFactors:
    """P_i = s·B_i A_i as float64 CPU factors: left (B_i (E, m, r_e),), right A (E or 1, r_e, n)."""
    A64, B64 = (t.detach().to(device="cpu", dtype=torch.float64) for t in (A, B))
    return ExpertFactors(left=(B64,), right=A64, scale=float(scale))


def reference_sum(g: Tensor, x: Tensor, A: Tensor, B: Tensor, scale: float) -> Tensor:
    """s·Σ_i g_i B_i (A_i x), summed over the expert axis: g (..., E), x (..., n), A (E or 1, r_e, n),
    B (E, m, r_e) -> (..., m)."""
    A = A.expand(B.shape[0], -1, -1)  # a shared A: A_i = A
    h = torch.einsum("ein,...n->...ei", A, x)  # (..., E, r_e): A_i x
    y = torch.einsum("emi,...ei->...em", B, h)  # (..., E, m): B_i A_i x
    return scale * torch.einsum("...e,...em->...m", g, y)


def expert_matrices(a: StackedAdapter) -> Tensor:
    """P_i = s·B_i A_i, (E, m, n)."""
    return matrices(*blocks(a), a.config.scale)


def expert_factors(a: StackedAdapter) -> ExpertFactors:
    """P_i = s·B_i A_i: left (B_i (E, m, r_e),), right A_i (E, r_e, n), float64 on the CPU."""
    A, B = blocks(a)
    return factors(A, B, a.config.scale)


@torch.no_grad()
def equalise_(*stacks: Tensor) -> None:
    """Every block i of each stack (E, ...) := block 1, in place (the stacks are views)."""
    for s in stacks:
        s.copy_(s[:1].clone().expand_as(s))


@torch.no_grad()
def equal_experts_(a: StackedAdapter) -> None:
    """Every (A_i, B_i) := (A_1, B_1)."""
    equalise_(*blocks(a))


@torch.no_grad()
def lora_of(A: Tensor, B: Tensor, scale: float) -> LoRA:
    """The LoRA `s·B A` with the given factors A: r x n, B: m x r (copied)."""
    out = LoRA(
        LoRAConfig(in_features=A.shape[1], out_features=B.shape[0], rank=A.shape[0], scale=scale),
        dtype=A.dtype,
        device=A.device,
    )
    out.A.weight.copy_(A)
    out.B.weight.copy_(B)
    return out


@torch.no_grad()
def first_expert_lora(a: StackedAdapter) -> LoRA:
    """LoRA s·B_1 A_1: equal to the adapter when every expert is (A_1, B_1), since Σ_i g_i = 1."""
    A, B = blocks(a)
    return lora_of(A[0], B[0], a.config.scale)


def sparse_topk(
    xf: Tensor, A: Tensor, B: Tensor, W: Tensor, k: int, d: int, scale: float, *, latent: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """s · Σ_j w_j B_{idx_j} A_{idx_j} x with the k chosen experts only (`moelora_core.sparse`).

    xf (T, n), A (E·d, n), B (m, E·d), W (E, n) for an input router or (E, E·d) for a latent one
    (logits W A x) -> (out (T, m), logits (T, E), idx (T, k)). The chosen A_i x come from
    `route_and_dot_logits` when `gather_wins` (a latent router folded once per call to W A, so the
    router reads x), else from the dense A x.
    """
    E = W.shape[0]
    if sparse.gather_wins(E, k, d):
        Wx = W @ A if latent else W  # (E, n): latent costs E·r·n MACs per call
        logits, idx, w, cols, hk = sparse.route_and_dot_logits(xf, Wx, A, k, d)
        h = hk.unflatten(-1, (k, d))  # (T, k, d): A_{idx_j} x
    else:
        if latent:
            hall = F.linear(xf, A)  # (T, E·d)
            logits = F.linear(hall, W)  # (T, E)
        else:  # [A; W] x in one matmul
            hall, logits = F.linear(xf, torch.cat([A, W])).split([A.shape[0], E], dim=-1)
        idx, w = sparse.topk_route(logits, k)  # (T, k), (T, k)
        cols = sparse.expert_columns(idx, d)  # (T, k·d)
        h = hall.gather(-1, cols).unflatten(-1, (k, d))  # (T, k, d)
    coef = (h * (scale * w).unsqueeze(-1)).flatten(-2)  # (T, k·d)
    return sparse.mix_columns(cols, coef, B.t().contiguous()), logits, idx  # (T, m)
