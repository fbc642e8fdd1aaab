"""Small float64 instances of every routed architecture, for the bound claims and tests, built
through the registry (`moelora_core.registry.create`, `proofs_numeric.strategies.build_random`).

    a = randomized(build("talklora", n=5, m=3, E=4, r_e=2), seed=0, scale=1.0)

`ARCHS` names the routed kinds the bounds are checked on (both routers of MoELoRA and CoMoL).
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import torch

from moelora_core.adapter import Adapter
from moelora_core.registry import create

from ..specs import LayerSpec, config_for

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


def layer_spec(arch: Arch, E: int, r_e: int, top_k: int | None = None) -> tuple[str, LayerSpec]:
    """The registry family and generic spec of the named kind: E experts of rank r_e (total rank
    E·r_e; CoMoL rank r_e + E − 1 >= E with E cores), routed as the name's suffix says."""
    family, _, router = arch.partition("-")
    if family == "comol":
        return family, LayerSpec(
            rank=r_e + E - 1, experts=E, top_k=top_k, core_router=router == "core"
        )
    return family, LayerSpec(
        rank=E * r_e, experts=E, expert_rank=r_e, top_k=top_k, router=router or "input"
    )


def build(arch: Arch, n: int, m: int, E: int, r_e: int, top_k: int | None = None) -> Adapter:
    """A float64 `n -> m` adapter of the named kind (`layer_spec`), configured by the architecture's
    own `config_from_spec` and built by the registry."""
    family, spec = layer_spec(arch, E, r_e, top_k)
    return create(config_for(family, spec, in_features=n, out_features=m), dtype=DTYPE)


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
