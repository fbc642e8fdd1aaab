"""Shared test set-up: the Hypothesis profile (default `ci`, derandomised) and the `gpu` skip."""

from __future__ import annotations

import pytest
import torch

from proofs_numeric.profiles import load_profile

load_profile()  # --moelora-profile (the plugin) overrides it


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
