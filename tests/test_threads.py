"""torch_threads pins the thread count inside the block and restores it, also on error."""

from __future__ import annotations

import pytest
import torch

from moelora_core.errors import ConfigError
from proofs_numeric.threads import torch_threads


def test_pins_and_restores() -> None:
    before = torch.get_num_threads()
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(3):
        assert torch.get_num_threads() == 3
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_refuses_bad_counts(bad: object) -> None:
    with pytest.raises(ConfigError, match="n="), torch_threads(bad):  # type: ignore[arg-type]
        pass
