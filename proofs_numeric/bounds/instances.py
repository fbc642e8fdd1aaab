"""Small float64 instances of every routed architecture, for the bound claims and tests, built
through the registry (`moelora_core.registry.create`, `proofs_numeric.strategies.build_random`).

    a = randomized(build("talklora", n=5, m=3, E=4, r_e=2), seed=0, scale=1.0)

`ARCHS` names the routed kinds the bounds are checked on (both routers of MoELoRA and CoMoL).
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import torch

from moelora_core.adapter import Adapter
from moelora_core.comol import CoMoLConfig
from moelora_core.hydralora import HydraLoRAConfig
from moelora_core.moelora import MoELoRAConfig
from moelora_core.registry import create
from moelora_core.talklora import TalkLoRAConfig

DTYPE = torch.float64
Arch = Literal[
    "moelora-input", "moelora-latent", "hydralora", "talklora", "comol-core", "comol-input"
]
ARCHS: tuple[Arch, ...] = (
    "moelora-input",
    "moelora-latent",
    "hydralora",
    "talklora",
    "comol-core",
    "comol-input",
)
A = TypeVar("A", bound=Adapter)


def config_for(arch: Arch, n: int, m: int, E: int, r_e: int, top_k: int | None = None) -> Any:
    """The config of the named kind: n -> m, E experts of rank r_e (total rank E·r_e; CoMoL rank
    r_e + E − 1 >= E with E cores)."""
    if arch in ("moelora-input", "moelora-latent"):
        kind: Literal["input", "latent"] = "input" if arch == "moelora-input" else "latent"
        return MoELoRAConfig(
            in_features=n, out_features=m, num_experts=E, expert_rank=r_e, router=kind, top_k=top_k
        )
    if arch == "hydralora":
        return HydraLoRAConfig(
            in_features=n, out_features=m, num_experts=E, expert_rank=r_e, top_k=top_k
        )
    if arch == "talklora":
        return TalkLoRAConfig(
            in_features=n, out_features=m, rank=E * r_e, num_experts=E, top_k=top_k
        )
    return CoMoLConfig(
        in_features=n, out_features=m, rank=r_e + E - 1, num_cores=E,
        core_router=arch == "comol-core", top_k=top_k,
    )  # fmt: skip


def build(arch: Arch, n: int, m: int, E: int, r_e: int, top_k: int | None = None) -> Adapter:
    """A float64 adapter of the named kind (`config_for`), built by the registry."""
    return create(config_for(arch, n, m, E, r_e, top_k), dtype=DTYPE)


@torch.no_grad()
def randomized(a: A, seed: int, scale: float) -> A:
    """`a` with seeded random weights (`randomize_`, as `strategies.build_random` draws them), every
    parameter multiplied by `scale`."""
    a.randomize_(seed)
    for p in a.parameters():
        p.mul_(scale)
    return a


def random_adapter(config: Any, seed: int, scale: float = 1.0) -> Adapter:
    """`strategies.build_random(config, seed)` (float64, through the registry), every parameter
    multiplied by `scale`."""
    from ..strategies import build_random

    a = build_random(config, seed)
    with torch.no_grad():
        for p in a.parameters():
            p.mul_(scale)
    return a
