"""Hypothesis strategies for configs, float64 weights and inputs.

An instance is drawn as a small frozen `Case`: the config, a parameter seed and an input seed, so a
shrunk counterexample prints as something a user can paste and rebuild (`case.build()`, `case.inputs()`).
Shapes stay tiny (dims <= 12, rank <= 12) so hundreds of cases run in seconds, and the strategies put
weight on the edge cases the claims must survive: E = 1, r = E (one rank per head), n < r, top-k = E.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from hypothesis import strategies as st

from moelora_core.adamole import AdaMoLEConfig
from moelora_core.adapter import Adapter
from moelora_core.comol import CoMoLConfig
from moelora_core.denselora import DenseLoRAConfig
from moelora_core.flylora import FlyLoRAConfig
from moelora_core.hydralora import HydraLoRAConfig
from moelora_core.lora import LoRAConfig
from moelora_core.maps import Init
from moelora_core.moelora import MoELoRAConfig
from moelora_core.mola import MoLAConfig
from moelora_core.registry import create
from moelora_core.talklora import TalkLoRAConfig

C = TypeVar("C")
DTYPE = torch.float64

seeds = st.integers(0, 1023)  # small: a shrunk counterexample needs few steps
scales = st.sampled_from([1.0, 0.5, 2.0])
batch_shapes = st.sampled_from([(3,), (2, 3), (1,), (2, 1, 2)])


@dataclass(frozen=True)
class Case(Generic[C]):
    """A drawn instance: `config`, parameter `seed`, input `input_seed` and `batch` shape."""

    config: C
    seed: int
    input_seed: int
    batch: tuple[int, ...] = (3,)

    def build(self) -> Adapter:
        """The float64 adapter with every parameter drawn from N(0, 1/fan_in) by `seed`."""
        return build_random(self.config, self.seed)

    def inputs(self, scale: float = 1.0) -> torch.Tensor:
        n = int(getattr(self.config, "in_features"))  # noqa: B009
        gen = torch.Generator().manual_seed(self.input_seed)
        return scale * torch.randn(*self.batch, n, generator=gen, dtype=DTYPE)


def build_random(config: Any, seed: int, **kwargs: Any) -> Adapter:
    """The one random builder: `registry.create(config, dtype=float64, **kwargs).randomize_(seed)`
    (kwargs: `shared`, `device`); ArgumentTypeError for a config of no registered architecture."""
    kwargs.setdefault("dtype", DTYPE)
    return create(config, **kwargs).randomize_(seed)


def _dims(lo: int) -> st.SearchStrategy[int]:
    return st.integers(lo, 12)


def _top_k(E: int) -> st.SearchStrategy[int | None]:
    return st.one_of(st.none(), st.integers(1, E))


# Every config strategy takes `lo`, the smallest size drawn for every dimension, rank and expert count
# (1 by default, so the edge cases E = 1, r = E and n < r are drawn), and `top_k` (False: soft
# routing only; an unrouted architecture accepts and ignores it). An architecture with a part shared
# across layers also takes `shared` (True: its sharing flag is drawn too; False by default).


@st.composite
def lora_configs(draw: st.DrawFn, lo: int = 1, top_k: bool = True) -> LoRAConfig:
    return LoRAConfig(
        in_features=draw(_dims(lo)),
        out_features=draw(_dims(lo)),
        rank=draw(_dims(lo)),
        scale=draw(scales),
    )


@st.composite
def moelora_configs(
    draw: st.DrawFn,
    router: str | None = None,
    num_experts: int | None = None,
    top_k: bool = True,
    lo: int = 1,
) -> MoELoRAConfig:
    E = num_experts if num_experts is not None else draw(st.integers(lo, 4))
    kind = router or draw(st.sampled_from(["input", "latent"]))
    k = draw(_top_k(E)) if top_k else None
    n, m, r_e = draw(_dims(lo)), draw(_dims(lo)), draw(st.integers(lo, 3))
    return MoELoRAConfig(
        in_features=n,
        out_features=m,
        num_experts=E,
        expert_rank=r_e,
        router=kind,  # type: ignore[arg-type]
        top_k=k,
        scale=draw(scales),
    )


@st.composite
def hydralora_configs(draw: st.DrawFn, top_k: bool = True, lo: int = 1) -> HydraLoRAConfig:
    E = draw(st.integers(lo, 4))
    k = draw(_top_k(E)) if top_k else None
    n, m, r_e = draw(_dims(lo)), draw(_dims(lo)), draw(st.integers(lo, 4))
    return HydraLoRAConfig(
        in_features=n, out_features=m, num_experts=E, expert_rank=r_e, top_k=k, scale=draw(scales)
    )


@st.composite
def talklora_configs(
    draw: st.DrawFn,
    talk_init: Init = "kaiming_uniform",
    top_k: bool = True,
    lo: int = 1,
    shared: bool = False,
) -> TalkLoRAConfig:
    E = draw(st.integers(lo, 4))
    rank = E * draw(st.integers(lo, 3))  # r = E (one rank per head) included when lo = 1
    k = draw(_top_k(E)) if top_k else None
    n, m = draw(_dims(lo)), draw(_dims(lo))
    return TalkLoRAConfig(
        in_features=n,
        out_features=m,
        rank=rank,
        num_experts=E,
        top_k=k,
        scale=draw(scales),
        share_b=draw(st.booleans()) if shared else False,
        talk_init=talk_init,
    )


@st.composite
def comol_configs(
    draw: st.DrawFn,
    num_cores: int | None = None,
    core_router: bool | None = None,
    top_k: bool = True,
    lo: int = 1,
    shared: bool = False,
) -> CoMoLConfig:
    N = num_cores if num_cores is not None else draw(st.integers(lo, 4))
    cr = core_router if core_router is not None else draw(st.booleans())
    k = draw(_top_k(N)) if top_k else None
    n, m, r = draw(_dims(lo)), draw(_dims(lo)), draw(st.integers(lo, 6))
    return CoMoLConfig(
        in_features=n,
        out_features=m,
        rank=r,
        num_cores=N,
        core_router=cr,
        top_k=k,
        scale=draw(scales),
        share_ab=draw(st.booleans()) if shared else False,
    )


@st.composite
def flylora_configs(draw: st.DrawFn, lo: int = 1, top_k: bool = True) -> FlyLoRAConfig:
    n, m, r = draw(_dims(lo)), draw(_dims(lo)), draw(st.integers(lo, 6))
    return FlyLoRAConfig(
        in_features=n,
        out_features=m,
        rank=r,
        top_k=draw(st.integers(1, r)) if top_k else r,  # without top-k: every component (LoRA)
        density=draw(st.sampled_from([1e-3, 0.25, 0.5, 1.0])),  # p = 1, ⌈n/4⌉, ⌈n/2⌉, n
        a_seed=draw(seeds),
        scale=draw(scales),
    )


@st.composite
def denselora_configs(
    draw: st.DrawFn, lo: int = 1, top_k: bool = True, shared: bool = True
) -> DenseLoRAConfig:
    # every DenseLoRA config shares A and B (no flag to draw): it takes `shared` to be drawn with them
    n, m, r = draw(_dims(lo)), draw(_dims(lo)), draw(st.integers(lo, 6))
    return DenseLoRAConfig(in_features=n, out_features=m, rank=r, scale=draw(scales))


@st.composite
def mola_configs(draw: st.DrawFn, top_k: bool = True, lo: int = 1) -> MoLAConfig:
    E = draw(st.integers(lo, 4))
    k = draw(st.integers(1, E)) if top_k else E  # k = E: the soft router
    n, m, r_e = draw(_dims(lo)), draw(_dims(lo)), draw(st.integers(lo, 3))
    return MoLAConfig(
        in_features=n, out_features=m, num_experts=E, expert_rank=r_e, top_k=k, scale=draw(scales),
    )  # fmt: skip


@st.composite
def adamole_configs(draw: st.DrawFn, top_k: bool = True, lo: int = 1) -> AdaMoLEConfig:
    E = draw(st.integers(lo, 4))  # no top-k: the threshold chooses; τ_max = 0 is the soft router
    n, m, r_e = draw(_dims(lo)), draw(_dims(lo)), draw(st.integers(lo, 3))
    return AdaMoLEConfig(
        in_features=n, out_features=m, num_experts=E, expert_rank=r_e,
        max_threshold=draw(st.sampled_from([None, 0.0, 0.5 / E])), scale=draw(scales),
    )  # fmt: skip


def cases(configs: st.SearchStrategy[C]) -> st.SearchStrategy[Case[C]]:
    """Cases over a config strategy: config, parameter seed, input seed, batch shape."""
    return st.builds(Case, configs, seeds, seeds, batch_shapes)


CONFIG_STRATEGIES: dict[str, Callable[..., st.SearchStrategy[Any]]] = {  # one line per family
    "lora": lora_configs,
    "moelora": moelora_configs,
    "hydralora": hydralora_configs,
    "talklora": talklora_configs,
    "comol": comol_configs,
    "flylora": flylora_configs,
    "denselora": denselora_configs,
    "mola": mola_configs,
    "adamole": adamole_configs,
}
"""One config strategy per registered family (each takes `lo`, `top_k`, and `shared` if it shares)."""


def any_config(lo: int = 1, top_k: bool = True, shared: bool = False) -> st.SearchStrategy[Any]:
    """A config of any family in `CONFIG_STRATEGIES`; `shared=True` also draws the sharing flags
    of the families whose strategy takes `shared`."""
    kw: dict[str, Any] = {"lo": lo, "top_k": top_k}
    out = []
    for strategy in CONFIG_STRATEGIES.values():
        takes_shared = "shared" in inspect.signature(strategy).parameters
        out.append(strategy(**kw, shared=True) if shared and takes_shared else strategy(**kw))
    return st.one_of(*out)


AdapterT = TypeVar("AdapterT", bound=Adapter)


def build_as(cls: type[AdapterT], config: Any, seed: int, **kwargs: Any) -> AdapterT:
    """`build_random(config, seed)`, typed as `cls` for a claim about that architecture
    (ArgumentTypeError naming both when the config builds another one)."""
    from moelora_core.validate import require_instance

    return require_instance("adapter", build_random(config, seed, **kwargs), cls)


def configs_where(
    declares: Callable[[type[Adapter]], bool], lo: int = 1, top_k: bool = True
) -> st.SearchStrategy[Any]:
    """Configs of the registered families whose class `declares` hold (e.g. linear experts, a
    softmax gate), drawn from their `CONFIG_STRATEGIES` entries (no rejection)."""
    from moelora_core.registry import architecture  # ConfigError for an unregistered family

    chosen = [
        strategy(lo=lo, top_k=top_k)
        for family, strategy in CONFIG_STRATEGIES.items()
        if declares(architecture(family))
    ]
    return st.one_of(*chosen)
