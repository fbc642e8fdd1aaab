"""The adversarial phase: structured redraws of a drawn instance's parameters and inputs, gradient
ascent on a claim's margin, and per-tensor seeded parameter streams.

After a claim's random phase finds nothing, `check_claim` runs it again on cases that carry a `Tweak`
(drawn by Hypothesis, so a violation is shrunk like any other, towards `plain`, no noise, no ascent):

* a structure applied to the seeded parameters: `near_equal_experts` (every expert block = the first,
  plus noise: Σ_i g_i = 1 makes the mixture one expert), `near_tie_router` (equal router rows: tied
  logits), `low_rank` (each matrix -> its best rank-1 approximation), `orthogonal` (each matrix -> the
  Q of its QR factorisation), `symmetric` (square matrices -> (W + Wᵀ)/2), `large_weights` /
  `small_weights` (x 1e3 / 1e-3), `large_inputs` / `small_inputs` (x 1e4 / 1e-4);
* `eps`: relative Gaussian noise added after the structure (near-equal rather than equal);
* `steps`: gradient-ascent steps through torch autograd on the claim's margin, jointly in every
  parameter and the inputs, for claims whose margin is a differentiable tensor (a `property` whose
  predicate returns one). The final check is the claim's ordinary one on the resulting instance.

Every tensor gets its own generator, seeded by (seed, parameter name), so that changing a dimension
the claim never reads leaves the other tensors' draws, and the witness, unchanged.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from torch import Tensor

from moelora_core.adapter import Adapter

STRUCTURES = (
    "plain",
    "near_equal_experts",
    "near_tie_router",
    "low_rank",
    "orthogonal",
    "symmetric",
    "large_weights",
    "small_weights",
    "large_inputs",
    "small_inputs",
)
INPUT_SCALE = {"large_inputs": 1e4, "small_inputs": 1e-4}
WEIGHT_SCALE = {"large_weights": 1e3, "small_weights": 1e-3}


@dataclass(frozen=True)
class Tweak:
    """A structured redraw (`structure`, noise `eps`) and `steps` of gradient ascent; `meta`: the
    instance is only counted (built on the meta device at extreme sizes, no values)."""

    structure: str = "plain"
    eps: float = 0.0
    steps: int = 0
    meta: bool = False

    def __post_init__(self) -> None:
        if self.structure not in STRUCTURES:
            from .base import VariantError

            raise VariantError(f"Tweak structure={self.structure!r}: expected one of {STRUCTURES}")


def tweaks() -> SearchStrategy[Tweak]:
    return st.builds(
        Tweak,
        structure=st.sampled_from(STRUCTURES),
        eps=st.sampled_from([0.0, 1e-3, 0.1]),
        steps=st.sampled_from([0, 8, 32]),
    )


def stream(seed: int, name: str) -> torch.Generator:
    """The generator of one named tensor of an instance drawn with `seed`."""
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def init_parameters(a: Adapter, seed: int) -> None:
    """Every parameter N(0, 1/fan_in) (fan_in = its last dimension) from its own stream."""
    with torch.no_grad():
        for name, p in a.named_parameters():
            sd = 1.0 / math.sqrt(max(1, p.shape[-1])) if p.dim() else 1.0
            draw = torch.randn(p.shape, generator=stream(seed, name), dtype=torch.float64) * sd
            p.copy_(draw.to(p.dtype))


def _expert_axis(p: Tensor, E: int, sizes: tuple[int, int]) -> int | None:
    """The axis of a matrix that stacks E expert blocks: divisible by E, preferably not n or m."""
    axes = [ax for ax in (0, 1) if p.shape[ax] % E == 0 and p.shape[ax] >= E]
    preferred = [ax for ax in axes if p.shape[ax] not in sizes]
    return (preferred or axes)[0] if axes else None


def _equal_blocks(p: Tensor, E: int, axis: int) -> Tensor:
    blocks = p.movedim(axis, 0).unflatten(0, (E, -1))  # (E, k, ...)
    out: Tensor = blocks[:1].expand_as(blocks).flatten(0, 1).movedim(0, axis)
    return out


def _structured(name: str, p: Tensor, structure: str, a: Adapter) -> Tensor:
    if structure in WEIGHT_SCALE:
        return p * WEIGHT_SCALE[structure]
    if p.dim() != 2 or min(p.shape) < 1:
        return p
    if structure == "near_equal_experts" and a.num_experts > 1:
        axis = _expert_axis(p, a.num_experts, (a.in_features, a.out_features))
        return p if axis is None else _equal_blocks(p, a.num_experts, axis)
    if structure == "near_tie_router" and "router" in name:
        return p[:1].expand_as(p)
    if structure == "low_rank" and min(p.shape) > 1:
        U, S, Vh = torch.linalg.svd(p, full_matrices=False)
        rank1: Tensor = S[0] * torch.outer(U[:, 0], Vh[0])
        return rank1
    if structure == "orthogonal":
        tall = p if p.shape[0] >= p.shape[1] else p.T
        Q: Tensor = torch.linalg.qr(tall).Q
        return Q if p.shape[0] >= p.shape[1] else Q.T
    if structure == "symmetric" and p.shape[0] == p.shape[1]:
        return (p + p.T) / 2
    return p


def apply_structure(a: Adapter, seed: int, tweak: Tweak) -> None:
    """Replace the parameters by their structured versions plus `eps`-relative noise (own streams)."""
    with torch.no_grad():
        for name, p in a.named_parameters():
            q = _structured(name, p.detach(), tweak.structure, a)
            if tweak.eps > 0:
                noise = torch.randn(p.shape, generator=stream(seed, name + "#eps"), dtype=p.dtype)
                q = q + tweak.eps * (1 + float(q.abs().max())) * noise
            p.copy_(q)


def ascend(a: Adapter, x: Tensor, margin: Callable[[Tensor], object], steps: int) -> int:
    """Gradient ascent on `margin(x)` (a scalar tensor the claim wants small) jointly in the adapter's
    parameters and `x`, in place: normalised steps of 10 % of each tensor's norm, shrinking by 0.85.
    Stops (returning the steps done) when the margin is not a differentiable scalar or raises."""
    params = [p for p in a.parameters() if p.requires_grad and p.dtype.is_floating_point]
    with warnings.catch_warnings():  # e.g. float() of a tensor that requires grad
        warnings.simplefilter("ignore")
        return _ascend(params, x, margin, steps)


def _ascend(
    params: Sequence[Tensor], x: Tensor, margin: Callable[[Tensor], object], steps: int
) -> int:
    lr = 0.1
    for k in range(steps):
        xv = x.detach().clone().requires_grad_(True)
        try:
            with torch.enable_grad():
                m = margin(xv)
                if not (isinstance(m, Tensor) and m.numel() == 1 and m.requires_grad):
                    return k
                grads = torch.autograd.grad(m.reshape(()), [*params, xv], allow_unused=True)
        except Exception:  # the ordinary check reports whatever is wrong with the margin
            return k
        with torch.no_grad():
            for t, g in zip([*params, x], grads, strict=True):
                norm = torch.linalg.vector_norm(g) if g is not None else None
                if g is None or norm is None or not bool(torch.isfinite(norm)) or norm == 0:
                    continue
                t.add_(g * (lr * (float(torch.linalg.vector_norm(t)) + 1e-3) / norm))
        lr *= 0.85
    return steps
