"""TalkLoRA's talking module T through the head-perturbation bound.

At fixed W_r the head bound ½‖W_r‖₂‖T‖₂ is ‖T‖₂ times its value at T = I: T amplifies perturbations of
the expert heads iff ‖T‖₂ > 1. A perturbation confined to head j becomes (T e_j) ⊗ δ_j, scaled by
‖T e_j‖₂ (column norm).

Averaging T_a = (1 − a) I + (a/E) 11ᵀ, a ∈ [0, 1]: symmetric with eigenvalue 1 on 1 and 1 − a on 1^⊥, so
‖T_a‖₂ = 1 (no amplification), and ‖T_a e_j‖₂² = 1 − (2a − a²)(1 − 1/E) < 1 for a > 0, E >= 2: a
single-head perturbation shrinks. The sharpening twin (1 + a) I − (a/E) 11ᵀ has ‖·‖₂ = 1 + a.

Reference initialisation: kaiming-uniform with a = √5 on an E x E matrix draws entries U(−1/√E, 1/√E)
(gain √(2/(1 + a²)) = 1/√3, bound √3 · gain / √fan_in). `reference_init_amplification` measures
P(‖T‖₂ > 1) by Monte Carlo with a Wilson 99% interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from moelora_core.errors import ConfigError
from moelora_core.validate import require_int, require_real, require_seed

from .spectral import F64

WILSON_Z = 2.5758293035489  # two-sided 99%
MAX_TALK_E = 4096  # an E x E talking matrix; E is 4 in the reference code
MAX_DRAW_ELEMENTS = 2**26  # draws x E x E: 256 MiB of float32 (512 MiB once in float64)


def averaging_talk(E: int, a: float) -> Tensor:
    """T_a = (1 − a) I + (a/E) 11ᵀ (E x E, float64), a ∈ [0, 1]."""
    require_int("E", E, 1, MAX_TALK_E)
    a = require_real("a", a, minimum=0.0)
    if a > 1:
        raise ConfigError(f"a={a!r}: expected a real number in [0, 1] (an averaging weight)")
    return (1 - a) * torch.eye(E, dtype=F64) + (a / E) * torch.ones(E, E, dtype=F64)


def sharpening_talk(E: int, a: float) -> Tensor:
    """(1 + a) I − (a/E) 11ᵀ: the mutated twin of `averaging_talk` (norm 1 + a), a >= 0."""
    require_int("E", E, 1, MAX_TALK_E)
    a = require_real("a", a, minimum=0.0)
    return (1 + a) * torch.eye(E, dtype=F64) - (a / E) * torch.ones(E, E, dtype=F64)


def reference_init_talk(E: int, draws: int, seed: int) -> Tensor:
    """`draws` independent E x E matrices as `nn.init.kaiming_uniform_(T, a=√5)` draws them.

    Same generator stream as calling kaiming_uniform_ on one (E, E) tensor per draw, in order
    (checked in the tests): entries U(−1/√E, 1/√E), row-major.
    """
    require_int("E", E, 1, MAX_TALK_E)
    require_int("draws", draws, 1, MAX_DRAW_ELEMENTS // (E * E))
    require_seed("seed", seed)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    bound = 1.0 / math.sqrt(E)
    return torch.empty(draws, E, E, dtype=torch.float32).uniform_(-bound, bound, generator=gen)


@dataclass(frozen=True)
class Amplification:
    """Measured P(‖T‖₂ > 1) under the reference initialisation."""

    num_experts: int
    draws: int
    fraction: float
    low: float  # Wilson 99% interval
    high: float
    median_norm: float
    seed: int

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def wilson(successes: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    p = successes / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def reference_init_amplification(E: int, draws: int = 20000, seed: int = 0) -> Amplification:
    """Fraction of kaiming-uniform (a = √5) talking matrices with ‖T‖₂ > 1."""
    require_int("E", E, 1, MAX_TALK_E)
    require_int("draws", draws, 1, MAX_DRAW_ELEMENTS // (E * E))
    T = reference_init_talk(E, draws, seed).to(F64)
    norms = torch.linalg.matrix_norm(T, ord=2)  # (draws,)
    hits = int((norms > 1.0).sum())
    lo, hi = wilson(hits, draws)
    return Amplification(E, draws, hits / draws, lo, hi, float(norms.median()), seed)
