"""`layer_report`: the public API, its JSON form and readable text, domains, and bad input."""

from __future__ import annotations

import json

import pytest
import torch

from moelora_core.errors import (
    ConfigError,
    DTypeDeviceError,
    NonFiniteError,
    ShapeError,
    input_checks,
)
from moelora_core.lora import LoRA, LoRAConfig
from moelora_core.talklora import TalkLoRA, TalkLoRAConfig
from proofs_numeric.bounds import LayerBoundReport, NoRouterError, layer_report
from proofs_numeric.bounds.instances import build, randomized

D = torch.float64
GEN = torch.Generator().manual_seed(0)


def _talk(dtype: torch.dtype = D) -> TalkLoRA:
    t = TalkLoRA(TalkLoRAConfig(in_features=8, out_features=6, rank=8, num_experts=4), dtype=dtype)
    return t.randomize_(3)


@pytest.mark.parametrize("radius", [None, 0.5])
@pytest.mark.parametrize("given", [False, True])
def test_report_fields_and_json(given: bool, radius: float | None) -> None:
    t = _talk()
    X = torch.randn(5, 8, generator=GEN, dtype=D) if given else None
    rep = layer_report(t, X, radius=radius, samples=8)
    assert isinstance(rep, LayerBoundReport)
    kind = (
        ("points" if radius is None else "ball")
        if given
        else ("unconstrained" if radius is None else "ball")
    )
    assert rep.domain.kind == kind
    assert rep.arch == "talklora[latent]" and rep.router == "latent" and rep.num_experts == 4
    assert rep.upper is not None and rep.lower is not None and rep.gap_ratio is not None
    assert rep.upper_centred <= rep.upper_effective <= rep.upper_product  # type: ignore[operator]
    assert 0 < rep.lower <= rep.upper
    assert rep.talk is not None and len(rep.talk.attenuation) == 4
    assert rep.talk_head_lower is not None and len(rep.talk_head_lower) == 4
    assert rep.head is not None and rep.head.lower is not None
    assert set(rep.norms) == {"A", "T", "W_r", "L", "ΠL"}
    assert (rep.local is not None) == (given or radius is not None)
    d = rep.to_dict()
    text = json.dumps(d)
    assert json.loads(text)["upper"] == rep.upper and d["domain"]["kind"] == kind
    s = str(rep)
    assert "router Lip(g) <=" in s and "talk: ‖T‖₂" in s and rep.dtype in s


def test_float32_adapter_reports_float64_values() -> None:
    t32 = _talk(torch.float32)
    X = torch.randn(16, 8, generator=GEN)
    rep = layer_report(t32, X, radius=0.2, samples=8)
    t64 = _talk(D)
    rep64 = layer_report(t64, X.to(D), radius=0.2, samples=8)
    assert rep.dtype == "float32"
    assert rep.upper == pytest.approx(rep64.upper, rel=1e-6)
    assert rep.lower is not None and rep.lower <= rep.upper  # type: ignore[operator]
    assert rep.local is not None and rep.local.lower <= rep.local.adaptive  # type: ignore[operator]
    assert t32.A.weight.dtype == torch.float32  # the adapter itself is left alone


def test_report_is_reproducible_and_leaves_the_adapter_alone() -> None:
    t = _talk()
    before = {k: v.clone() for k, v in t.state_dict().items()}
    threads = torch.get_num_threads()
    a, b = layer_report(t, seed=3, samples=8), layer_report(t, seed=3, samples=8, threads=1)
    assert torch.get_num_threads() == threads  # restored
    assert a.lower == pytest.approx(b.lower, rel=1e-12) and a.upper == b.upper
    assert all(torch.equal(before[k], v) for k, v in t.state_dict().items())
    assert all(p.requires_grad for p in t.parameters())


def test_every_routed_architecture() -> None:
    for arch in ("moelora-input", "moelora-latent", "hydralora", "comol-core", "comol-input"):
        a = randomized(build(arch, 6, 4, 3, 2), 1, 1.0)  # type: ignore[arg-type]
        rep = layer_report(
            a, torch.randn(4, 6, generator=GEN, dtype=D), radius=0.3, samples=4, ascent_steps=1
        )
        assert rep.lower is not None and rep.upper is not None and rep.lower <= rep.upper
        assert (rep.head is not None) == rep.router.startswith("latent")
        assert rep.local is not None and rep.local.lower is not None


def test_bad_input() -> None:
    t = _talk()
    with pytest.raises(NoRouterError, match="no router"):
        layer_report(LoRA(LoRAConfig(in_features=4, out_features=4, rank=2)))
    with pytest.raises(ConfigError, match="Adapter"):
        layer_report(torch.nn.Linear(3, 3))  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match=r"inputs\.shape"):
        layer_report(t, torch.randn(3, 7, dtype=D))
    with pytest.raises(ShapeError, match=r"torch\.Tensor"):
        layer_report(t, [[0.0] * 8])  # type: ignore[arg-type]
    with pytest.raises(DTypeDeviceError, match="dtype"):
        layer_report(t, torch.randn(3, 8))
    bad = torch.randn(3, 8, dtype=D)
    bad[1, 2] = float("inf")
    with pytest.raises(NonFiniteError, match="non-finite"):
        layer_report(t, bad)
    with input_checks(False), pytest.raises(NonFiniteError):  # checked even with checks off
        layer_report(t, bad)
    for r in (-1.0, float("nan"), "1"):
        with pytest.raises(ConfigError, match="radius"):
            layer_report(t, radius=r)  # type: ignore[arg-type]
    for k, v in (
        ("samples", 0),
        ("iterations", 1.5),
        ("epsilon", 0.0),
        ("seed", -1),
        ("threads", 0),
    ):
        with pytest.raises(ConfigError, match=k):
            layer_report(t, **{k: v})  # type: ignore[arg-type]
    with torch.no_grad():
        t.T.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"T\.weight"):
        layer_report(t)


def test_options_are_one_validated_value() -> None:
    from moelora_core.errors import ArgumentTypeError
    from proofs_numeric.bounds import ReportOptions, report_layer

    t = _talk()
    opts = ReportOptions(seed=3, samples=8, iterations=2, local=False)
    a, b = report_layer(t, radius=0.5, options=opts), layer_report(t, radius=0.5, **opts.to_dict())
    assert a.to_dict()["upper"] == b.to_dict()["upper"] and a.lower == b.lower and a.local is None
    with pytest.raises(ArgumentTypeError, match="options"):
        report_layer(t, options={"samples": 8})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="local_samples"):
        ReportOptions(local_samples=0)
    with pytest.raises(ArgumentTypeError, match="local"):
        ReportOptions(local=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ReportOptions(0)  # type: ignore[misc]  # keyword-only
