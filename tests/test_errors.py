"""Bad input raises the project's own exception types, naming the parameter, the value and the expectation."""

from __future__ import annotations

import math

import pytest
import torch

from moelora_core import (
    CoMoL,
    CoMoLConfig,
    ConfigError,
    Dense,
    DTypeDeviceError,
    HydraLoRAConfig,
    KronIdentity,
    LoRA,
    LoRAConfig,
    MoELoRA,
    MoELoRAConfig,
    MoELoRAError,
    NonFiniteError,
    ReductionError,
    ShapeError,
    SoftmaxRouter,
    TalkLoRA,
    TalkLoRAConfig,
    build,
    input_checks,
)
from moelora_core import reductions as R
from moelora_core.maps import Compose


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (
            lambda: TalkLoRAConfig(8, 8, rank=6, num_experts=4),
            "rank=6: expected a multiple of num_experts=4",
        ),
        (
            lambda: MoELoRAConfig(8, 8, num_experts=0, expert_rank=2),
            "num_experts=0: expected an integer >= 1",
        ),
        (lambda: CoMoLConfig(8, 8, rank=4, num_cores=0), "num_cores=0: expected an integer >= 1"),
        (
            lambda: MoELoRAConfig(8, 8, 3, 2, top_k=4),
            "top_k=4: expected 1 <= top_k <= num_experts=3",
        ),
        (lambda: HydraLoRAConfig(8, 8, 2, 2, top_k=0), "top_k=0: expected an integer >= 1"),
        (lambda: CoMoLConfig(8, 8, 4, 2, top_k=3), "top_k=3: expected 1 <= top_k <= num_cores=2"),
        (lambda: LoRAConfig(8, 8, rank=-1), "rank=-1: expected an integer >= 1"),
        (lambda: LoRAConfig(8, 8, rank=2.5), "rank=2.5: expected an integer >= 1"),  # type: ignore[arg-type]
        (lambda: LoRAConfig(8, 8, rank=True), "rank=True: expected an integer >= 1"),
        (lambda: LoRAConfig(8, 8, 2, scale=math.nan), "scale=nan: expected a finite real number"),
        (
            lambda: MoELoRAConfig(8, 8, 2, 2, router="output"),
            "router='output': expected 'input' or 'latent'",
        ),  # type: ignore[arg-type]
        (lambda: build("sparselora", in_features=8), "architecture='sparselora': expected one of"),
        (lambda: build("lora", in_features=8, rank=2), "config for 'lora'"),
        (
            lambda: SoftmaxRouter(Dense(3, 4), top_k=5),
            "top_k=5: expected 1 <= top_k <= num_experts=3",
        ),
    ],
)
def test_config_errors_name_parameter_value_and_expectation(make: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        make()  # type: ignore[operator]
    assert fragment in str(info.value)
    assert isinstance(info.value, MoELoRAError) and isinstance(info.value, ValueError)


def _adapters() -> list[torch.nn.Module]:
    return [
        LoRA(LoRAConfig(6, 5, 2)),
        MoELoRA(MoELoRAConfig(6, 5, 3, 2, "latent", top_k=2)),
        TalkLoRA(TalkLoRAConfig(6, 5, 4, 2)),
        CoMoL(CoMoLConfig(6, 5, 4, 3)),
        build("hydralora", in_features=6, out_features=5, num_experts=2, expert_rank=2),
    ]


@pytest.mark.parametrize("adapter", _adapters(), ids=lambda a: type(a).__name__)
def test_input_errors(adapter: torch.nn.Module) -> None:
    with pytest.raises(ShapeError, match=r"x.shape=\(4, 7\): expected \(\.\.\., 6\)"):
        adapter(torch.randn(4, 7))
    with pytest.raises(ShapeError, match=r"expected a torch\.Tensor"):
        adapter([[0.0] * 6])
    with pytest.raises(DTypeDeviceError, match=r"x.dtype=torch.float64: expected torch.float32"):
        adapter(torch.randn(4, 6, dtype=torch.float64))
    bad = torch.randn(4, 6)
    bad[1, 2] = math.nan
    with pytest.raises(NonFiniteError, match="1 non-finite value"):
        adapter(bad)
    bad[1, 2] = math.inf
    with pytest.raises(NonFiniteError):
        adapter.routing(bad) if adapter.router is not None else adapter(bad)  # type: ignore[operator]
    with pytest.raises(ShapeError):
        adapter(torch.tensor(1.0))
    # the checks can be turned off for hot loops; the maths is unchanged
    x = torch.randn(2, 3, 6)
    with input_checks(False):
        y = adapter(x)
    assert torch.equal(y, adapter(x))


@pytest.mark.skipif(
    not torch.backends.mps.is_available() and not torch.cuda.is_available(), reason="one device"
)
def test_device_mismatch() -> None:
    dev = "cuda" if torch.cuda.is_available() else "mps"
    with pytest.raises(DTypeDeviceError, match="device"):
        LoRA(LoRAConfig(6, 5, 2))(torch.randn(2, 6, device=dev))


def test_device_mismatch_message_on_meta() -> None:
    """A meta tensor stands in for 'another device' on a CPU-only machine."""
    with pytest.raises(DTypeDeviceError, match=r"x.device=meta: expected cpu"):
        LoRA(LoRAConfig(6, 5, 2))(torch.empty(2, 6, device="meta"))


def test_map_shape_errors() -> None:
    with pytest.raises(ShapeError, match=r"outer\.in_features=3 but inner\.out_features=4"):
        Compose(Dense(2, 3), Dense(4, 5))
    with pytest.raises(ShapeError, match="expected a square E x E matrix"):
        KronIdentity(Dense(2, 3), 2)
    with pytest.raises(ShapeError, match=r"input of A.shape=\(5,\)|expected \(\.\.\., 3\)"):
        Dense(2, 3, name="A")(torch.randn(5))
    with pytest.raises(ConfigError, match="init='orthogonal'"):
        Dense(2, 3, init="orthogonal")  # type: ignore[arg-type]


def test_shared_parameter_errors() -> None:
    cfg = TalkLoRAConfig(6, 5, 4, 2, share_b=True)
    with pytest.raises(ConfigError, match="b=None with share_b=True"):
        TalkLoRA(cfg)
    with pytest.raises(ShapeError, match=r"b.shape=\(5, 8\): expected \(5, 4\)"):
        TalkLoRA(cfg, b=Dense(5, 8))
    with pytest.raises(ConfigError, match="b given with share_b=False"):
        TalkLoRA(TalkLoRAConfig(6, 5, 4, 2), b=Dense(5, 4))
    with pytest.raises(ConfigError, match="ab=None with share_ab=True"):
        CoMoL(CoMoLConfig(6, 5, 4, 2, share_ab=True))


def test_reduction_preconditions() -> None:
    c = CoMoL(CoMoLConfig(6, 5, 4, 3)).randomize_(0)
    with pytest.raises(ReductionError, match=r"CoMoL cores M_i: max .* expected all equal"):
        R.comol_to_lora(c)
    m = MoELoRA(MoELoRAConfig(6, 5, 2, 2)).randomize_(0)
    with pytest.raises(ReductionError, match="MoELoRA expert A_i"):
        R.moelora_to_lora(m)
    with pytest.raises(ConfigError, match="num_experts=1: expected >= 2"):
        R.input_router_witness(6, 5, 1, 2)
    with pytest.raises(ConfigError, match="in_features=4: expected > total rank r=4"):
        R.input_router_witness(4, 5, 2, 2)
