"""Shared test set-up: the Hypothesis profile (default `ci`, derandomised) and the `gpu` skip."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from proofs_numeric.profiles import load_profile

load_profile()  # --moelora-profile (the plugin) overrides it


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Every test runs on one thread: the tensors here are tiny, and a 2-thread pool on a busy
    2-core machine makes each small op wait at an OpenMP barrier (measured: 15 ms per softmax)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT (config, weights, tokenizer) written once per session."""
    from moelora_experiments.tasks import (
        write_tiny_bert,  # transformers: imported only when a test asks
    )

    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny causal LM (`model/`) and 16 instruction records (`train.json`), written once."""
    from moelora_experiments.tasks import write_tiny_causal_lm

    root = tmp_path_factory.mktemp("lm")
    write_tiny_causal_lm(root / "model", hidden=16, layers=1)
    records = [{"instruction": f"{i}+1", "input": "", "output": str(i + 1)} for i in range(16)]
    (root / "train.json").write_text(json.dumps(records), encoding="utf-8")
    return root


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under exactly `-m theorems`, skip test files that never mention the marker.

    Such a file cannot contribute an item, and importing it (transformers, peft, accelerate) would
    cost several seconds of the 60 s budget.
    """
    if (config.option.markexpr or "").strip() != "theorems":
        return None
    if (
        collection_path.is_file()
        and collection_path.suffix == ".py"
        and collection_path.name.startswith("test_")
    ):
        return "theorems" not in collection_path.read_text(encoding="utf-8")
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
