"""`Region`: where a search may go (balls around centres, or anywhere), and unit rows."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Region:
    """Where the search may go: the ball B(centres[idx[s]], radius) for start s, or anywhere (None)."""

    centres: Tensor | None  # (C, d)
    idx: Tensor | None  # (S,) long, centre of each start
    radius: float

    def project(self, X: Tensor) -> Tensor:
        if self.centres is None or self.idx is None:
            return X
        c = self.centres[self.idx]
        off = X - c
        norm = torch.linalg.vector_norm(off, dim=-1, keepdim=True)
        shrink = torch.clamp(self.radius / norm.clamp_min(1e-300), max=1.0)
        return c + off * shrink

    def step_scale(self, X: Tensor) -> Tensor:
        """(S, 1) base step length: a fraction of the radius, or of the point's norm if unbounded."""
        if self.centres is not None:
            return torch.full((X.shape[0], 1), 0.5 * self.radius, dtype=X.dtype, device=X.device)
        out: Tensor = 0.25 * torch.linalg.vector_norm(X, dim=-1, keepdim=True).clamp_min(1.0)
        return out

    def take(self, rows: Tensor) -> Region:
        return Region(self.centres, None if self.idx is None else self.idx[rows], self.radius)

    def to(self, dtype: torch.dtype, device: torch.device) -> Region:
        c = None if self.centres is None else self.centres.to(dtype=dtype, device=device)
        i = None if self.idx is None else self.idx.to(device)
        return Region(c, i, self.radius)


def unit(V: Tensor) -> Tensor:
    out: Tensor = V / torch.linalg.vector_norm(V, dim=-1, keepdim=True).clamp_min(1e-300)
    return out


def ball(centre: Tensor | None, radius: float, dim: int, starts: int, dtype: torch.dtype) -> Region:
    """One ball ‖x − centre‖ <= radius (centre 0 when None) for `starts` points."""
    c = torch.zeros(1, dim, dtype=dtype) if centre is None else centre.to(dtype).reshape(1, dim)
    return Region(c, torch.zeros(starts, dtype=torch.long), radius)
