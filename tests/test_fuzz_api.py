"""Fuzz the public API with invalid and edge-case calls (docs/robustness.md).

Every call either raises one of the project's exceptions (a `MoELoRAError` subclass) or returns a result
that passes its family's invariant: finite and shape-consistent, routing rows on the simplex, top-k with
at most k (and, for moderate logits, exactly k) nonzero weights, bounds non-negative with lower <= upper.

Counting mode: with MOELORA_FUZZ_TALLY=out.json the tests record every outcome (accepted, rejected, raw
error, silent wrong result) instead of failing, and write the tally there; docs/robustness.md reports the
figures measured that way before and after the validation was added.
"""

from __future__ import annotations

import json
import math
import os
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from moelora_core import (
    BlockDiagonal,
    CoMoL,
    CoMoLConfig,
    Compose,
    Dense,
    HeadLayout,
    HydraLoRA,
    HydraLoRAConfig,
    Identity,
    KronIdentity,
    LoRA,
    LoRAConfig,
    MoELoRA,
    MoELoRAConfig,
    MoELoRAError,
    SoftmaxRouter,
    TalkLoRA,
    TalkLoRAConfig,
    architecture,
    build,
    chain,
)
from moelora_core import reductions as R
from moelora_core.adapter import Adapter, weighted_heads
from proofs_numeric import bounds as B
from proofs_numeric.strategies import build_random

T = TypeVar("T")
F64 = torch.float64
TALLY_PATH = os.environ.get("MOELORA_FUZZ_TALLY")
TALLY: Counter[str] = Counter()
RAW_SITES: set[str] = set()
SILENT_KINDS: set[str] = set()
MAX_LAYER_PARAMS = 2**31  # a layer larger than this does not fit in any accelerator's memory


# ----- the harness -------------------------------------------------------------------------------


def _site(e: BaseException) -> str:
    """Exception type and the innermost project frame (or the innermost frame) that raised it."""
    frames = traceback.extract_tb(e.__traceback__)
    ours = [f for f in frames if "moelora_core" in f.filename or "proofs_numeric" in f.filename]
    f = (ours or frames)[-1]
    return f"{type(e).__name__} at {Path(f.filename).name}:{f.lineno}"


def attempt(family: str, call: Callable[[], T], check: Callable[[T], None]) -> None:
    """Run one call: a MoELoRAError is a clear rejection; a result must pass `check`."""
    TALLY[f"{family}/cases"] += 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = call()
    except MoELoRAError:
        TALLY[f"{family}/rejected"] += 1
        return
    except Exception as e:  # the point of the test: no other exception may escape
        TALLY[f"{family}/raw"] += 1
        RAW_SITES.add(_site(e))
        if TALLY_PATH is None:
            raise AssertionError(f"{family}: raw {type(e).__name__}: {e}") from e
        return
    try:
        check(out)
    except Exception as e:  # an AssertionError, or the result is not what it claims to be
        TALLY[f"{family}/silent"] += 1
        SILENT_KINDS.add(f"{family}: {str(e)[:80]}")
        if TALLY_PATH is None:
            raise AssertionError(f"{family}: accepted, but {e}") from e
        return
    TALLY[f"{family}/accepted"] += 1


@pytest.fixture(scope="module", autouse=True)
def _write_tally() -> Any:
    yield
    if TALLY_PATH is not None:
        totals = Counter[str]()
        for key, v in TALLY.items():
            totals[key.rsplit("/", 1)[1]] += v
        Path(TALLY_PATH).write_text(
            json.dumps(
                {
                    "totals": dict(totals),
                    "by_family": dict(sorted(TALLY.items())),
                    "raw_sites": sorted(RAW_SITES),
                    "silent_kinds": sorted(SILENT_KINDS),
                },
                indent=1,
            )
        )


def finite(t: object, what: str = "result") -> Tensor:
    assert isinstance(t, Tensor), f"{what} is {type(t).__name__}, not a Tensor"
    if t.device.type != "meta":
        assert bool(torch.isfinite(t).all()), f"{what} has non-finite entries"
    return t


def real(v: object, what: str) -> float:
    assert isinstance(v, float | int) and not isinstance(v, bool), f"{what}={v!r} is not a number"
    assert math.isfinite(v) and v >= 0, f"{what}={v!r}: expected finite and >= 0"
    return float(v)


# ----- value zoos --------------------------------------------------------------------------------

BAD_INTS: list[object] = [0, -3, True, False, 2.0, 2.5, "4", None, 10**13, math.nan, [4], b"4"]
BAD_BOOLS: list[object] = ["yes", "False", 0, 1, None, "true", 1.0]
BAD_FLOATS: list[object] = [math.nan, math.inf, -math.inf, "1", None, True, [1.0], 1e308 * 10]
DTYPES: list[object] = [
    None, torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.bool, torch.complex64, torch.uint8, "float32", "torch.float64", 32, float,
]  # fmt: skip
DEVICES: list[object] = [
    None, "cpu", torch.device("cpu"), "cpu:0", "meta", "cuda", "cuda:3", "mps", "tpu", "", 0, -1,
    1.5, "xla",
]  # fmt: skip
JUNK: list[object] = [None, "adapter", 3, 2.5, [1, 2], torch.zeros(2, 2), {"a": 1}]

small = st.integers(1, 5)
SHAPES = {  # field -> (valid strategy, bad values)
    "in_features": (small, BAD_INTS),
    "out_features": (small, BAD_INTS),
    "rank": (small, BAD_INTS),
    "expert_rank": (small, BAD_INTS),
    "num_experts": (st.integers(1, 4), BAD_INTS),
    "num_cores": (st.integers(1, 4), BAD_INTS),
    "top_k": (st.none(), [*BAD_INTS, 7]),
    "scale": (st.sampled_from([1.0, 0.5, -2.0, 0.0, 3]), BAD_FLOATS),
    "router": (st.sampled_from(["input", "latent"]), ["output", "", None, 1, "Input"]),
    "share_b": (st.just(False), BAD_BOOLS),
    "share_ab": (st.just(False), BAD_BOOLS),
    "core_router": (st.booleans(), BAD_BOOLS),
    "talk_init": (
        st.sampled_from(["kaiming_uniform", "identity", "zeros", "normal"]),
        ["orthogonal", None, 3, "ZEROS"],
    ),
}
CONFIGS: dict[type, list[str]] = {
    LoRAConfig: ["in_features", "out_features", "rank", "scale"],
    MoELoRAConfig: [
        "in_features",
        "out_features",
        "num_experts",
        "expert_rank",
        "router",
        "top_k",
        "scale",
    ],
    HydraLoRAConfig: [
        "in_features",
        "out_features",
        "num_experts",
        "expert_rank",
        "top_k",
        "scale",
    ],
    TalkLoRAConfig: [
        "in_features",
        "out_features",
        "rank",
        "num_experts",
        "top_k",
        "scale",
        "share_b",
        "talk_init",
    ],
    CoMoLConfig: [
        "in_features",
        "out_features",
        "rank",
        "num_cores",
        "core_router",
        "top_k",
        "scale",
        "share_ab",
    ],
}
HUGE = 10**6  # a size that is valid alone but gives absurd products


@st.composite
def config_kwargs(draw: st.DrawFn, cls: type) -> dict[str, object]:
    """Valid keyword arguments for `cls`, with at most one field replaced by a bad value."""
    fields = CONFIGS[cls]
    kw: dict[str, object] = {f: draw(SHAPES[f][0]) for f in fields}
    E = kw.get("num_experts", kw.get("num_cores", 1))
    assert isinstance(E, int)
    if cls is TalkLoRAConfig:
        kw["rank"] = E * draw(st.integers(1, 2))
    if "top_k" in kw:
        kw["top_k"] = draw(st.one_of(st.none(), st.integers(1, E)))
    bad = draw(st.sampled_from([None, None, "huge", *fields]))
    if bad == "huge":  # every size huge: the product is absurd even though each value is an int
        for f in fields:
            if f in ("in_features", "out_features", "rank", "expert_rank"):
                kw[f] = HUGE if cls is not TalkLoRAConfig or f != "rank" else E * HUGE
    elif bad is not None:
        kw[bad] = draw(st.sampled_from(SHAPES[bad][1]))
    return kw


def layer_params(c: Any) -> int:
    n, m = c.in_features, c.out_features
    if isinstance(c, LoRAConfig):
        return c.rank * (n + m)
    if isinstance(c, MoELoRAConfig):
        return c.num_experts * c.expert_rank * (n + m) + c.num_experts * max(n, c.num_experts)
    if isinstance(c, HydraLoRAConfig):
        return c.expert_rank * n + c.num_experts * (c.expert_rank * m + n)
    if isinstance(c, TalkLoRAConfig):
        r, E = c.rank, c.num_experts
        return r * (n + m) + r * r // E + E * E + E * r
    return c.rank * (n + m) + c.num_cores * c.rank * (c.rank + 1) + c.num_cores * n


def make(config: Any, **kw: Any) -> Adapter:
    """The adapter of `config`, with the shared module it needs."""
    for cls, cfg_cls in (
        (LoRA, LoRAConfig), (MoELoRA, MoELoRAConfig), (HydraLoRA, HydraLoRAConfig),
        (TalkLoRA, TalkLoRAConfig), (CoMoL, CoMoLConfig),
    ):  # fmt: skip
        if type(config) is cfg_cls:
            extra: dict[str, Any] = {}
            if cls is TalkLoRA and config.share_b:
                extra["b"] = TalkLoRA.shared_b(config, **kw)
            if cls is CoMoL and config.share_ab:
                extra["ab"] = CoMoL.shared_ab(config, **kw)
            out: Adapter = cls(config, **kw, **extra)
            return out
    raise AssertionError(f"no adapter for {config!r}")


def check_routing(a: Adapter, x: Tensor, g: Tensor | None) -> None:
    lead = tuple(x.shape[:-1])
    if a.router is None:
        assert g is None, "an unrouted adapter returned routing weights"
        return
    finite(g, "routing")
    assert g is not None and tuple(g.shape) == (*lead, a.num_experts), f"routing shape {g.shape}"
    assert bool((g >= 0).all()), "negative routing weight"
    tol = 1e-5 if g.dtype in (torch.float32, F64) else 2e-2
    if g.numel():
        assert float((g.double().sum(-1) - 1).abs().max()) <= tol, "routing rows do not sum to 1"
    k = a.router.top_k
    if k is not None and g.numel():
        assert int((g > 0).sum(-1).max()) <= k, f"top_k={k} but more experts have weight"


def check_adapter(a: Adapter, dtype: torch.dtype | None = None) -> None:
    """A built adapter: parameters of one dtype and device, finite; Δ, routing, ΔW consistent."""
    ref = a.reference
    if dtype is not None:
        assert ref.dtype == dtype, f"parameters are {ref.dtype}, asked for {dtype}"
    for name, p in a.named_parameters():
        assert p.dtype == ref.dtype and p.device == ref.device, f"{name}: {p.dtype} {p.device}"
        finite(p, name)
    if ref.device.type == "meta":
        return
    x = torch.randn(3, a.in_features, dtype=F64).to(ref.dtype)
    y = finite(a(x), "Δ(x)")
    assert tuple(y.shape) == (3, a.out_features) and y.dtype == ref.dtype, f"Δ shape {y.shape}"
    check_routing(a, x, a.routing(x))


def adapters() -> list[Adapter]:
    """Small randomised adapters of every family, float32 and float64, soft and top-k."""
    cfgs: list[Any] = [
        LoRAConfig(in_features=4, out_features=3, rank=2),
        MoELoRAConfig(in_features=4, out_features=3, num_experts=3, expert_rank=1, top_k=2),
        MoELoRAConfig(in_features=4, out_features=3, num_experts=2, expert_rank=2, router="latent"),
        HydraLoRAConfig(in_features=4, out_features=3, num_experts=3, expert_rank=2, top_k=1),
        TalkLoRAConfig(in_features=4, out_features=3, rank=4, num_experts=2),
        TalkLoRAConfig(in_features=4, out_features=3, rank=3, num_experts=3, top_k=2),
        CoMoLConfig(in_features=4, out_features=3, rank=2, num_cores=3, top_k=2),
        CoMoLConfig(in_features=4, out_features=3, rank=2, num_cores=2, core_router=False),
    ]
    out = [make(c, dtype=d).randomize_(i) for i, c in enumerate(cfgs) for d in (torch.float32, F64)]
    out.append(make(cfgs[1], dtype=torch.bfloat16).randomize_(7))
    return out


ADAPTERS = adapters()


# ----- configs, constructors, shared modules -----------------------------------------------------


@settings(max_examples=700)
@given(st.sampled_from(list(CONFIGS)).flatmap(lambda c: st.tuples(st.just(c), config_kwargs(c))))
def test_fuzz_configs(args: tuple[type, dict[str, object]]) -> None:
    cls, kw = args

    def check(c: Any) -> None:
        for f in CONFIGS[cls]:
            v = getattr(c, f)
            if f in ("share_b", "share_ab", "core_router"):
                assert type(v) is bool, f"{f}={v!r} accepted as a bool"
            elif f == "scale":
                real(abs(v), "scale")
            elif f == "router":
                assert v in ("input", "latent"), f"router={v!r}"
            elif f == "talk_init":
                assert v in ("kaiming_uniform", "identity", "zeros", "normal"), f"talk_init={v!r}"
            elif f != "top_k":
                assert type(v) is int and v >= 1, f"{f}={v!r}"
        assert layer_params(c) <= MAX_LAYER_PARAMS, f"{layer_params(c):.3g} parameters per layer"
        if layer_params(c) <= 5000:
            check_adapter(make(c, dtype=F64).randomize_(0), F64)

    attempt(f"config/{cls.__name__}", lambda: cls(**kw), check)


SMALL = [
    LoRAConfig(in_features=4, out_features=3, rank=2),
    MoELoRAConfig(in_features=4, out_features=3, num_experts=2, expert_rank=1, top_k=1),
    HydraLoRAConfig(in_features=4, out_features=3, num_experts=2, expert_rank=2),
    TalkLoRAConfig(in_features=4, out_features=3, rank=2, num_experts=2),
    CoMoLConfig(in_features=4, out_features=3, rank=2, num_cores=2),
]
CLASSES: list[type[Adapter]] = [LoRA, MoELoRA, HydraLoRA, TalkLoRA, CoMoL]


@settings(max_examples=400)
@given(
    st.integers(0, 4),
    st.sampled_from([None, None, "config", "dtype", "device"]),
    st.sampled_from([*SMALL, None, {"in_features": 4}]),
    st.sampled_from(DTYPES),
    st.sampled_from(DEVICES),
)
def test_fuzz_constructors(i: int, bad: Any, config: Any, dtype: Any, device: Any) -> None:
    cls = CLASSES[i]
    config = config if bad == "config" else SMALL[i]
    dtype = dtype if bad == "dtype" else DTYPES[i % 5]
    device = device if bad == "device" else DEVICES[i % 5]

    def check(a: Adapter) -> None:
        assert type(a.config) is type(SMALL[i]), f"{cls.__name__} built from {a.config!r}"
        want = dtype if isinstance(dtype, torch.dtype) else torch.get_default_dtype()
        check_adapter(a, want)
        dev = a.reference.device.type
        asked = "cpu" if device is None else str(device).split(":")[0]
        assert dev == asked, f"device={device!r} gave parameters on {dev}"

    attempt(f"constructor/{cls.__name__}", lambda: cls(config, dtype=dtype, device=device), check)


TALK_SHARED = TalkLoRAConfig(in_features=4, out_features=3, rank=2, num_experts=2, share_b=True)
COMOL_SHARED = CoMoLConfig(in_features=4, out_features=3, rank=2, num_cores=2, share_ab=True)
_A, _B = CoMoL.shared_ab(COMOL_SHARED)
_A64, _B64 = CoMoL.shared_ab(COMOL_SHARED, dtype=F64)
_Am, _Bm = CoMoL.shared_ab(COMOL_SHARED, device="meta")
SHARED_B: list[object] = [
    TalkLoRA.shared_b(TALK_SHARED), TalkLoRA.shared_b(TALK_SHARED, dtype=F64),
    TalkLoRA.shared_b(TALK_SHARED, device="meta"), Dense(3, 4), Dense(2, 3), torch.zeros(3, 2),
    torch.nn.Linear(2, 3), BlockDiagonal(1, 3, 2), *JUNK,
]  # fmt: skip
SHARED_AB: list[object] = [
    (_A, _B), [_A, _B], (_A64, _B64), (_Am, _Bm), (_A64, _B), (_B, _A), (_A,), (_A, _B, _B),
    (_A, torch.zeros(3, 2)), (Dense(2, 5), _B), *JUNK,
]  # fmt: skip


@settings(max_examples=200)
@given(
    st.booleans(),
    st.integers(0, 20),
    st.sampled_from([None, torch.float32, F64]),
    st.sampled_from([None, "meta"]),
)
def test_fuzz_shared_modules(talk: bool, j: int, dtype: Any, device: Any) -> None:
    if talk:
        b = SHARED_B[j % len(SHARED_B)]

        def check_b(a: TalkLoRA) -> None:
            assert a.B is b, "the shared B was copied, not shared"
            check_adapter(a.randomize_(1) if a.reference.device.type != "meta" else a)

        attempt(
            "shared/TalkLoRA.b",
            lambda: TalkLoRA(TALK_SHARED, b=b, dtype=dtype, device=device),  # type: ignore[arg-type]
            check_b,
        )
    else:
        ab = SHARED_AB[j % len(SHARED_AB)]

        def check_ab(a: CoMoL) -> None:
            assert isinstance(ab, tuple | list) and a.A is ab[0] and a.B is ab[1], (
                "(A, B) not shared"
            )
            check_adapter(a.randomize_(1) if a.reference.device.type != "meta" else a)

        attempt(
            "shared/CoMoL.ab",
            lambda: CoMoL(COMOL_SHARED, ab=ab, dtype=dtype, device=device),  # type: ignore[arg-type]
            check_ab,
        )


# ----- forward, routing, delta_weight ------------------------------------------------------------

X_DTYPES = [None, torch.float32, F64, torch.float16, torch.bfloat16, torch.int64, torch.bool,
            torch.complex64]  # fmt: skip
X_SHAPES = ["ok", "vector", "batch3", "empty", "wrong_last", "scalar", "transposed"]
X_VALUES = ["randn", "zeros", "ties", "big", "tiny", "nan", "inf", "huge", "meta"]


def make_x(a: Adapter, dtype: Any, shape: str, values: str, seed: int) -> object:
    n = a.in_features
    dims = {
        "ok": (3, n), "vector": (n,), "batch3": (2, 1, n), "empty": (0, n),
        "wrong_last": (3, n + 1), "scalar": (), "transposed": (n, 3),
    }[shape]  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(dims, generator=gen, dtype=F64)
    if values in ("zeros", "ties"):
        x = torch.zeros(dims, dtype=F64) + (1.0 if values == "ties" else 0.0)
    elif values in ("nan", "inf") and x.numel():
        x.view(-1)[0] = math.nan if values == "nan" else math.inf
    elif values == "big":
        x = x * 1e4
    elif values == "huge":
        x = x * (1e30 if a.reference.dtype != F64 else 1e300)
    elif values == "tiny":
        x = x * 1e-300
    want = a.reference.dtype if dtype is None else dtype
    x = x.to(want) if want != torch.complex64 else torch.complex(x.float(), x.float())
    return x.to("meta") if values == "meta" else x


@settings(max_examples=900)
@given(
    st.integers(0, len(ADAPTERS) - 1),
    st.sampled_from(["call", "delta", "routing", "delta_weight"]),
    st.sampled_from([None, None, "dtype", "shape", "values", "junk"]),
    st.sampled_from(X_DTYPES),
    st.sampled_from(X_SHAPES),
    st.sampled_from(X_VALUES),
    st.integers(0, 50),
    st.sampled_from([[0.0] * 4, 3.0, "x", b"x", None]),
)
def test_fuzz_forward(
    i: int, method: str, bad: Any, dtype: Any, shape: str, values: str, seed: int, junk: Any
) -> None:
    a = ADAPTERS[i]
    dtype = dtype if bad == "dtype" else None
    shape = shape if bad == "shape" else X_SHAPES[seed % 4]
    values = values if bad == "values" else X_VALUES[seed % 5]
    x = make_x(a, dtype, shape, values, seed) if bad != "junk" else junk
    fn = {"call": a, "delta": a.delta, "routing": a.routing, "delta_weight": a.delta_weight}

    def check(out: Any) -> None:
        assert isinstance(x, Tensor)
        lead = tuple(x.shape[:-1])
        if method == "routing":
            check_routing(a, x, out)
            return
        assert isinstance(out, Tensor), f"{method} returned {type(out).__name__}"
        if method == "delta_weight":
            assert tuple(out.shape) == (*lead, a.out_features, a.in_features), f"ΔW {out.shape}"
            finite(out, "ΔW(x)")
            return
        assert tuple(out.shape) == (*lead, a.out_features), f"Δ shape {out.shape}"
        if method == "delta" or values != "huge":
            finite(out, f"{method}(x)")
        elif not bool(torch.isfinite(out).all()):  # forward may overflow; delta() must say so
            try:
                a.delta(x)
            except MoELoRAError:
                return
            raise AssertionError("forward overflowed and delta() returned a non-finite result")

    attempt(f"forward/{method}", lambda: fn[method](x), check)  # type: ignore[operator]


# ----- the router's gate: top-k keeps exactly k ---------------------------------------------------


@settings(max_examples=300)
@given(
    st.integers(1, 5),
    st.sampled_from([None, 1, 2, 3, 4, 5]),
    st.lists(st.integers(-3, 3), min_size=1, max_size=12),
    st.sampled_from([torch.float32, F64, torch.float16, torch.int64, "wrong_last", "junk"]),
)
def test_fuzz_gate(E: int, k: Any, ints: list[int], kind: Any) -> None:
    if k is not None and k > E:
        k = E
    router = SoftmaxRouter(Dense(E, 3), top_k=k)
    rows = max(1, len(ints) // E)
    s: object = torch.tensor((ints * E)[: rows * E], dtype=F64).reshape(rows, E)
    if kind == "wrong_last":
        s = torch.zeros(rows, E + 1)
    elif kind == "junk":
        s = [0.0] * E
    else:
        s = s.to(kind)  # type: ignore[attr-defined]

    def check(g: Any) -> None:
        finite(g, "gate")
        assert isinstance(s, Tensor) and g.shape == s.shape, f"gate shape {g.shape}"
        assert float((g.double().sum(-1) - 1).abs().max()) <= 2e-3, "rows do not sum to 1"
        want = E if k is None else k  # integer logits in [-3, 3]: no kept weight underflows
        assert bool(((g > 0).sum(-1) == want).all()), f"top_k={k}: kept {(g > 0).sum(-1).tolist()}"

    attempt("gate", lambda: router.gate(s), check)  # type: ignore[arg-type]


# ----- reductions --------------------------------------------------------------------------------


def _prepared() -> dict[str, Adapter]:
    mo1 = MoELoRA(
        MoELoRAConfig(in_features=4, out_features=3, num_experts=1, expert_rank=2), dtype=F64
    )
    mo_same = MoELoRA(
        MoELoRAConfig(in_features=4, out_features=3, num_experts=2, expert_rank=1), dtype=F64
    ).randomize_(3)
    with torch.no_grad():
        mo_same.A.weight[1] = mo_same.A.weight[0]
        mo_same.B.weight[:, 1] = mo_same.B.weight[:, 0]
    hy = HydraLoRA(
        HydraLoRAConfig(in_features=4, out_features=3, num_experts=2, expert_rank=1), dtype=F64
    ).randomize_(4)
    with torch.no_grad():
        hy.B.weight[:, 1] = hy.B.weight[:, 0]
    co = CoMoL(
        CoMoLConfig(in_features=4, out_features=3, rank=2, num_cores=3), dtype=F64
    ).randomize_(5)
    with torch.no_grad():
        co.cores[1:] = co.cores[0]
    return {
        "mo1": mo1.randomize_(2), "mo_same": mo_same, "hy_same": hy, "co_same": co,
        **{f"a{i}": a for i, a in enumerate(ADAPTERS)},
    }  # fmt: skip


PREPARED = _prepared()
REDUCTIONS: dict[str, Callable[..., Adapter]] = {
    "talklora_to_moelora": R.talklora_to_moelora,
    "talklora_to_moelora_as_stated": R.talklora_to_moelora_as_stated,
    "moelora_to_talklora": R.moelora_to_talklora,
    "talklora_to_input_moelora": R.talklora_to_input_moelora,
    "comol_to_moelora": R.comol_to_moelora,
    "comol_to_lora": R.comol_to_lora,
    "moelora_to_lora": R.moelora_to_lora,
    "hydralora_to_lora": R.hydralora_to_lora,
    **({"moelora_to_comol": R.moelora_to_comol} if hasattr(R, "moelora_to_comol") else {}),
}
WITH_ATOL = {"comol_to_lora", "moelora_to_lora", "hydralora_to_lora"}
ATOLS: list[object] = [
    0.0,
    0,
    1e-12,
    1e-3,
    -1.0,
    math.nan,
    math.inf,
    "0",
    True,
    None,
    10**400 // 10**399,
]


@settings(max_examples=400)
@given(
    st.sampled_from(list(REDUCTIONS)),
    st.sampled_from([*PREPARED, "junk0", "junk1", "junk2", "junk3"]),
    st.sampled_from([*ATOLS, "default"]),
)
def test_fuzz_reductions(name: str, which: str, atol: Any) -> None:
    src: Any = PREPARED.get(which, JUNK[int(which[-1])] if which.startswith("junk") else None)
    fn = REDUCTIONS[name]
    kwargs = {} if atol == "default" or name not in WITH_ATOL else {"atol": atol}

    def check(out: Any) -> None:
        assert isinstance(out, Adapter), f"returned {type(out).__name__}"
        if name in WITH_ATOL and atol != "default":
            a = float(atol)
            assert not math.isnan(a) and a >= 0 and not isinstance(atol, bool), f"atol={atol!r}"
        check_adapter(out)
        if name == "talklora_to_moelora_as_stated" or src.reference.device.type == "meta":
            return
        x = torch.randn(5, src.in_features, dtype=F64).to(src.reference.dtype)
        d0, d1 = src.delta(x).double(), out.delta(x.to(out.reference.dtype)).double()
        tol = (1e-9 if src.reference.dtype == F64 else 1e-4) * (1 + float(d0.abs().max()))
        if kwargs.get("atol", 0.0) == 0.0:
            assert float((d0 - d1).abs().max()) <= tol, "the embedding changes Δ"

    attempt(f"reduction/{name}", lambda: fn(src, **kwargs), check)


@settings(max_examples=100)
@given(
    st.sampled_from([5, 6, 0, -1, 2.0, "6", True, None, 10**9]),
    st.sampled_from([3, 1, 0, 2.5]),
    st.sampled_from([2, 1, 0, "2"]),
    st.sampled_from([1, 2, 0]),
    st.sampled_from([0, 5, -1, 2**70, 1.5, "0", None]),
)
def test_fuzz_witness(n: Any, m: Any, E: Any, r_e: Any, seed: Any) -> None:
    def check(out: Any) -> None:
        assert isinstance(out, MoELoRA), type(out).__name__
        check_adapter(out, F64)

    attempt(
        "reduction/input_router_witness", lambda: R.input_router_witness(n, m, E, r_e, seed), check
    )


# ----- randomize_ --------------------------------------------------------------------------------


@settings(max_examples=200)
@given(
    st.integers(0, len(ADAPTERS) - 1),
    st.sampled_from([0, 7, -1, 2**64, 2**70, True, 1.5, "0", None, math.nan]),
    st.sampled_from([None, 1.0, 0.1, 1e-3, 0.0, -1.0, math.nan, math.inf, 1e300, "1", True, 1e5]),
)
def test_fuzz_randomize(i: int, seed: Any, std: Any) -> None:
    a = ADAPTERS[i]
    before = {k: v.clone() for k, v in a.state_dict().items()}

    def check(out: Any) -> None:
        assert out is a, "randomize_ returned another object"
        assert not isinstance(seed, bool) and isinstance(seed, int), f"seed={seed!r} accepted"
        assert std is None or (not isinstance(std, bool) and std > 0), f"std={std!r} accepted"
        check_adapter(a)

    try:
        attempt("randomize_", lambda: a.randomize_(seed, std), check)
    finally:
        a.load_state_dict(before)


# ----- bounds ------------------------------------------------------------------------------------


def check_router_bounds(rb: Any) -> None:
    assert isinstance(rb, B.RouterBounds), type(rb).__name__
    for f in ("product", "effective", "centred", "logit_norm", "centred_norm", "pair_alignment"):
        real(getattr(rb, f), f)
    slack = 1 + 1e-6
    assert rb.centred <= rb.effective * slack <= rb.product * slack**2, "forms out of order"


BOUND_ADAPTERS: list[object] = [*ADAPTERS, ADAPTERS[2].to(torch.float16), *JUNK]


@settings(max_examples=150)
@given(
    st.sampled_from(["router_bounds", "head_bounds", "talk_bounds", "expert_factors"]),
    st.integers(0, len(BOUND_ADAPTERS) - 1),
)
def test_fuzz_router_bounds(fn: str, i: int) -> None:
    a = BOUND_ADAPTERS[i]

    def check(out: Any) -> None:
        if fn == "router_bounds":
            check_router_bounds(out)
        elif fn == "head_bounds":
            assert out is None or check_router_bounds(out) is None
        elif fn == "talk_bounds":
            assert isinstance(out, B.TalkBounds)
            real(out.talk_norm, "talk_norm")
            for v in [*out.attenuation, *out.head_product, *out.head_centred]:
                real(v, "talk bound")
        else:
            sn = B.stack_norms(out)
            for v in (sn.expert_max, sn.stack, sn.stack_centred):
                real(v, "stack norm")

    attempt(f"bounds/{fn}", lambda: getattr(B, fn)(a), check)


def _matrix(kind: str) -> object:
    gen = torch.Generator().manual_seed(0)
    M = torch.randn(4, 3, generator=gen, dtype=F64)
    return {
        "f64": M, "f32": M.float(), "f16": M.half(), "bf16": M.bfloat16(), "int": M.long(),
        "bool": M > 0, "complex": torch.complex(M, M), "meta": M.to("meta"), "vector": M[0],
        "3d": M.unsqueeze(0), "empty": torch.zeros(0, 3), "nan": M.clone().fill_(math.nan),
        "huge": M * 1e300, "tiny": M * 1e-300, "zero": M * 0, "list": M.tolist(), "none": None,
    }[kind]  # fmt: skip


@settings(max_examples=200)
@given(
    st.sampled_from(
        [
            "f64",
            "f32",
            "f16",
            "bf16",
            "int",
            "bool",
            "complex",
            "meta",
            "vector",
            "3d",
            "empty",
            "nan",
            "huge",
            "tiny",
            "zero",
            "list",
            "none",
        ]
    ),
    st.sampled_from(["spectral_norm", "softmax_jacobian", "routing_stats"]),
    st.sampled_from(["M", 3, None]),
)
def test_fuzz_matrix_functions(kind: str, fn: str, name: Any) -> None:
    M = _matrix(kind)

    def call() -> Any:
        if fn == "spectral_norm":
            return B.spectral_norm(M, name)  # type: ignore[arg-type]
        if fn == "softmax_jacobian":
            return B.softmax_jacobian(M)  # type: ignore[arg-type]
        return B.routing_stats(
            torch.softmax(M, -1)
            if isinstance(M, Tensor) and M.is_floating_point() and M.device.type != "meta"
            else M
        )  # type: ignore[arg-type]

    def check(out: Any) -> None:
        if fn == "spectral_norm":
            assert isinstance(name, str), f"name={name!r} accepted"
            lo, hi = real(out.lower, "lower"), real(out.upper, "upper")
            assert lo <= hi, f"lower {lo} > upper {hi}"
            assert isinstance(M, Tensor)
            exact = float(torch.linalg.svdvals(M.double())[0]) if M.numel() else 0.0
            assert hi >= exact * (1 - 1e-12), f"upper {hi} below the norm {exact}"
        elif fn == "softmax_jacobian":
            finite(out, "J(p)")
            assert isinstance(M, Tensor) and M.is_floating_point(), f"{M!r} accepted as p"
            if M.numel():
                assert bool((M >= 0).all()), "p has negative entries"
                assert float((M.double().sum(-1) - 1).abs().max()) < 1e-2, "p off the simplex"
        else:
            for v in (out.entropy, out.entropy_normalised, out.load_cv, out.max_load_share):
                real(v, "routing stat")

    attempt(f"bounds/{fn}", call, check)


@settings(max_examples=150)
@given(
    st.sampled_from(["averaging_talk", "reference_init_amplification"]),
    st.sampled_from([1, 3, 0, -2, 2.0, "3", True, None, 10**6]),
    st.sampled_from(
        [0.0, 0.5, 1.0, -0.5, 1.5, math.nan, math.inf, "0.5", None, 10, 10**9, -5, True]
    ),
)
def test_fuzz_talk(fn: str, E: Any, arg: Any) -> None:
    def call() -> Any:
        if fn == "averaging_talk":
            return B.averaging_talk(E, arg)
        return B.reference_init_amplification(E, draws=arg, seed=0)

    def check(out: Any) -> None:
        if fn == "averaging_talk":
            finite(out, "T_a")
            assert not isinstance(arg, bool) and 0 <= arg <= 1, f"a={arg!r} accepted"
            assert float(torch.linalg.matrix_norm(out, ord=2)) <= 1 + 1e-12, "‖T_a‖ > 1"
        else:
            assert 0 <= out.low <= out.fraction <= out.high <= 1, "interval out of order"

    attempt(f"bounds/{fn}", call, check)


REPORT_ADAPTERS = [
    *[a for a in ADAPTERS if a.router is not None][::3],
    ADAPTERS[0],
    make(SMALL[2], dtype=torch.float16).randomize_(9),
]
REPORT_INPUTS = ["none", "ok", "nan", "wrong", "list", "int", "f16"]
RADII: list[object] = [None, 0.0, 0.5, -1.0, math.nan, math.inf, "1", True, 1e300]
EXTRAS: list[dict[str, object]] = [
    {}, {"samples": 0}, {"epsilon": -1.0}, {"seed": -1}, {"seed": 1.5}, {"threads": 0},
    {"local": "no"}, {"epsilon": math.nan}, {"samples": 2.0},
]  # fmt: skip


@settings(max_examples=80)
@given(
    st.integers(0, len(REPORT_ADAPTERS) - 1),
    st.sampled_from([None, None, "inputs", "radius", "extra"]),
    st.sampled_from(REPORT_INPUTS),
    st.sampled_from(RADII),
    st.sampled_from(EXTRAS),
)
def test_fuzz_layer_report(
    i: int, bad: Any, inputs: str, radius: Any, extra: dict[str, Any]
) -> None:
    a = REPORT_ADAPTERS[i]
    inputs = inputs if bad == "inputs" else REPORT_INPUTS[i % 2]
    radius = radius if bad == "radius" else RADII[i % 3]
    extra = extra if bad == "extra" else {}
    n, ref = a.in_features, a.reference
    X = {
        "none": None, "ok": torch.randn(4, n).to(ref.dtype), "nan": torch.full((4, n), math.nan),
        "wrong": torch.randn(4, n + 1), "list": [[0.0] * n], "int": torch.ones(4, n, dtype=torch.long),
        "f16": torch.randn(4, n, dtype=torch.float16),
    }[inputs]  # fmt: skip

    def check(rep: Any) -> None:
        assert isinstance(rep, B.LayerBoundReport)
        for mr in (rep.router_map, rep.head):
            if mr is not None:
                hi = real(mr.upper, "upper")
                if mr.lower is not None:
                    assert real(mr.lower, "lower") <= hi * (1 + 1e-6), "lower > upper"
        if rep.local is not None:
            hi = real(rep.local.upper, "local upper")
            if rep.local.lower is not None:
                assert real(rep.local.lower, "local lower") <= hi * (1 + 1e-6), (
                    "local lower > upper"
                )
        json.dumps(rep.to_dict())

    kw = {"samples": 4, "iterations": 2, "ascent_steps": 1, "pair_steps": 1, "local_samples": 4}
    attempt(
        "bounds/layer_report", lambda: B.layer_report(a, X, radius=radius, **{**kw, **extra}), check
    )


# ----- function class and complexity --------------------------------------------------------------

ANALYSIS_POINTS = ["ok", "f32", "list", "wrong", "empty", "vector", "nan"]


@settings(max_examples=120)
@given(
    st.sampled_from(["dependence_rank", "analytic_jacobian", "macs_formula", "counted_macs"]),
    st.integers(0, len(BOUND_ADAPTERS) - 1),
    st.sampled_from(ANALYSIS_POINTS),
    st.sampled_from([1e-9, 0.0, -1.0, math.nan, "1e-9", None]),
)
def test_fuzz_analysis(fn: str, i: int, points: str, rtol: Any) -> None:
    from proofs_numeric.complexity import counted_macs_per_token, macs_formula
    from proofs_numeric.function_class import analytic_jacobian, dependence_rank

    a = BOUND_ADAPTERS[i]
    n = a.in_features if isinstance(a, Adapter) else 4
    dt = a.reference.dtype if isinstance(a, Adapter) else F64
    X = {
        "ok": torch.randn(3, n, dtype=F64).to(dt), "f32": torch.randn(3, n),
        "list": [[0.0] * n], "wrong": torch.randn(3, n + 1, dtype=dt),
        "empty": torch.zeros(0, n, dtype=dt), "vector": torch.randn(n, dtype=F64).to(dt),
        "nan": torch.full((3, n), math.nan, dtype=dt),
    }[points]  # fmt: skip

    def call() -> Any:
        if fn == "dependence_rank":
            return dependence_rank(a, X, rtol=rtol)  # type: ignore[arg-type]
        if fn == "analytic_jacobian":
            return analytic_jacobian(a, X)  # type: ignore[arg-type]
        if fn == "macs_formula":
            return macs_formula(a)  # type: ignore[arg-type]
        return counted_macs_per_token(a)  # type: ignore[arg-type]

    def check(out: Any) -> None:
        assert isinstance(a, Adapter)
        if fn == "dependence_rank":
            assert isinstance(X, Tensor) and X.dim() == 2 and X.shape[0] >= 1, f"points {points}"
            assert isinstance(rtol, float) and rtol > 0, f"rtol={rtol!r} accepted"
            s = out.singular_values
            assert all(math.isfinite(v) and v >= 0 for v in s), "singular values"
            assert 0 <= out.rank <= min(a.in_features, len(s)), f"rank {out.rank}"
        elif fn == "analytic_jacobian":
            assert isinstance(X, Tensor) and X.dim() == 2
            assert finite(out).shape == (X.shape[0], a.out_features, a.in_features), "J shape"
        elif fn == "counted_macs":
            assert isinstance(out, int) and out >= 0, f"macs {out!r}"
        else:
            assert out.free_symbols, "a formula without symbols"

    attempt(f"analysis/{fn}", call, check)


# ----- builders and maps -------------------------------------------------------------------------

MAP_ARGS: list[object] = [3, 1, 0, -1, True, 2.0, "3", None, 10**12]


@settings(max_examples=500)
@given(
    st.sampled_from(
        [
            "Dense",
            "BlockDiagonal",
            "Identity",
            "KronIdentity",
            "SoftmaxRouter",
            "HeadLayout",
            "chain",
            "Compose",
            "weighted_heads",
            "build",
            "architecture",
            "build_random",
        ]
    ),
    st.sampled_from(MAP_ARGS),
    st.sampled_from(MAP_ARGS),
    st.sampled_from(["kaiming_uniform", "zeros", "normal", "identity", "orthogonal", None, 3]),
    st.sampled_from([*DTYPES[:6], "float32", torch.int64]),
)
def test_fuzz_builders(fn: str, p: Any, q: Any, init: Any, dtype: Any) -> None:
    def call() -> Any:
        if fn == "Dense":
            return Dense(p, q, init, dtype=dtype)
        if fn == "BlockDiagonal":
            return BlockDiagonal(p, q, 2, init, dtype=dtype)
        if fn == "Identity":
            return Identity(p)
        if fn == "KronIdentity":
            return KronIdentity(Dense(p, p) if isinstance(p, int) and 0 < p < 9 else p, q)
        if fn == "SoftmaxRouter":
            return SoftmaxRouter(Dense(3, 2) if init != 3 else init, top_k=p)
        if fn == "HeadLayout":
            return HeadLayout(p, q)
        if fn == "chain":
            return chain(*([Dense(2, 2)] * 2 if init == "zeros" else [p, q]))
        if fn == "Compose":
            return Compose(Dense(2, 3), Dense(3, 2) if init == "zeros" else p)
        if fn == "weighted_heads":
            return weighted_heads(torch.ones(2, 6), torch.ones(2, 3), p)
        if fn == "build":
            return build(init, in_features=p, out_features=3, rank=q)  # type: ignore[arg-type]
        if fn == "architecture":
            return architecture(init if init != 3 else [init])  # type: ignore[arg-type]
        return build_random(SMALL[0] if init == "zeros" else p, q)

    def check(out: Any) -> None:
        if isinstance(out, torch.nn.Module):
            for name, t in [*out.named_parameters(), *out.named_buffers()]:
                finite(t, name)
                if isinstance(dtype, torch.dtype) and fn in ("Dense", "BlockDiagonal"):
                    assert t.dtype == dtype, f"{name} is {t.dtype}, asked for {dtype}"
            if isinstance(out, Dense | BlockDiagonal | Identity | KronIdentity | Compose):
                assert out.in_features >= 1 and out.out_features >= 1, "empty map"
                assert out.in_features * out.out_features <= MAX_LAYER_PARAMS, "absurd map"
            if isinstance(out, Adapter):
                check_adapter(out)
        elif isinstance(out, HeadLayout):
            assert type(out.num_heads) is int and out.num_heads >= 1, f"num_heads={out.num_heads!r}"
            assert type(out.head_dim) is int and out.head_dim >= 1, f"head_dim={out.head_dim!r}"
        elif isinstance(out, Tensor):
            finite(out)
            assert type(p) is int and p >= 1, f"head_dim={p!r} accepted"

    attempt(f"builder/{fn}", call, check)


def test_tally_covers_every_family() -> None:
    """Run last in the file: the fuzz tests above together made a few thousand calls."""
    total = sum(v for k, v in TALLY.items() if k.endswith("/cases"))
    if total:  # the file ran in full (not a single selected test)
        assert total >= 2000, f"only {total} fuzz cases"
