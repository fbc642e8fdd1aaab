"""DenseLoRA (moelora_core/denselora.py): GELU's Lipschitz constant (mpmath), the chain bound, Δ(0) = 0,
A and B shared across the layers of a module type, no expert matrices; claims beside refuted twins."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace
from typing import Any

import mpmath
import pytest
import torch
from claim_helpers import assert_as_declared
from hypothesis import strategies as st

from moelora_core.denselora import (
    GELU_LIPSCHITZ,
    DenseLoRA,
    DenseLoRAConfig,
    EncoderDecoder,
    gelu,
)
from moelora_core.errors import (
    ArgumentTypeError,
    ConfigError,
    DTypeDeviceError,
    NotLinearError,
    ShapeError,
)
from proofs_numeric.checking import Outcome, claim_with_twin, exact
from proofs_numeric.complexity import counted_macs_per_token
from proofs_numeric.strategies import DTYPE, Case, build_random, cases, denselora_configs

CFG = DenseLoRAConfig(in_features=6, out_features=5, rank=3, scale=0.5)


def _gelu_prime(t: Any) -> Any:
    """GELU'(t) = Φ(t) + t φ(t), in mpmath."""
    return mpmath.ncdf(t) + t * mpmath.npdf(t)


@pytest.mark.theorems
def test_gelu_constant_is_a_tight_upper_bound() -> None:
    with mpmath.workdps(50):
        s2 = mpmath.sqrt(2)
        c = _gelu_prime(s2)
        closed = (1 + mpmath.erf(1)) / 2 + 1 / (mpmath.e * mpmath.sqrt(mpmath.pi))
        assert abs(c - closed) < mpmath.mpf(10) ** -45
        assert abs(mpmath.diff(_gelu_prime, s2)) < mpmath.mpf(10) ** -40  # GELU''(√2) = 0
        assert abs(_gelu_prime(-s2) - (1 - c)) < mpmath.mpf(10) ** -45  # the minimum, 1 − c
        assert mpmath.mpf(GELU_LIPSCHITZ) >= c  # an upper bound (the float's exact value)
        assert mpmath.mpf(GELU_LIPSCHITZ) - c < mpmath.mpf(10) ** -6  # and a tight one
        grid = [mpmath.mpf(i) / 100 for i in range(-1000, 1001)]
        assert max(abs(_gelu_prime(t)) for t in grid) <= c  # no larger slope on [−10, 10]
        assert _gelu_prime(s2) > 1  # the twin: ReLU's constant 1 is not one for GELU


@pytest.mark.theorems
def test_torch_gelu_is_the_written_one() -> None:
    t = torch.linspace(-8, 8, 4001, dtype=DTYPE, requires_grad=True)
    assert exact((torch.nn.functional.gelu(t), gelu(t))).ok
    (slope,) = torch.autograd.grad(torch.nn.functional.gelu(t).sum(), t)
    assert float(slope.abs().max()) <= GELU_LIPSCHITZ
    assert float(slope.max()) > GELU_LIPSCHITZ - 1e-5  # attained near t = √2


def test_delta_is_zero_at_init_and_at_zero_and_m_learns() -> None:
    a = DenseLoRA(CFG, dtype=DTYPE)
    x = torch.randn(4, CFG.in_features, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
    assert float(a(x).detach().abs().max()) == 0.0  # M = 0
    (a(x) - 1.0).square().sum().backward()
    assert a.M.grad is not None and float(a.M.grad.abs().max()) > 0  # A, B ≠ 0: M learns
    b = build_random(CFG, 1)
    zero = torch.zeros(2, CFG.in_features, dtype=DTYPE)
    assert float(b(zero).detach().abs().max()) == 0.0  # GELU(0) = 0
    assert float(b(x).detach().abs().max()) > 0


def test_chain_composes_to_delta_and_no_expert_matrices() -> None:
    a = build_random(CFG, 2)
    ch = a.lipschitz_chain()
    x = torch.randn(3, 2, CFG.in_features, dtype=DTYPE)
    y = x
    for L in ch.maps:
        y = torch.nn.functional.gelu(y @ L.T)
    assert exact((math.copysign(ch.scale, CFG.scale) * y, a(x)), (a(x), a.reference_delta(x))).ok
    assert ch.constants == (GELU_LIPSCHITZ, GELU_LIPSCHITZ) and ch.maps[0].dtype == torch.float64
    negative = build_random(dataclasses.replace(CFG, scale=-0.5), 2).lipschitz_chain()
    assert negative.scale == 0.5  # |s|: the sign of s changes no distance
    with pytest.raises(NotLinearError, match="DenseLoRA"):
        a.expert_matrices()
    with pytest.raises(ConfigError, match="DenseLoRA"):
        a.delta_weight(x)


def test_a_and_b_shared_across_layers_counted_once() -> None:
    shared = DenseLoRA.make_shared(CFG, dtype=DTYPE)
    layers = torch.nn.ModuleList(
        [DenseLoRA.create(CFG, shared=shared, dtype=DTYPE) for _ in range(3)]
    )
    assert all(layer.shared_part() is shared for layer in layers)
    n, m, r = CFG.in_features, CFG.out_features, CFG.rank
    total = sum(p.numel() for p in layers.parameters())
    subs = layers[0].param_subs()
    assert total == 3 * int(layers[0].param_formula().subs(subs)) + int(
        layers[0].shared_param_formula().subs(subs)
    )
    assert total == 3 * r * r + r * (n + m)
    assert all(layer.num_trainable_params() == r * r for layer in layers)
    assert {id(p) for p in layers[0].shared_parameters()} == {
        id(shared.A.weight),
        id(shared.B.weight),
    }
    with torch.no_grad():
        for layer in layers:
            layer.M.normal_(generator=torch.Generator().manual_seed(4))
    x = torch.randn(4, n, dtype=DTYPE, generator=torch.Generator().manual_seed(3))
    alone = []
    for layer in layers:  # test only: each layer's own gradient of A
        (grad,) = torch.autograd.grad(layer(x).sum(), shared.A.weight)
        alone.append(grad)
    (together,) = torch.autograd.grad(sum(layer(x).sum() for layer in layers), shared.A.weight)
    assert exact((together, sum(alone))).ok and float(together.abs().max()) > 0


def test_params_and_macs_formulas() -> None:
    a = build_random(CFG, 0)
    subs = a.param_subs()
    assert int(a.param_formula().subs(subs)) == a.num_trainable_params() == 9
    assert int(a.shared_param_formula().subs(subs)) == 3 * (6 + 5)
    assert int(a.macs_formula().subs(subs)) == counted_macs_per_token(a) == 3 * (6 + 5)


def test_bad_shared_part_and_config() -> None:
    wrong = EncoderDecoder(DenseLoRAConfig(in_features=7, out_features=5, rank=3), dtype=DTYPE)
    with pytest.raises(ShapeError, match=r"shared\.A"):
        DenseLoRA.create(CFG, shared=wrong, dtype=DTYPE)
    with pytest.raises(ArgumentTypeError, match="shared"):
        DenseLoRA.create(CFG, shared=torch.nn.Linear(2, 2), dtype=DTYPE)
    with pytest.raises(DTypeDeviceError, match=r"shared\.A"):
        DenseLoRA.create(CFG, shared=DenseLoRA.make_shared(CFG), dtype=DTYPE)  # float32 vs 64
    for change, name in (({"rank": 0}, "rank"), ({"in_features": 2.0}, "in_features")):
        with pytest.raises(ConfigError, match=name):
            dataclasses.replace(CFG, **change)
    with pytest.raises(ConfigError, match="scale"):
        DenseLoRAConfig(in_features=2, out_features=2, rank=1, scale=float("inf"))
    spec = SimpleNamespace(rank=4, scale=0.5, shared=False, options={"share": False})
    with pytest.raises(ConfigError, match="share"):
        DenseLoRA.config_from_spec(spec, 6, 5)  # type: ignore[arg-type]
    spec.options = {}
    assert DenseLoRA.config_from_spec(spec, 6, 5) == DenseLoRAConfig(  # type: ignore[arg-type]
        in_features=6, out_features=5, rank=4, scale=0.5
    )


# ----- the chain bound, with its refuted twin -----------------------------------------------------


def _chain_bound(a: DenseLoRA, constant: float | None = None) -> float:
    ch = a.lipschitz_chain()
    bound = abs(ch.scale)
    for L, c in zip(ch.maps, ch.constants, strict=True):
        bound *= (c if constant is None else constant) * float(torch.linalg.matrix_norm(L, 2))
    return bound


def _ratio_outcome(ratio: float, bound: float) -> Outcome:
    """max(0, ratio/bound − 1) within 1e-9 (a close pair loses ~1e-12 to cancellation)."""
    return Outcome(max(0.0, ratio / bound - 1), 1e-9, f"ratio {ratio:.6g}, bound {bound:.6g}")


def _bound_at_drawn_pairs(c: Case[DenseLoRAConfig]) -> Outcome:
    """max over pairs of drawn (scaled ×3) points of ‖Δ(x) − Δ(y)‖ / ‖x − y‖ <= |s| c² ‖A‖‖B M‖."""
    a = c.build()
    X = c.inputs(scale=3.0).reshape(-1, a.in_features)
    X = torch.cat([X, X[:1] + 1e-4])  # one close pair
    with torch.no_grad():
        D = a(X)
    dx = torch.cdist(X, X) + torch.eye(len(X), dtype=X.dtype)
    return _ratio_outcome(float((torch.cdist(D, D) / dx).max()), _chain_bound(a))


ONE_D = DenseLoRAConfig(in_features=1, out_features=1, rank=1)


def _one_d_slope_bound(t: float, constant: float | None) -> Outcome:
    """Δ = GELU∘GELU (A = M = B = 1, s = 1) at t ± 1e-6 against the chain bound (with `constant`)."""
    a = DenseLoRA(ONE_D, dtype=DTYPE)
    with torch.no_grad():
        for p in (a.shared.A.weight, a.shared.B.weight, a.M):
            p.fill_(1.0)
    x, y = (torch.tensor([t + d], dtype=DTYPE) for d in (-1e-6, 1e-6))
    with torch.no_grad():
        ratio = float((a(x) - a(y)).norm() / (x - y).norm())
    return _ratio_outcome(ratio, _chain_bound(a, constant))


def _relu_constant_near_two(t: float) -> Outcome:
    """Twin: ReLU's constant 1; the slope GELU'(GELU(t))·GELU'(t) exceeds 1 on [1.5, 3]."""
    return _one_d_slope_bound(t, 1.0)


CLAIMS = [
    *claim_with_twin(
        "denselora_chain_bound",
        "‖Δ(x) − Δ(y)‖ <= |s| c² ‖A‖₂‖B M‖₂ ‖x − y‖, c = sup|GELU'| = Φ(√2) + √2 φ(√2)",
        cases(denselora_configs()),
        _bound_at_drawn_pairs,
        twin="relu_constant: c = 1, on Δ = GELU∘GELU (A = M = B = 1) near t ∈ [1.5, 3]",
        twin_case=_relu_constant_near_two,
        twin_strategy=st.floats(1.5, 3.0),  # type: ignore[arg-type]
        spec="issue 11: DenseLoRA bound",
    ),
]


@pytest.mark.theorems
@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: c.name)
def test_claim(claim: Any) -> None:
    assert_as_declared(claim)


@pytest.mark.theorems
def test_gelu_constant_on_the_twins_instance() -> None:
    """On the twin's one-dimensional instance the bound with the GELU constant holds."""
    for t in (1.5, 2.0, 3.0, 2**0.5):
        assert _one_d_slope_bound(t, None).ok
