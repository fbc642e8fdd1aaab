"""model_report: every adapted layer of a model, grouped by shape, equal to the per-layer reports."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from moelora_core.errors import ConfigError
from proofs_numeric.bounds import ReportOptions, layer_report, model_report
from proofs_numeric.bounds.instances import build, randomized

D = torch.float64
OPTS = ReportOptions(samples=6, iterations=3, ascent_steps=1, pair_steps=2, local_samples=2)


def _model() -> nn.Module:
    m = nn.Module()
    m.q = randomized(build("talklora", 5, 5, 2, 2), 0, 1.0)
    m.k = randomized(build("talklora", 5, 5, 2, 2), 1, 1.0)
    m.o = randomized(build("comol-core", 5, 3, 3, 1), 2, 1.0)
    m.inner = nn.Sequential(randomized(build("moelora-input", 4, 5, 3, 1), 3, 1.0))
    return m


def test_model_report_equals_the_layer_reports() -> None:
    m = _model()
    X5 = torch.randn(7, 5, generator=torch.Generator().manual_seed(0), dtype=D)
    X4 = torch.randn(7, 4, generator=torch.Generator().manual_seed(1), dtype=D)
    inputs = {"q": X5, "k": X5, "o": X5, "inner.0": X4}
    rep = model_report(m, inputs, radius=0.5, options=OPTS)
    assert list(rep.layers) == ["q", "k", "o", "inner.0"]
    assert [len(g.names) for g in rep.groups] == [2, 1, 1]
    for name, r in rep.layers.items():
        alone = layer_report(m.get_submodule(name), inputs[name], radius=0.5, **OPTS.to_dict())
        assert r.to_dict()["upper"] == alone.to_dict()["upper"]
        assert r.local is not None and alone.local is not None
        assert (r.local.adaptive, r.local.lower, r.lower) == (
            alone.local.adaptive,
            alone.local.lower,
            alone.lower,
        )
    json.dumps(rep.to_dict())
    assert "4 layers in 3 shape groups" in str(rep)


def test_layers_without_inputs_and_bad_names() -> None:
    m = _model()
    rep = model_report({"q": m.q}, None, options=OPTS)  # type: ignore[dict-item]
    assert rep.layers["q"].domain.kind == "unconstrained"
    with pytest.raises(ConfigError, match="no adapted layer"):
        model_report(m, {"nope": torch.zeros(2, 5, dtype=D)}, options=OPTS)
