"""`ReportOptions`: how hard `layer_report` searches, validated once (keyword-only, frozen).

    opts = ReportOptions(seed=0, samples=64, iterations=8, ascent_steps=6, pair_steps=6)
    rep = report_layer(adapter, inputs, radius=0.5, options=opts)   # same as layer_report(..., **fields)

samples: random / pair-target starts, and how many of the best points get gradient ascent and pair
search; iterations: power iterations per point; ascent_steps / pair_steps: gradient steps of the
Jacobian ascent and of the adversarial pairs (0: none); local: also the local bound on Δ;
local_samples: points of its search; epsilon: the distance of a top-k discontinuity witness; threads:
torch's intra-op threads for the duration of the report (None: unchanged; 1 avoids OpenMP barrier
stalls when other processes hold the cores).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from moelora_core.validate import require_bool, require_int, require_real, require_seed

from .domain import require_count


@dataclass(frozen=True, kw_only=True)
class ReportOptions:
    """The search budget and switches of one layer report (every field checked in __post_init__)."""

    seed: int = 0
    samples: int = 64
    iterations: int = 8
    ascent_steps: int = 6
    pair_steps: int = 6
    local: bool = True
    local_samples: int = 32
    epsilon: float = 1e-6
    threads: int | None = None

    def __post_init__(self) -> None:
        require_bool("local", self.local)
        require_count("samples", self.samples)
        require_count("iterations", self.iterations)
        require_count("ascent_steps", self.ascent_steps, 0)
        require_count("pair_steps", self.pair_steps, 0)
        require_count("local_samples", self.local_samples)
        require_seed("seed", self.seed)
        require_real("epsilon", self.epsilon, positive=True)
        if self.threads is not None:
            require_int("threads", self.threads, minimum=1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
