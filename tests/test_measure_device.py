"""Where `moelora bounds` runs its measurements: the base model's single device, else the CPU."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from moelora_core import TalkLoRA, TalkLoRAConfig
from moelora_experiments.bounds_cmd import _measure_device
from moelora_experiments.loading import Placement
from moelora_experiments.measure import measure_layer, measure_model


def test_measure_device_follows_the_placement() -> None:
    assert _measure_device(None) == torch.device("cpu")
    assert _measure_device(Placement(device="cpu", dtype="float32")) == torch.device("cpu")
    mapped = Placement(device="cpu", dtype="float32", device_map="auto")
    assert _measure_device(mapped) == torch.device("cpu")
    # a single accelerator: the measurements follow it; a device map over several: the CPU
    one = SimpleNamespace(device_map=None, torch_device=torch.device("cuda", 1))
    assert _measure_device(one) == torch.device("cuda", 1)  # type: ignore[arg-type]
    many = SimpleNamespace(device_map="auto", torch_device=torch.device("cuda", 1))
    assert _measure_device(many) == torch.device("cpu")  # type: ignore[arg-type]


def test_measure_model_on_a_device_equals_the_per_layer_calls() -> None:
    torch.manual_seed(0)
    a = TalkLoRA(TalkLoRAConfig(in_features=8, out_features=6, rank=4, num_experts=2))
    with torch.no_grad():
        a.B.weight.normal_(0, 0.1)
    X = torch.randn(5, 8, dtype=torch.float64)

    class Layer:
        adapter = a

    got = measure_model({"l0": X}, {"l0": Layer()}, device="cpu")["l0"]
    ref = measure_layer(a, X)
    assert got["bounds"]["upper"] == ref["bounds"]["upper"]
    assert got["bounds"]["local"]["upper"] == ref["bounds"]["local"]["upper"]
    assert got["amplification"] == ref["amplification"]
