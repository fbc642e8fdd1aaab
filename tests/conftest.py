"""Shared test set-up: the Hypothesis profile (default `ci`, derandomised) and the `gpu` skip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from proofs_numeric.profiles import load_profile

load_profile()  # --moelora-profile (the plugin) overrides it


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
