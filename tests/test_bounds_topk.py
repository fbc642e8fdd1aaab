"""Top-k routers: a discontinuity witness instead of a Lipschitz bound."""

from __future__ import annotations

import math

import pytest
import torch

from moelora_core.moelora import MoELoRA, MoELoRAConfig
from proofs_numeric.bounds import layer_report, topk_witness
from proofs_numeric.bounds.certified import effective_matrix, logit_factors
from proofs_numeric.bounds.instances import ARCHS, build, randomized

D = torch.float64


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("k", [1, 2])
def test_witness_is_checked_by_the_router_itself(arch: str, k: int) -> None:
    a = randomized(build(arch, 5, 2, 3, 2, top_k=k), 11, 1.0)  # type: ignore[arg-type]
    rep = layer_report(a, epsilon=1e-7)
    w = rep.topk_witness
    assert w is not None and w.distance < 1e-7
    g = a.routing(torch.stack([w.x, w.x_prime])).detach()
    assert float(torch.linalg.vector_norm(g[0] - g[1])) == pytest.approx(w.jump, rel=1e-9)
    assert w.jump >= 0.9 * math.sqrt(2) / ((k - 1) * math.e + 1)
    assert w.kept[0] != w.kept[1] and len(w.kept[0]) == k
    assert rep.upper is None and rep.lower is None and rep.local is None
    assert any("discontinuous" in r for r in rep.not_tight)
    assert rep.to_dict()["topk_witness"]["ratio"] > 1e6


def test_rank_deficient_router_still_gets_a_witness() -> None:
    """n = 1: Π L has rank 1 < E − 1, the aimed-at tie is unreachable; the line search still finds a
    change of the kept set."""
    a = MoELoRA(
        MoELoRAConfig(in_features=1, out_features=2, num_experts=4, expert_rank=1, top_k=2), dtype=D
    ).randomize_(5)
    w = topk_witness(a, effective_matrix(logit_factors(a)), 2, 1e-6)
    assert w is not None and w.distance < 1e-6 and w.jump > 0


def test_constant_logits_have_no_witness() -> None:
    a = MoELoRA(
        MoELoRAConfig(in_features=3, out_features=2, num_experts=3, expert_rank=1, top_k=1), dtype=D
    ).randomize_(0)
    with torch.no_grad():
        a.router.logits.dense().copy_(torch.ones(3, 3, dtype=D))  # type: ignore[union-attr]
    rep = layer_report(a)
    assert rep.topk_witness is None
    assert any("constant" in n for n in rep.notes)


def test_top_k_equal_to_e_is_dense() -> None:
    a = MoELoRA(
        MoELoRAConfig(in_features=3, out_features=2, num_experts=3, expert_rank=1, top_k=3), dtype=D
    ).randomize_(0)
    rep = layer_report(a, samples=4)
    assert rep.topk_witness is None and rep.upper is not None and rep.lower is not None
