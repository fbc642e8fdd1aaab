"""Hypothesis profiles: `dev` (quick, random), `ci` (derandomised, >= 200 cases), `thorough`.

Select with the environment variable HYPOTHESIS_PROFILE or `--profile` on the command line; the default
is `ci`, so that `pytest -m theorems` is reproducible.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import HealthCheck, Phase, settings

# No `explain` phase: it re-runs variations of a shrunk failure to annotate it, which multiplies the
# cost of every refuted claim by ~15 and adds nothing to the counterexample we print.
_PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
_COMMON = {
    "phases": _PHASES,
    "deadline": None,
    "database": None,
    "print_blob": False,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
}
PROFILES = {
    "dev": {"max_examples": 50, **_COMMON},
    "ci": {"max_examples": 200, "derandomize": True, **_COMMON},
    "thorough": {"max_examples": 2000, **_COMMON},
}
DEFAULT_PROFILE = "ci"

for _name, _kwargs in PROFILES.items():
    settings.register_profile(_name, **_kwargs)  # type: ignore[arg-type]


def load_profile(name: str | None = None) -> str:
    """Load a profile by name (default: $HYPOTHESIS_PROFILE or 'ci'); returns the name loaded."""
    from moelora_core.errors import ConfigError

    chosen = name or os.environ.get("HYPOTHESIS_PROFILE") or DEFAULT_PROFILE
    if chosen not in PROFILES:
        raise ConfigError(f"profile={chosen!r}: expected one of {sorted(PROFILES)}")
    settings.load_profile(chosen)
    return chosen


@contextmanager
def using_profile(name: str | None) -> Iterator[str]:
    """Load a profile inside a block and restore the previous one after it."""
    previous = settings.get_current_profile_name()
    try:
        yield load_profile(name)
    finally:
        settings.load_profile(previous)


# The adversarial phase's budget: a fraction of the random phase's cases (at least `SEARCH_MIN`).
SEARCH_FRACTION = {"dev": 0.3, "ci": 0.3, "thorough": 0.25}
SEARCH_MIN = 8


def search_budget(random_cases: int) -> int:
    """Cases of the adversarial phase of a claim whose random phase ran `random_cases`."""
    from hypothesis import settings as current

    fraction = SEARCH_FRACTION.get(current.get_current_profile_name(), 0.3)
    return max(SEARCH_MIN, math.ceil(fraction * random_cases))
