"""Small float64 instances of every routed architecture, for the bound claims and tests.

    a = randomized(build("talklora", n=5, m=3, E=4, r_e=2), seed=0, scale=1.0)

`ARCHS` names the routed kinds the bounds are checked on (both routers of MoELoRA and CoMoL).
"""

from __future__ import annotations

from typing import Literal, TypeVar

import torch

from moelora_core.adapter import Adapter
from moelora_core.comol import CoMoL, CoMoLConfig
from moelora_core.hydralora import HydraLoRA, HydraLoRAConfig
from moelora_core.moelora import MoELoRA, MoELoRAConfig
from moelora_core.talklora import TalkLoRA, TalkLoRAConfig

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


def build(arch: Arch, n: int, m: int, E: int, r_e: int, top_k: int | None = None) -> Adapter:
    """A float64 adapter of the named kind (total rank E·r_e; CoMoL rank r_e + E − 1 >= E)."""
    if arch in ("moelora-input", "moelora-latent"):
        kind: Literal["input", "latent"] = "input" if arch == "moelora-input" else "latent"
        return MoELoRA(
            MoELoRAConfig(
                in_features=n, out_features=m, num_experts=E, expert_rank=r_e, router=kind,
                top_k=top_k,
            ),
            dtype=DTYPE,
        )  # fmt: skip
    if arch == "hydralora":
        return HydraLoRA(
            HydraLoRAConfig(
                in_features=n, out_features=m, num_experts=E, expert_rank=r_e, top_k=top_k
            ),
            dtype=DTYPE,
        )
    if arch == "talklora":
        return TalkLoRA(
            TalkLoRAConfig(in_features=n, out_features=m, rank=E * r_e, num_experts=E, top_k=top_k),
            dtype=DTYPE,
        )
    cfg = CoMoLConfig(
        in_features=n, out_features=m, rank=r_e + E - 1, num_cores=E,
        core_router=arch == "comol-core", top_k=top_k,
    )  # fmt: skip
    return CoMoL(cfg, dtype=DTYPE)


@torch.no_grad()
def randomized(a: A, seed: int, scale: float) -> A:
    """`a` with seeded random weights (`randomize_`), every parameter multiplied by `scale`."""
    a.randomize_(seed)
    for p in a.parameters():
        p.mul_(scale)
    return a
