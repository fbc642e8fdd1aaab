"""docs/examples/peft_train_and_measure.py runs: Trainer + PEFT for every architecture, save, reload
(identical outputs, asserted in the script), and `moelora bounds` on each saved adapter."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "docs/examples/peft_train_and_measure.py"


@pytest.mark.filterwarnings("ignore")
def test_example_trains_reloads_and_measures_every_arch(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("peft_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(tmp_path, steps=2)
    assert sorted(results) == ["comol", "hydralora", "lora", "moelora", "talklora"]
    for arch, layers in results.items():
        assert len(layers) == 4, arch  # q_proj and v_proj of two layers
        for m in layers.values():
            if arch == "lora":
                assert m["bounds"] is None  # no router
            elif arch == "moelora":  # top-1 routing jumps: no Lipschitz constant
                assert m["bounds"]["upper_centred"] is None and m["routing"]["num_experts"] == 2
            else:
                assert 0 < m["bounds"]["lower"] <= m["bounds"]["upper_centred"]
