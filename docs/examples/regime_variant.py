"""Claims that hold in a regime: an assumption on a Θ claim, `where=` on a config, a ball for a
Lipschitz claim; beside each, the same claim without its regime, declared `expect="refuted"`.

A DenseLoRA-style core between the LoRA factors:

    Δ(x) = s · B M A x        A: r x n,  M: r x r (the core),  B: m x r
    parameters r(n + m) + r², and as many multiply-adds per token

* `params_theta_assuming_r_le_n`: r(n + m) + r² = Θ(r(n + m)) assuming r <= n (then r² <= r·n); without
  the assumption it is false (r² dominates as r outgrows n and m).
* `params_at_most_twice_lora` (`where=`): the core costs at most another LoRA, r(n + m) + r² <= 2r(n + m),
  exactly when r <= n + m.
* `energy_lipschitz_on_ball` (`radius=`): the energy E(x) = ‖Δ(x)‖² has gradient 2 WᵀW x (W = s B M A),
  so it is 2‖W‖₂²·R-Lipschitz on the ball ‖x‖ <= R, and on no larger region: over all x it is refuted.

Run: `moelora verify docs/examples/regime_variant.py` (exit code 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import sympy as sp
import torch
import torch.nn.functional as F
from torch import Tensor

from moelora_core import symbols as S
from moelora_core.adapter import Adapter
from moelora_core.errors import require_finite_float, require_positive_int
from moelora_core.maps import Dense
from proofs_numeric import variants as v

RADIUS = 2.0


@dataclass(frozen=True)
class CoreLoRAConfig:
    in_features: int  # n
    out_features: int  # m
    rank: int  # r
    scale: float = 1.0  # s

    def __post_init__(self) -> None:
        for name in ("in_features", "out_features", "rank"):
            require_positive_int(name, getattr(self, name))
        require_finite_float("scale", self.scale)


class CoreLoRA(Adapter):
    family: ClassVar[str] = "corelora"
    config: CoreLoRAConfig

    def __init__(self, config: CoreLoRAConfig) -> None:
        super().__init__()
        c = self.config = config
        self.A = Dense(c.rank, c.in_features, name="A")
        self.M = Dense(c.rank, c.rank, name="M")
        self.B = Dense(c.out_features, c.rank, "zeros", name="B")
        self.router = None

    def forward(self, x: Tensor) -> Tensor:
        h = F.linear(F.linear(self._check(x), self.A.weight), self.M.weight)  # (..., r)
        return self.config.scale * F.linear(h, self.B.weight)  # (..., m)

    def energy(self, x: Tensor) -> Tensor:
        """E(x) = ‖Δ(x)‖², (..., n) -> (..., 1)."""
        return self(x).square().sum(-1, keepdim=True)

    def merged(self) -> Tensor:
        """W = s B M A, (m, n)."""
        return self.config.scale * self.B.weight @ self.M.weight @ self.A.weight

    def param_formula(self) -> sp.Expr:
        return S.r * (S.n + S.m) + S.r**2

    def param_subs(self) -> dict[sp.Symbol, int]:
        c = self.config
        return {S.n: c.in_features, S.m: c.out_features, S.r: c.rank}


def params_vs_twice_lora(a: Adapter, x: Tensor) -> float:
    """Counted parameters <= 2 r (n + m) (the signed excess: <= 0 when it holds)."""
    c = a.config
    return a.num_trainable_params() - 2 * c.rank * (c.in_features + c.out_features)


def energy_bound(a: Adapter) -> float:
    """2 ‖W‖₂² R: the largest gradient norm of E on the ball of radius R."""
    assert isinstance(a, CoreLoRA)
    return 2 * float(torch.linalg.matrix_norm(a.merged(), ord=2)) ** 2 * RADIUS


VARIANT = v.Variant(
    "core_lora",
    build=CoreLoRA,
    shapes={"in_features": (1, 4), "out_features": (1, 4), "rank": (1, 10), "scale": [1.0, 0.5]},
    claims=[
        v.param_formula("r*(n + m) + r**2"),
        v.mac_formula("r*(n + m) + r**2"),  # A, the core, B: one matmul each per token
        v.complexity(
            "r*(n + m) + r**2",
            theta="r*(n + m)",
            assume="r <= n",
            name="params_theta_assuming_r_le_n",
        ),
        v.complexity("r*(n + m) + r**2", theta="r*(n + m)", name="params_theta", expect="refuted"),
        v.property(
            "params_at_most_twice_lora",
            params_vs_twice_lora,
            where=lambda c: c.rank <= c.in_features + c.out_features,
        ),
        v.property("params_at_most_twice_lora_always", params_vs_twice_lora, expect="refuted"),
        v.lipschitz_bound(
            energy_bound,
            of="energy",
            radius=RADIUS,
            name="energy_lipschitz_on_ball",
            max_examples=40,
        ),
        v.lipschitz_bound(
            energy_bound,
            of="energy",
            name="energy_lipschitz_everywhere",
            expect="refuted",
            max_examples=40,
        ),
    ],
)
