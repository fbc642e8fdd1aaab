"""Bad input raises the project's own exception types, naming the parameter, the value and the expectation."""

from __future__ import annotations

import math

import pytest
import torch

from moelora_core import (
    ArgumentTypeError,
    CoMoL,
    CoMoLConfig,
    ConfigError,
    Dense,
    DTypeDeviceError,
    HeadLayout,
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
            lambda: TalkLoRAConfig(in_features=8, out_features=8, rank=6, num_experts=4),
            "rank=6: expected a multiple of num_experts=4",
        ),
        (
            lambda: MoELoRAConfig(in_features=8, out_features=8, num_experts=0, expert_rank=2),
            "num_experts=0: expected an integer >= 1",
        ),
        (
            lambda: CoMoLConfig(in_features=8, out_features=8, rank=4, num_cores=0),
            "num_cores=0: expected an integer >= 1",
        ),
        (
            lambda: MoELoRAConfig(
                in_features=8, out_features=8, num_experts=3, expert_rank=2, top_k=4
            ),
            "top_k=4: expected 1 <= top_k <= num_experts=3",
        ),
        (
            lambda: HydraLoRAConfig(
                in_features=8, out_features=8, num_experts=2, expert_rank=2, top_k=0
            ),
            "top_k=0: expected an integer >= 1",
        ),
        (
            lambda: CoMoLConfig(in_features=8, out_features=8, rank=4, num_cores=2, top_k=3),
            "top_k=3: expected 1 <= top_k <= num_cores=2",
        ),
        (
            lambda: LoRAConfig(in_features=8, out_features=8, rank=-1),
            "rank=-1: expected an integer >= 1",
        ),
        (
            lambda: LoRAConfig(in_features=8, out_features=8, rank=2.5),
            "rank=2.5: expected an integer >= 1",
        ),  # type: ignore[arg-type]
        (
            lambda: LoRAConfig(in_features=8, out_features=8, rank=True),
            "rank=True: expected an integer >= 1",
        ),
        (
            lambda: LoRAConfig(in_features=8, out_features=8, rank=2, scale=math.nan),
            "scale=nan: expected a finite real number",
        ),
        (
            lambda: MoELoRAConfig(
                in_features=8, out_features=8, num_experts=2, expert_rank=2, router="output"
            ),
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
        LoRA(LoRAConfig(in_features=6, out_features=5, rank=2)),
        MoELoRA(
            MoELoRAConfig(
                in_features=6,
                out_features=5,
                num_experts=3,
                expert_rank=2,
                router="latent",
                top_k=2,
            )
        ),
        TalkLoRA(TalkLoRAConfig(in_features=6, out_features=5, rank=4, num_experts=2)),
        CoMoL(CoMoLConfig(in_features=6, out_features=5, rank=4, num_cores=3)),
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
        LoRA(LoRAConfig(in_features=6, out_features=5, rank=2))(torch.randn(2, 6, device=dev))


def test_device_mismatch_message_on_meta() -> None:
    """A meta tensor stands in for 'another device' on a CPU-only machine."""
    with pytest.raises(DTypeDeviceError, match=r"x.device=meta: expected cpu"):
        LoRA(LoRAConfig(in_features=6, out_features=5, rank=2))(torch.empty(2, 6, device="meta"))


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
    cfg = TalkLoRAConfig(in_features=6, out_features=5, rank=4, num_experts=2, share_b=True)
    with pytest.raises(ConfigError, match="b=None with share_b=True"):
        TalkLoRA(cfg)
    with pytest.raises(ShapeError, match=r"b.shape=\(5, 8\): expected \(5, 4\)"):
        TalkLoRA(cfg, b=Dense(5, 8))
    with pytest.raises(ConfigError, match="b given with share_b=False"):
        TalkLoRA(
            TalkLoRAConfig(in_features=6, out_features=5, rank=4, num_experts=2), b=Dense(5, 4)
        )
    with pytest.raises(ConfigError, match="ab=None with share_ab=True"):
        CoMoL(CoMoLConfig(in_features=6, out_features=5, rank=4, num_cores=2, share_ab=True))


def test_reduction_preconditions() -> None:
    c = CoMoL(CoMoLConfig(in_features=6, out_features=5, rank=4, num_cores=3)).randomize_(0)
    with pytest.raises(ReductionError, match=r"CoMoL cores M_i: max .* expected all equal"):
        R.comol_to_lora(c)
    m = MoELoRA(
        MoELoRAConfig(in_features=6, out_features=5, num_experts=2, expert_rank=2)
    ).randomize_(0)
    with pytest.raises(ReductionError, match="MoELoRA expert A_i"):
        R.moelora_to_lora(m)
    with pytest.raises(ConfigError, match="num_experts=1: expected >= 2"):
        R.input_router_witness(6, 5, 1, 2)
    with pytest.raises(ConfigError, match="in_features=4: expected > total rank r=4"):
        R.input_router_witness(4, 5, 2, 2)


# ----- the validators of moelora_core.validate, as the public API uses them ---------------------


def test_top_k_keeps_exactly_k_on_ties_lowest_index_wins() -> None:
    """Exact ties: the k kept experts are the k lowest indices among the tied (a stable sort)."""
    from moelora_core.maps import topk_mask

    s = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 2.0, 2.0], [3.0, 1.0, 3.0, 1.0]])
    mask = topk_mask(s, 2)
    assert mask.tolist() == [
        [True, True, False, False],
        [False, True, True, False],
        [True, False, True, False],
    ]
    router = SoftmaxRouter(Dense(4, 3), top_k=2)
    g = router.gate(s)
    assert ((g > 0).sum(-1) == 2).all()
    assert torch.allclose(g[0], torch.tensor([0.5, 0.5, 0.0, 0.0]))
    # x = 0 ties every logit: the adapters' fused forwards route through the same gate
    for a in (
        MoELoRA(
            MoELoRAConfig(in_features=4, out_features=3, num_experts=4, expert_rank=1, top_k=3)
        ),
        CoMoL(CoMoLConfig(in_features=4, out_features=3, rank=2, num_cores=4, top_k=3)),
        TalkLoRA(TalkLoRAConfig(in_features=4, out_features=3, rank=4, num_experts=4, top_k=3)),
        build("hydralora", in_features=4, out_features=3, num_experts=4, expert_rank=1, top_k=3),
    ):
        g = a.routing(torch.zeros(2, 4))
        assert g is not None and g[0].tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0.0])


@pytest.mark.parametrize(
    ("make", "error", "fragment"),
    [
        (
            lambda: TalkLoRAConfig(in_features=8, out_features=8, rank=4, share_b="yes"),  # type: ignore[arg-type]
            ArgumentTypeError,
            "share_b='yes': expected True or False",
        ),
        (
            lambda: CoMoLConfig(in_features=8, out_features=8, rank=4, num_cores=2, core_router=1),  # type: ignore[arg-type]
            ArgumentTypeError,
            "core_router=1: expected True or False",
        ),
        (
            lambda: TalkLoRAConfig(in_features=8, out_features=8, rank=4, talk_init="orthogonal"),  # type: ignore[arg-type]
            ConfigError,
            "talk_init='orthogonal': expected one of",
        ),
        (
            lambda: LoRAConfig(in_features=10**6, out_features=10**6, rank=10**4),
            ConfigError,
            "expected at most 2,147,483,648",
        ),
        (
            lambda: LoRA(LoRAConfig(in_features=4, out_features=3, rank=2), dtype="float32"),  # type: ignore[arg-type]
            DTypeDeviceError,
            "dtype='float32': expected torch.float32",
        ),
        (
            lambda: LoRA(LoRAConfig(in_features=4, out_features=3, rank=2), dtype=torch.int64),
            DTypeDeviceError,
            "dtype=torch.int64: expected a floating dtype",
        ),
        (
            lambda: LoRA(LoRAConfig(in_features=4, out_features=3, rank=2), device=0),  # type: ignore[arg-type]
            DTypeDeviceError,
            "device=0: expected a torch.device or a string",
        ),
        (
            lambda: LoRA(LoRAConfig(in_features=4, out_features=3, rank=2), device="tpu"),
            DTypeDeviceError,
            "device='tpu'",
        ),
        (
            lambda: LoRA(
                MoELoRAConfig(in_features=4, out_features=3, num_experts=2, expert_rank=1)
            ),  # type: ignore[arg-type]
            ArgumentTypeError,
            "expected a LoRAConfig",
        ),
        (
            lambda: LoRA(LoRAConfig(in_features=4, out_features=3, rank=2)).randomize_(
                0, std=math.nan
            ),
            ConfigError,
            "std=nan: expected a finite real number",
        ),
        (
            lambda: LoRA(LoRAConfig(in_features=4, out_features=3, rank=2)).randomize_(-1),
            ConfigError,
            "seed=-1: expected an integer >= 0",
        ),
        (
            lambda: LoRA(LoRAConfig(in_features=4, out_features=3, rank=2)).randomize_(
                0, std=1e300
            ),
            NonFiniteError,
            "expected a std whose draws stay below",
        ),
        (
            lambda: R.moelora_to_lora(
                MoELoRA(
                    MoELoRAConfig(in_features=6, out_features=5, num_experts=2, expert_rank=2)
                ).randomize_(0),
                atol=math.nan,
            ),
            ConfigError,
            "atol=nan: expected a real number >= 0 (or math.inf)",
        ),
        (
            lambda: R.comol_to_lora(LoRA(LoRAConfig(in_features=4, out_features=3, rank=2))),  # type: ignore[arg-type]
            ArgumentTypeError,
            "c_=LoRA: expected a CoMoL",
        ),
        (
            lambda: SoftmaxRouter(Dense(3, 2), top_k=2).gate(torch.zeros(2, 4)),
            ShapeError,
            r"logits.shape=(2, 4): expected (..., 3)",
        ),
        (lambda: HeadLayout(0, 2), ConfigError, "num_heads=0: expected an integer >= 1"),
    ],
)
def test_boundary_errors(make: object, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error) as info:
        make()  # type: ignore[operator]
    assert fragment in str(info.value)
    assert isinstance(info.value, MoELoRAError)


def test_shared_modules_checked_for_dtype_and_device() -> None:
    cfg = TalkLoRAConfig(in_features=6, out_features=5, rank=4, num_experts=2, share_b=True)
    b64 = TalkLoRA.shared_b(cfg, dtype=torch.float64)
    with pytest.raises(
        DTypeDeviceError, match=r"b: dtype=torch.float64, device=cpu; expected torch.float32"
    ):
        TalkLoRA(cfg, b=b64)
    assert TalkLoRA(cfg, b=b64, dtype=torch.float64).B is b64
    with pytest.raises(DTypeDeviceError, match="device=meta"):
        TalkLoRA(cfg, b=TalkLoRA.shared_b(cfg, device="meta"))
    ccfg = CoMoLConfig(in_features=6, out_features=5, rank=4, num_cores=2, share_ab=True)
    A, B = CoMoL.shared_ab(ccfg)
    with pytest.raises(ShapeError, match=r"ab\[0\] \(A\).shape=\(5, 4\): expected \(4, 6\)"):
        CoMoL(ccfg, ab=(B, A))
    with pytest.raises(ArgumentTypeError, match="expected a pair"):
        CoMoL(ccfg, ab=(A,))  # type: ignore[arg-type]


def test_input_tensors_integer_complex_meta() -> None:
    a = LoRA(LoRAConfig(in_features=6, out_features=5, rank=2))
    with pytest.raises(
        DTypeDeviceError, match=r"x\.dtype=torch\.int64: expected torch\.float32, a real"
    ):
        a(torch.ones(2, 6, dtype=torch.long))
    with pytest.raises(DTypeDeviceError, match=r"x\.dtype=torch\.complex64"):
        a(torch.ones(2, 6, dtype=torch.complex64))
    with pytest.raises(ShapeError, match=r"expected a torch\.Tensor"):
        a.routing([0.0] * 6)  # type: ignore[arg-type]
    meta = LoRA(LoRAConfig(in_features=6, out_features=5, rank=2), device="meta")
    assert meta(torch.empty(2, 6, device="meta")).shape == (2, 5)  # shape-only runs still work


def test_overflow_is_reported_by_the_checked_entry_points() -> None:
    a = MoELoRA(
        MoELoRAConfig(in_features=4, out_features=3, num_experts=2, expert_rank=2)
    ).randomize_(0)
    x = torch.full((1, 4), 3e38)
    with pytest.raises(NonFiniteError, match=r"overflow in torch\.float32"):
        a.delta(x)
    with torch.no_grad():
        a.router.logits.dense().fill_(1e38)  # type: ignore[union-attr]
    with pytest.raises(NonFiniteError, match="routing weights"):
        a.routing(x)  # logits +inf everywhere: softmax gives NaN


def test_bounds_entry_errors_and_half_precision() -> None:
    from proofs_numeric import bounds as Bd

    with pytest.raises(ArgumentTypeError, match="adapter=str"):
        Bd.router_bounds("moelora")  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="t=MoELoRA: expected a TalkLoRA"):
        Bd.talk_bounds(
            MoELoRA(MoELoRAConfig(in_features=4, out_features=3, num_experts=2, expert_rank=1))
        )  # type: ignore[arg-type]
    with pytest.raises(DTypeDeviceError, match=r"M\.dtype=torch\.complex64"):
        Bd.spectral_norm(torch.ones(2, 2, dtype=torch.complex64))
    with pytest.raises(ConfigError, match="a=nan"):
        Bd.averaging_talk(3, math.nan)
    with pytest.raises(ConfigError, match="draws=1000000000: expected an integer >= 1 and <="):
        Bd.reference_init_amplification(4, draws=10**9)
    a = MoELoRA(
        MoELoRAConfig(in_features=4, out_features=3, num_experts=2, expert_rank=1),
        dtype=torch.float16,
    ).randomize_(0)
    with pytest.raises(ConfigError, match=r"radius=-1\.0: expected a finite real number >= 0"):
        Bd.layer_report(a, radius=-1.0)
    with pytest.raises(ConfigError, match=r"radius=1000\.0: expected <= 256"):
        Bd.layer_report(a, radius=1000.0)
    rep = Bd.layer_report(a, torch.randn(3, 4).half(), radius=0.5, samples=4, local_samples=4)
    assert rep.local is not None and 0 <= (rep.local.lower or 0.0) <= rep.local.upper
