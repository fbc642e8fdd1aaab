"""Non-linear adapters (`linear_experts = False`) get the certified global bound of their Lipschitz
chain; gates the softmax bound does not cover get a report that says so."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import Tensor, nn

from moelora_core.adapter import Adapter, LipschitzChain, RouterLipschitz, RoutingKind
from moelora_core.errors import ConfigError, ShapeError
from moelora_core.moelora import MoELoRA, MoELoRAConfig
from proofs_numeric.bounds import layer_report
from proofs_numeric.bounds.rigorous import CertificateError

D = torch.float64


@dataclass(frozen=True, kw_only=True)
class TanhConfig:
    in_features: int
    out_features: int
    rank: int = 1
    scale: float = 1.5


class TanhChain(Adapter):
    """Δ(x) = s · B tanh(A x): tanh is 1-Lipschitz, so Lip(Δ) <= |s| ‖B‖₂ ‖A‖₂, attained at x = 0
    for rank 1 (tanh'(0) = 1, ‖B A‖₂ = ‖B‖₂‖A‖₂)."""

    family: ClassVar[str] = "tanh_chain"
    config_class: ClassVar[type] = TanhConfig
    linear_experts: ClassVar[bool] = False

    def __init__(self, config: TanhConfig, *, tanh_constant: float = 1.0) -> None:
        super().__init__()
        self.config = config
        self.router = None
        self.A = nn.Linear(config.in_features, config.rank, bias=False, dtype=D)
        self.B = nn.Linear(config.rank, config.out_features, bias=False, dtype=D)
        self.tanh_constant = tanh_constant

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.config.scale * self.B(torch.tanh(self.A(x)))
        return out

    def lipschitz_chain(self) -> LipschitzChain | None:
        return LipschitzChain(
            maps=(self.A.weight.detach(), self.B.weight.detach()),
            constants=(self.tanh_constant, 1.0),
            scale=abs(self.config.scale),
        )


def _tanh(rank: int = 1, **kw: float) -> TanhChain:
    torch.manual_seed(0)
    return TanhChain(TanhConfig(in_features=5, out_features=3, rank=rank), **kw)


@pytest.mark.parametrize("radius", [None, 0.5])
def test_chain_bound_is_certified_and_attained(radius: float | None) -> None:
    a = _tanh()
    rep = layer_report(a, seed=1, radius=radius)
    c = rep.chain
    assert c is not None and c.lower is not None and rep.upper is None and rep.local is None
    exact = 1.5 * float(
        torch.linalg.matrix_norm(a.A.weight.detach(), 2)
        * torch.linalg.matrix_norm(a.B.weight.detach(), 2)
    )
    assert exact <= c.upper <= exact * (1 + 1e-9)
    assert c.lower <= c.upper and c.lower >= 0.9 * c.upper  # attained at 0 (rank 1)
    assert rep.router == "none" and "global Lip(Δ)" in str(rep)
    json.dumps(rep.to_dict())


def test_given_points_and_wider_chain() -> None:
    a = _tanh(rank=3)
    X = torch.randn(16, 5, generator=torch.Generator().manual_seed(2), dtype=D)
    rep = layer_report(a, X)
    assert rep.chain is not None and rep.chain.lower is not None
    assert 0 < rep.chain.lower <= rep.chain.upper


def test_a_constant_too_small_is_refuted() -> None:
    """The twin: a chain claiming tanh is ½-Lipschitz is below the slope at 0, so the search beats
    the 'certificate' and the report refuses it."""
    with pytest.raises(CertificateError, match="global Δ"):
        layer_report(_tanh(tanh_constant=0.5), seed=1)


def test_bad_chains() -> None:
    a = _tanh()
    a.lipschitz_chain = lambda: None  # type: ignore[method-assign]
    with pytest.raises(ConfigError, match="lipschitz_chain"):
        layer_report(a)
    b = _tanh()
    b.lipschitz_chain = lambda: LipschitzChain(  # type: ignore[method-assign]
        maps=(b.B.weight.detach(), b.A.weight.detach()), constants=(1.0, 1.0)
    )
    with pytest.raises(ShapeError, match="L_1"):
        layer_report(b)
    c = _tanh()
    c.lipschitz_chain = lambda: LipschitzChain(  # type: ignore[method-assign]
        maps=(c.A.weight.detach(), c.B.weight.detach()), constants=(1.0, float("nan"))
    )
    with pytest.raises(ConfigError, match="c_2"):
        layer_report(c)


class ThresholdGate(MoELoRA):
    """A MoELoRA that declares a thresholded gate (as AdaMoLE does): no certified router bound."""

    routing_kind: ClassVar[RoutingKind] = "threshold"
    router_lipschitz: ClassVar[RouterLipschitz] = "refuted"


def test_a_gate_without_a_bound_is_reported_not_bounded() -> None:
    a = ThresholdGate(
        MoELoRAConfig(in_features=4, out_features=3, num_experts=3, expert_rank=1), dtype=D
    )
    rep = layer_report(a, torch.randn(4, 4, dtype=D), radius=0.5)
    assert rep.upper is None and rep.local is None and rep.chain is None
    assert rep.router == "threshold" and "not ½‖W‖-Lipschitz" in rep.notes[0]
    json.dumps(rep.to_dict())
