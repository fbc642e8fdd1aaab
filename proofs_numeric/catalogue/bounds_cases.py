"""The drawn instances of the bound claims (catalogue/bounds.py): their dataclasses and strategies.

Tiny shapes (n <= 6, m <= 3, E <= 4) so that a whole `layer_report` per example costs 30-90 ms; the
first listed choices are drawn first. `BUDGET` is the search budget of those reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from hypothesis import strategies as st
from torch import Tensor

from moelora_core.adapter import Adapter
from moelora_core.moelora import MoELoRA, MoELoRAConfig
from moelora_core.talklora import TalkLoRA, TalkLoRAConfig
from moelora_core.validate import require_instance

from ..bounds.instances import ARCHS, DTYPE, Arch, build, random_adapter, randomized

BUDGET: dict[str, Any] = {
    "samples": 6,
    "iterations": 3,
    "ascent_steps": 1,
    "pair_steps": 2,
    "local_samples": 2,
}

# ----- softmax -----------------------------------------------------------------------------------

probabilities = st.one_of(
    st.lists(st.floats(-30, 30), min_size=1, max_size=8).map(
        lambda z: torch.softmax(torch.tensor(z, dtype=DTYPE), 0)
    ),
    st.lists(st.floats(0, 1), min_size=1, max_size=8)
    .filter(lambda w: sum(w) > 1e-6)
    .map(lambda w: torch.tensor(w, dtype=DTYPE) / sum(w)),
    st.integers(2, 8).map(lambda E: torch.tensor([0.5, 0.5] + [0.0] * (E - 2), dtype=DTYPE)),
)

# ----- routers, local bounds ------------------------------------------------------------------


@dataclass(frozen=True)
class RouterCase:
    """An architecture, its sizes, a weight seed and scale, and a domain (inputs drawn from seed)."""

    arch: Arch
    n: int
    m: int
    E: int
    r_e: int
    seed: int
    scale: float
    domain: Literal["unconstrained", "points", "ball"]
    radius: float
    centre_scale: float = 2.0

    def build(self) -> Adapter:
        return randomized(build(self.arch, self.n, self.m, self.E, self.r_e), self.seed, self.scale)

    def inputs(self) -> Tensor | None:
        if self.domain == "unconstrained":
            return None
        gen = torch.Generator().manual_seed(self.seed + 1)
        return self.centre_scale * torch.randn(3, self.n, generator=gen, dtype=DTYPE)

    def report_kwargs(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs(),
            "radius": self.radius if self.domain == "ball" else None,
            "seed": self.seed,
            **BUDGET,
        }


def router_cases(
    domains: tuple[str, ...] = ("unconstrained", "points", "ball"),
    min_experts: int = 1,
    scales: tuple[float, ...] = (1.0, 0.5, 3.0),
    centre_scales: tuple[float, ...] = (2.0, 0.5, 6.0),
) -> st.SearchStrategy[RouterCase]:
    """Tiny instances (n <= 5, m <= 3, E <= 4); the first listed choices are drawn first."""
    return st.builds(
        RouterCase,
        arch=st.sampled_from(ARCHS),
        n=st.integers(1, 5),
        m=st.integers(1, 3),
        E=st.integers(min_experts, 4),
        r_e=st.integers(1, 2),
        seed=st.integers(0, 255),
        scale=st.sampled_from(scales),
        domain=st.sampled_from(domains),
        radius=st.sampled_from([0.5, 2.0, 0.0]),
        centre_scale=st.sampled_from(centre_scales),
    )


LOCAL_CASES = router_cases(("ball", "points"), 2, (3.0, 1.0, 0.5), (6.0, 2.0, 0.5))

# ----- tightness ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TightCase:
    """softmax(W x), W = c (Q + ε N/‖N‖₂): Q has orthonormal rows (E <= n); E = 2: W Gaussian."""

    E: int
    extra: int  # n = E + extra
    seed: int
    eps: float
    scale: float

    def weight(self) -> Tensor:
        n = self.E + self.extra
        gen = torch.Generator().manual_seed(self.seed)
        G = torch.randn(self.E, n, generator=gen, dtype=DTYPE)
        if self.E == 2:
            return self.scale * G
        Q = torch.linalg.qr(G.T).Q.T  # (E, n), orthonormal rows
        N = torch.randn(self.E, n, generator=gen, dtype=DTYPE)
        W: Tensor = self.scale * (Q + self.eps * N / torch.linalg.matrix_norm(N, ord=2))
        return W

    def build(self) -> MoELoRA:
        n = self.E + self.extra
        cfg = MoELoRAConfig(in_features=n, out_features=1, num_experts=self.E, expert_rank=1)
        a = require_instance("adapter", random_adapter(cfg, self.seed), MoELoRA)
        with torch.no_grad():
            a.router.logits.dense().copy_(self.weight())
        return a


tight_cases = st.builds(
    TightCase,
    E=st.integers(2, 6),
    extra=st.integers(0, 6),
    seed=st.integers(0, 255),
    eps=st.floats(0.0, 0.04),
    scale=st.sampled_from([1.0, 0.3, 3.0]),
)

# ----- TalkLoRA ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TalkCase:
    n: int
    m: int
    E: int
    d: int  # head dim r/E
    seed: int
    scale: float

    def build(self) -> TalkLoRA:
        cfg = TalkLoRAConfig(
            in_features=self.n, out_features=self.m, rank=self.E * self.d, num_experts=self.E
        )
        return require_instance("adapter", random_adapter(cfg, self.seed, self.scale), TalkLoRA)


talk_cases = st.builds(
    TalkCase,
    n=st.integers(1, 6),
    m=st.integers(1, 3),
    E=st.integers(1, 4),
    d=st.integers(1, 3),
    seed=st.integers(0, 255),
    scale=st.sampled_from([1.0, 0.5, 2.0]),
)

avg_cases = st.tuples(st.integers(2, 12), st.floats(0.01, 1.0))

# ----- top-k -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopKCase:
    arch: Arch
    E: int
    k: int
    extra: int  # n = E + extra, so that Π L has rank E − 1
    seed: int

    def build(self) -> Adapter:
        a = build(self.arch, self.E + self.extra, 2, self.E, 2, top_k=self.k)
        return randomized(a, self.seed, 1.0)


topk_cases = st.integers(2, 4).flatmap(
    lambda E: st.builds(
        TopKCase,
        arch=st.sampled_from(ARCHS),
        E=st.just(E),
        k=st.integers(1, E - 1),
        extra=st.integers(0, 2),
        seed=st.integers(0, 255),
    )
)
