"""Where `moelora bounds` runs its measurements: the base model's single device, else the CPU."""

from __future__ import annotations

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
