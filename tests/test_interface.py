"""The architecture interface (`moelora_core.adapter`, `registry`): building from specs and configs,
shared parts, declarations, expert factors, declared reductions, and the errors on bad input."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import sympy as sp
import torch
from torch import Tensor

from moelora_core import registry
from moelora_core.adapter import Adapter, HasTalking, RoutedAdapter
from moelora_core.comol import CoMoL, CoMoLConfig, SharedAB
from moelora_core.errors import ArgumentTypeError, ConfigError, NotLinearError
from moelora_core.lora import LoRA, LoRAConfig
from moelora_core.maps import Dense
from moelora_core.moelora import MoELoRAConfig
from moelora_core.sparse import sparse_macs
from moelora_core.talklora import TalkLoRA, TalkLoRAConfig
from proofs_numeric.complexity import macs_formula
from proofs_numeric.strategies import CONFIG_STRATEGIES, build_random

F64 = torch.float64
CONFIGS: dict[str, Any] = {
    "lora": LoRAConfig(in_features=5, out_features=4, rank=3, scale=0.5),
    "moelora": MoELoRAConfig(in_features=5, out_features=4, num_experts=3, expert_rank=2, top_k=2),
    "hydralora": registry.config_class("hydralora")(
        in_features=5, out_features=4, num_experts=3, expert_rank=2
    ),
    "talklora": TalkLoRAConfig(in_features=5, out_features=4, rank=6, num_experts=3, share_b=True),
    "comol": CoMoLConfig(in_features=5, out_features=4, rank=3, num_cores=3, share_ab=True),
}


@dataclass(frozen=True)
class Spec:
    """A minimal `AdapterSpecLike`."""

    rank: int = 4
    experts: int = 2
    expert_rank: int | None = None
    top_k: int | None = None
    scale: float = 1.0
    router: str = "input"
    core_router: bool = True
    shared: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)


def test_every_family_is_registered_with_a_strategy() -> None:
    assert set(CONFIG_STRATEGIES) == set(registry.ARCHITECTURES) >= set(CONFIGS)
    for name, cls in registry.ARCHITECTURES.items():
        assert cls.family == name
        assert registry.architecture(name) is cls
        assert registry.config_class(name) is cls.config_class
        assert name not in CONFIGS or isinstance(CONFIGS[name], cls.config_class)
        # a softmax router is a RoutedAdapter's; a gate without one (a mask) may route too
        assert not issubclass(cls, RoutedAdapter) or cls.routing_kind != "none"
        assert cls.routing_kind != "softmax" or issubclass(cls, RoutedAdapter)


def test_registry_errors_name_the_value() -> None:
    with pytest.raises(ConfigError, match="architecture='nope'"):
        registry.architecture("nope")
    with pytest.raises(ArgumentTypeError, match="config=object"):
        registry.create(object())
    with pytest.raises(ConfigError, match="config for 'lora'"):
        registry.build("lora", in_features=2, out_features=2, rank=1, experts=3)
    assert isinstance(registry.build("lora", in_features=2, out_features=2, rank=1), LoRA)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_create_make_shared_shared_part_round_trip(name: str) -> None:
    cls, cfg = registry.architecture(name), CONFIGS[name]
    shared = cls.make_shared(cfg, dtype=F64)
    a = registry.create(cfg, shared=shared, dtype=F64)
    assert type(a) is cls and a.reference.dtype == F64
    part = a.shared_part()
    if shared is None:
        assert part is None and a.shared_parameters() == []
        assert sp.sympify(a.shared_param_formula()) == 0
        with pytest.raises(ConfigError, match="shared=Dense"):
            cls.create(cfg, shared=Dense(2, 2))
        return
    assert part is not None
    ids = {id(p) for p in shared.parameters()}
    assert {id(p) for p in part.parameters()} == ids == {id(p) for p in a.shared_parameters()}
    b = cls.create(cfg, shared=part, dtype=F64)  # a second layer of the same module type
    assert {id(p) for p in b.shared_parameters()} == ids
    formula = int(sp.sympify(a.shared_param_formula()).subs(a.subs()))
    assert formula == sum(p.numel() for p in shared.parameters())
    made = cls.create(cfg, dtype=F64)  # shared=None: the part is made here
    assert made.shared_part() is not None


def test_shared_part_of_the_wrong_type() -> None:
    with pytest.raises(ArgumentTypeError, match="shared=SharedAB"):
        TalkLoRA.create(CONFIGS["talklora"], shared=CoMoL.make_shared(CONFIGS["comol"]))
    with pytest.raises(ArgumentTypeError, match="shared=Dense"):
        CoMoL.create(CONFIGS["comol"], shared=Dense(4, 6))
    assert isinstance(CoMoL.make_shared(CONFIGS["comol"]), SharedAB)


def test_config_from_spec_reads_each_family() -> None:
    spec = Spec(rank=4, experts=2, top_k=1, scale=0.5)
    got = {name: cls.config_from_spec(spec, 6, 3) for name, cls in registry.ARCHITECTURES.items()}
    assert got["lora"] == LoRAConfig(in_features=6, out_features=3, rank=4, scale=0.5)
    assert got["moelora"] == MoELoRAConfig(
        in_features=6, out_features=3, num_experts=2, expert_rank=2, top_k=1, scale=0.5
    )
    assert got["hydralora"].expert_rank == 2 and got["hydralora"].num_experts == 2
    assert got["talklora"].rank == 4 and got["talklora"].share_b is False
    assert got["comol"].num_cores == 2 and got["comol"].core_router is True
    shared = Spec(shared=True, options={"talk_init": "identity"})
    t = TalkLoRA.config_from_spec(shared, 6, 3)
    assert t.share_b and t.talk_init == "identity"
    assert CoMoL.config_from_spec(Spec(shared=True, core_router=False), 6, 3).share_ab


@pytest.mark.parametrize(
    ("name", "spec", "message"),
    [
        ("talklora", Spec(rank=6, experts=4), "rank=6"),
        ("moelora", Spec(router="middle"), "router='middle'"),
        ("moelora", Spec(shared=True), "shared=True"),
        ("lora", Spec(shared=True), "shared=True"),
        ("hydralora", Spec(rank=1, experts=2), "expert_rank=None"),
        ("moelora", Spec(expert_rank=0), "expert_rank=0"),
        ("comol", Spec(top_k=3), "top_k=3"),
        ("lora", Spec(options={"ranks": 2}), "options=.*'ranks'"),
        ("talklora", Spec(options={"share_b": True}), "options=.*'share_b'"),
    ],
)
def test_config_from_spec_errors_name_the_parameter(name: str, spec: Spec, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        registry.architecture(name).config_from_spec(spec, 6, 3)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_expert_factors_are_the_expert_maps(name: str) -> None:
    a = build_random(CONFIGS[name], 3)
    f = a.expert_factors()
    assert f is not None and f.right.dtype == F64 and f.right.device.type == "cpu"
    assert all(t.dtype == F64 for t in f.left)
    torch.testing.assert_close(f.dense(), a.expert_matrices().detach(), rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_declared_reductions_hold_after_prepare(name: str) -> None:
    cls = registry.architecture(name)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=F64)
    for red in cls.reductions():
        cfg = dataclasses.replace(CONFIGS[name], **_unshared(CONFIGS[name]))
        assert red.target in registry.ARCHITECTURES
        if not red.applies(cfg):
            continue
        a = build_random(cfg, 5)
        red.prepare(a)
        b = red.embed(a)
        assert b.family == red.target
        with torch.no_grad():
            torch.testing.assert_close(b(x), a(x), rtol=0, atol=1e-12)
        if red.unprepared_fails:  # the twin: the same embedding without its precondition
            raw = build_random(cfg, 5)
            with torch.no_grad():
                assert float((red.embed(raw)(x) - raw(x)).abs().max()) > 1e-6, red.name


def _unshared(cfg: Any) -> dict[str, bool]:
    names = {f.name for f in dataclasses.fields(cfg)}
    return {k: False for k in ("share_b", "share_ab") if k in names}


def test_reduction_wrappers_refuse_other_architectures() -> None:
    red = TalkLoRA.reductions()[0]
    with pytest.raises(ArgumentTypeError, match="expected a TalkLoRA"):
        red.embed(build_random(CONFIGS["lora"], 0))


def test_talking_is_asked_for_not_type_checked() -> None:
    t = build_random(dataclasses.replace(CONFIGS["talklora"], share_b=False), 0)
    assert isinstance(t, HasTalking) and t.talking is t.T
    assert not isinstance(build_random(CONFIGS["moelora"], 0), HasTalking)


def test_macs_delegate_to_the_adapter() -> None:
    for cfg in CONFIGS.values():
        a = registry.create(cfg)
        assert macs_formula(a) == a.macs_formula()

    class Formless(LoRA):
        def macs_formula(self) -> sp.Expr:
            raise NotImplementedError

    with pytest.raises(ArgumentTypeError, match="MAC formula"):
        macs_formula(Formless(CONFIGS["lora"]))


def test_sparse_macs_from_the_declared_formula() -> None:
    a = registry.create(CONFIGS["moelora"])  # input router, E = 3, r_e = 2, k = 2, n = 5, m = 4
    assert sparse_macs(a) == 3 * 5 + 3 * 2 * 5 + 2 * 2 * 4  # gathering x does not pay here
    with pytest.raises(ConfigError, match="sparse top-k"):
        sparse_macs(registry.create(CONFIGS["lora"]))


class _Bent(LoRA):
    """A non-linear adapter: Δ(x) = tanh(s B A x)."""

    linear_experts = False

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(super().forward(x))


def test_non_linear_adapters_have_no_expert_matrices() -> None:
    a = _Bent(CONFIGS["lora"])
    x = torch.zeros(2, 5)
    for call in (a.delta_weight, lambda _: Adapter.expert_matrices(a)):
        with pytest.raises(NotLinearError, match="linear_experts=False"):
            call(x)
    assert issubclass(NotLinearError, ConfigError)
    assert a.lipschitz_chain() is None and a.auxiliary_loss() is None


def test_routed_adapters_always_have_a_router() -> None:
    for cfg in CONFIGS.values():
        a = registry.create(cfg)
        x = torch.zeros(2, 5)
        if isinstance(a, RoutedAdapter):
            assert a.router is not None and a.routing(x).shape == (2, a.num_experts)
            assert a.router_logit_map().dense().shape == (a.num_experts, 5)
            assert a.router_lipschitz == "half_norm" and a.routing_kind == "softmax"
        else:
            assert a.routing(x) is None and a.router_logit_map() is None
