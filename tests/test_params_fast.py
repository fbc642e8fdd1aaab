"""`moelora params`' torch-free formulas against each architecture's own `param_formula` and
`shared_param_formula`, over drawn specs and layer shapes."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from moelora_core.errors import ConfigError
from moelora_core.registry import ARCHITECTURES
from moelora_experiments.inject import AdapterSpec, build_adapter
from moelora_experiments.params_fast import FORMULAS, closed_form


@st.composite
def specs(draw: st.DrawFn, arch: str) -> tuple[AdapterSpec, int, int]:
    E = draw(st.integers(1, 6))
    kw: dict[str, Any] = {
        "arch": arch,
        "targets": ("q_proj",),
        "rank": draw(st.integers(1, 16)),
        "experts": E,
        "expert_rank": draw(st.none() | st.integers(1, 4)),
        "top_k": draw(st.none() | st.integers(1, E)),
        "router": draw(st.sampled_from(["input", "latent"])),
        "core_router": draw(st.booleans()),
        "shared": draw(st.booleans()),
    }
    try:
        spec = AdapterSpec(**kw)
    except ConfigError:
        assume(False)
        raise
    return spec, draw(st.integers(1, 40)), draw(st.integers(1, 40))


@pytest.mark.parametrize("arch", sorted(FORMULAS))
@given(data=st.data())
def test_closed_form_equals_the_architectures_formulas(arch: str, data: st.DataObject) -> None:
    spec, n, m = data.draw(specs(arch))
    adapter = build_adapter(spec, n, m, device="meta")  # no memory: only the formulas are read
    subs = adapter.subs()
    expected = (
        int(adapter.param_formula().subs(subs)),
        int(adapter.shared_param_formula().subs(subs)),
    )
    assert closed_form(spec.to_dict(), n, m) == expected


def test_every_other_architecture_goes_through_the_meta_model() -> None:
    for arch in ARCHITECTURES:
        spec = AdapterSpec(arch=arch, targets=("q_proj",), rank=4, experts=2)
        counts = closed_form(spec.to_dict(), 8, 8)
        assert (counts is not None) == (arch in FORMULAS), arch
    with_options = {**AdapterSpec(arch="lora", targets=("q",)).to_dict(), "options": {"x": 1}}
    assert closed_form(with_options, 8, 8) is None  # options: the architecture decides


def test_meta_device_adapter_has_no_storage() -> None:
    a = build_adapter(AdapterSpec(arch="comol", targets=("q",)), 4096, 4096, device="meta")
    assert all(p.device == torch.device("meta") for p in a.parameters())
