"""pytest plugin (entry point `moelora_verify`): the Hypothesis profile option for claim checks.

`pytest --moelora-profile thorough` selects the profile used by `check_claim` (default: $HYPOTHESIS_PROFILE
or `ci`).
"""

from __future__ import annotations

import pytest

from .profiles import PROFILES, load_profile


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("moelora-verify")
    group.addoption(
        "--moelora-profile",
        default=None,
        choices=sorted(PROFILES),
        help="Hypothesis profile for claim checks: dev, ci (default, derandomised) or thorough.",
    )


def pytest_configure(config: pytest.Config) -> None:
    profile = config.getoption("--moelora-profile", default=None)
    if profile is not None:
        load_profile(profile)
