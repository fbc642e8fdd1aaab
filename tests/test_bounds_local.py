"""The local perturbation bound on Δ: expert factors, stacked norms, the three forms."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from moelora_core.adapter import Adapter
from moelora_core.comol import CoMoL, CoMoLConfig
from moelora_core.errors import MoELoRAError
from moelora_core.maps import Dense, Identity, LinearMap, SoftmaxRouter
from moelora_core.talklora import TalkLoRA, TalkLoRAConfig
from proofs_numeric.bounds import expert_factors, layer_report, stack_norms
from proofs_numeric.bounds.certified import effective_matrix, logit_factors
from proofs_numeric.bounds.factors import ExpertFactors, check_factors
from proofs_numeric.bounds.instances import ARCHS, build, randomized
from proofs_numeric.bounds.local import local_bounds
from proofs_numeric.bounds.norms import centred_response_norms, mixed_norm_fn
from proofs_numeric.bounds.spectral import centring

D = torch.float64
GEN = torch.Generator().manual_seed(0)
ADAPTERS = [randomized(build(a, 6, 5, 3, 2), i, 1.0) for i, a in enumerate(ARCHS)]


def n2(M: Tensor) -> float:
    return float(torch.linalg.matrix_norm(M, ord=2))


@pytest.mark.parametrize("a", ADAPTERS, ids=list(ARCHS))
def test_factors_are_the_expert_matrices(a: Adapter) -> None:
    f = expert_factors(a)
    assert torch.allclose(f.dense(), a.expert_matrices().detach(), atol=1e-13)
    assert check_factors(a, f) < 1e-12


def test_factors_of_shared_b_and_shared_ab() -> None:
    cfg = TalkLoRAConfig(in_features=6, out_features=4, rank=6, num_experts=3, share_b=True)
    t = TalkLoRA(cfg, b=TalkLoRA.shared_b(cfg, dtype=D), dtype=D).randomize_(2)
    assert torch.allclose(expert_factors(t).dense(), t.expert_matrices().detach(), atol=1e-13)
    ccfg = CoMoLConfig(in_features=6, out_features=4, rank=3, num_cores=2, share_ab=True)
    c = CoMoL(ccfg, ab=CoMoL.shared_ab(ccfg, dtype=D), dtype=D).randomize_(3)
    assert torch.allclose(expert_factors(c).dense(), c.expert_matrices().detach(), atol=1e-13)


@pytest.mark.parametrize("a", ADAPTERS, ids=list(ARCHS))
def test_stack_norms_against_dense(a: Adapter) -> None:
    P = a.expert_matrices().detach()  # (E, m, n)
    sn = stack_norms(expert_factors(a))
    assert sn.experts == pytest.approx([n2(p) for p in P], rel=1e-9)
    stack = torch.cat(list(P), dim=1)  # [P_1 ... P_E], m x En
    centred = torch.cat(list(P - P.mean(0, keepdim=True)), dim=1)
    assert sn.stack == pytest.approx(n2(stack), rel=1e-9)
    assert sn.stack_centred == pytest.approx(n2(centred), rel=1e-9)
    assert sn.stack_centred <= sn.stack * (1 + 1e-12)
    mean = n2(P.mean(0))  # ‖P̄‖₂: the cheap per-centre bound ‖P̄‖ + ‖p − 1/E‖‖𝒫_c‖ starts there
    assert mean <= sn.mean <= mean * (1 + 1e-9) + 1e-15


@pytest.mark.parametrize("a", ADAPTERS, ids=list(ARCHS))
def test_per_centre_quantities_against_dense(a: Adapter) -> None:
    f = expert_factors(a)
    P = a.expert_matrices().detach()
    X = torch.randn(4, 6, generator=GEN, dtype=D)
    Y = torch.einsum("emn,bn->bme", P, X)  # (b, m, E): [P_1 x ... P_E x]
    Yc = Y @ centring(P.shape[0])
    assert centred_response_norms(f, X) == pytest.approx([n2(y) for y in Yc], rel=1e-9)
    G = torch.softmax(torch.randn(4, P.shape[0], generator=GEN, dtype=D), -1)
    mixed = mixed_norm_fn(f)
    assert mixed is not None
    dW = torch.einsum("be,emn->bmn", G, P)
    assert mixed(G).tolist() == pytest.approx([n2(w) for w in dW], rel=1e-9)


def test_forms_are_ordered_and_collapse_for_identical_experts() -> None:
    a = ADAPTERS[1]
    X = 2 * torch.randn(3, 6, generator=GEN, dtype=D)
    L = effective_matrix(logit_factors(a))
    for R in (0.0, 0.7):
        lb, per = local_bounds(expert_factors(a), X, R, L)
        assert lb.adaptive <= lb.tight <= lb.spec and float(per.max()) <= lb.adaptive
    # identical experts: Δ is linear, the router term vanishes, the bound is ‖P_1‖₂ exactly
    f = expert_factors(a)
    same = ExpertFactors(f.U[:1].expand_as(f.U).clone(), f.V[:1].expand_as(f.V).clone(), "test")
    lb, _ = local_bounds(same, X, 0.7, L)
    scale = n2(same.dense()[0])
    assert lb.stack_centred <= 1e-5 * scale  # 0 up to the Gram rounding margin
    assert lb.adaptive == pytest.approx(scale, rel=1e-5)


def test_local_report_is_sound_and_the_router_term_matters() -> None:
    a = randomized(build("moelora-input", 1, 1, 2, 1), 0, 3.0)
    X = 6 * torch.randn(3, 1, generator=torch.Generator().manual_seed(1), dtype=D)
    rep = layer_report(a, X, radius=0.5, samples=8)
    lo = rep.local
    assert lo is not None and lo.lower is not None
    assert lo.lower <= lo.adaptive <= lo.tight <= lo.spec
    assert lo.lower > lo.expert_max  # the searched ratio beats max‖P_i‖: the router term is needed
    assert rep.to_dict()["local"]["upper"] == lo.adaptive


class DenseExperts(Adapter):
    """An adapter the factoriser does not know: Δ(x) = Σ_i g_i(x) P_i x with dense P_i."""

    family = "dense-test"

    def __init__(self, P: Tensor, W: Tensor) -> None:
        super().__init__()
        E, m, n = P.shape
        self.config = type("Cfg", (), {"in_features": n, "out_features": m})()
        self.P = torch.nn.Parameter(P.clone())
        logits = Dense(E, n, dtype=D, name="W_g")
        with torch.no_grad():
            logits.weight.copy_(W)
        self.router = SoftmaxRouter(logits)
        self.ident = Identity(n).to(D)

    @property
    def num_experts(self) -> int:
        return int(self.P.shape[0])

    def forward(self, x: Tensor) -> Tensor:
        assert self.router is not None
        g = self.router(x)
        return torch.einsum("...e,emn,...n->...m", g, self.P, x)

    def expert_matrices(self) -> Tensor:
        return self.P

    def router_input_map(self) -> LinearMap:
        return self.ident


def test_dense_fallback_and_factor_check() -> None:
    P = torch.randn(3, 4, 5, generator=GEN, dtype=D)
    a = DenseExperts(P, torch.randn(3, 5, generator=GEN, dtype=D))
    f = expert_factors(a)
    assert f.source == "dense" and torch.allclose(f.dense(), P)
    rep = layer_report(a, torch.randn(2, 5, generator=GEN, dtype=D), samples=4)
    assert rep.local is not None and rep.local.lower is not None
    assert rep.local.lower <= rep.local.adaptive
    wrong = ExpertFactors(f.U, 2 * f.V, "wrong")
    with pytest.raises(MoELoRAError, match="expert factors"):
        check_factors(a, wrong)
