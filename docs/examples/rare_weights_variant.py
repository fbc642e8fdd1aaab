"""A false inequality that random weights almost never break: only the adversarial phase refutes it.

MoELoRA with an input router, experts M_i = B_i A_i (m x n). Two beliefs about how experts add up:

    true   (Cauchy–Schwarz):        ‖Σ_i M_i‖_F² <= E · Σ_i ‖M_i‖_F²
    FALSE  ("experts interfere little"): ‖Σ_i M_i‖_F² <= 2.5 · Σ_i ‖M_i‖_F²

The second fails when three or more experts point the same way (equal experts give E² vs 2.5·E).
For independent N(0, 1/fan_in) draws that is rare: about 6-7 % of draws at the smallest shapes
(n = m = r_e = 1, E = 3 or 4), about 1 % or less at any other shape, and the `ci` profile's 200
random cases miss it. The adversarial
phase redraws the parameters with structure (here `near_equal_experts`) and climbs the margin by
gradient ascent (the predicate returns a tensor), and refutes it within a few dozen cases.

Run: `moelora verify docs/examples/rare_weights_variant.py` (exit code 1: one claim refuted).
"""

from __future__ import annotations

from torch import Tensor

from moelora_core.adapter import Adapter
from moelora_core.moelora import MoELoRA, MoELoRAConfig
from proofs_numeric import variants as v


def energies(a: Adapter) -> tuple[Tensor, Tensor]:
    """(‖Σ_i M_i‖_F², Σ_i ‖M_i‖_F²) of the expert matrices M_i = B_i A_i."""
    M = a.expert_matrices()  # (E, m, n)
    return M.sum(0).square().sum(), M.square().sum()


def cauchy_schwarz(a: Adapter, x: Tensor) -> Tensor:
    """‖Σ_i M_i‖_F² <= E · Σ_i ‖M_i‖_F² (returns the signed margin: <= 0 when it holds)."""
    merged, total = energies(a)
    return merged / (a.num_experts * total) - 1


def interfere_little(a: Adapter, x: Tensor) -> Tensor:
    """‖Σ_i M_i‖_F² <= 2.5 · Σ_i ‖M_i‖_F²: experts interfere little (FALSE for aligned experts)."""
    merged, total = energies(a)
    return merged / (2.5 * total) - 1


VARIANT = v.Variant(
    "rare_weights",
    build=MoELoRA,
    config=MoELoRAConfig,
    shapes={
        "in_features": (1, 6),
        "out_features": (1, 6),
        "num_experts": (2, 4),
        "expert_rank": (1, 2),
        "router": "input",
    },
    claims=[
        v.property("merged_energy_cauchy_schwarz", cauchy_schwarz, tol=1e-12),
        v.property("experts_interfere_little", interfere_little, tol=1e-12),
    ],
)
