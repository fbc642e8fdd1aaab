"""One way to pin torch's intra-op threads for a block: `with torch_threads(1): ...`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from moelora_core.validate import require_int


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """`torch.set_num_threads(n)` inside the block (nothing for None), the previous count restored
    afterwards, also when the block raises. n: None or an int >= 1."""
    if n is not None:
        require_int("n", n, minimum=1)
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n is not None:
            torch.set_num_threads(previous)
