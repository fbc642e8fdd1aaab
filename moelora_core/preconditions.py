"""The preconditions of the declared reductions (`Adapter.reductions()`), each made to hold in place,
and `on`, which turns a reduction of one architecture into a `Callable[[Adapter], ...]`.

* `equal_experts_`  (MoELoRA):  A_i = A_1, B_i = B_1 for every i  ->  Δ = s B_1 A_1 x (Σ_i g_i = 1);
* `equal_heads_`    (HydraLoRA): B_i = B_1                          ->  Δ = s B_1 A x;
* `equal_cores_`    (CoMoL):    M_i = M_1                           ->  Δ = s B M_1 A x;
* `identity_talking_` (TalkLoRA): T = I                             ->  g = softmax(W_r A x);
* `identity_talking_and_experts_` (TalkLoRA): T = I and K_i = I     (SPEC claim 1 as stated).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch

from .adapter import Adapter
from .comol import CoMoL
from .declared import no_preparation
from .hydralora import HydraLoRA
from .lora import LoRA
from .reductions import comol_to_lora, hydralora_to_lora
from .stacked import equal_experts_, equalise_, up_blocks
from .talklora import TalkLoRA
from .validate import require_instance

__all__ = [
    "equal_cores_",
    "equal_experts_",
    "equal_heads_",
    "first_core_lora",
    "first_head_lora",
    "identity_talking_",
    "identity_talking_and_experts_",
    "no_preparation",
    "on",
]

A = TypeVar("A", bound=Adapter)
R = TypeVar("R")


def on(cls: type[A], fn: Callable[[A], R]) -> Callable[[Adapter], R]:
    """`fn` on adapters of `cls` only (ArgumentTypeError naming the class otherwise)."""

    def run(adapter: Adapter) -> R:
        return fn(require_instance("adapter", adapter, cls))

    run.__doc__ = fn.__doc__
    return run


@torch.no_grad()
def equal_heads_(hy: HydraLoRA) -> None:
    """B_i = B_1 for every head i."""
    c = hy.config
    equalise_(up_blocks(hy.B.weight, c.num_experts, c.expert_rank))  # (E, m, r_e), a view


@torch.no_grad()
def equal_cores_(co: CoMoL) -> None:
    """M_i = M_1 for every core i."""
    equalise_(co.cores)


@torch.no_grad()
def identity_talking_(t: TalkLoRA) -> None:
    """T = I_E."""
    t.T.weight.copy_(torch.eye(t.num_experts, dtype=t.T.weight.dtype, device=t.T.weight.device))


@torch.no_grad()
def identity_talking_and_experts_(t: TalkLoRA) -> None:
    """T = I_E and every K_i = I_{r/E}."""
    identity_talking_(t)
    K = t.K.weight  # (E, d, d)
    K.copy_(torch.eye(K.shape[-1], dtype=K.dtype, device=K.device).expand_as(K))


def first_head_lora(hy: HydraLoRA) -> LoRA:
    """LoRA(A, B_1), without the equal-heads check."""
    return hydralora_to_lora(hy, atol=math.inf)


def first_core_lora(co: CoMoL) -> LoRA:
    """LoRA(A, B M_1), without the equal-cores check."""
    return comol_to_lora(co, atol=math.inf)
