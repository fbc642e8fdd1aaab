"""The claim catalogues: every claim checked by `pytest -m theorems` and `python -m proofs_numeric`,
each beside its refuted twin.

* `core`: SPEC claims 1–2 (TalkLoRA against MoELoRA: identity talking, absorption, nesting, witness);
* `formulas`: SPEC claim 3 (parameter and MAC formulas) and the closed-form Jacobian;
* `reductions`: SPEC claim 4 (exact reductions to LoRA and between mixtures), ΔW(x) x = Δ(x);
* `theta`, `counts`, `classes`: the Θ procedure, the papers' count and function-class claims;
* `bounds`: the bound claims (`BOUND_CLAIMS`, docs/bounds.md);
* `declared`: claims generated for every registered architecture from its declarations (its
  reductions, its gate's Lipschitz status), named `<family>_<claim>` (`DECLARED_CLAIMS`).

`all_claims()` gathers them in that order; `CORE_CLAIMS` is every hand-written catalogue but the bound
claims (some of its twins mutate a declared claim: their `twin_of` names it).
"""

from __future__ import annotations

from typing import Any

from ..checking import Claim
from .bounds import BOUND_CLAIMS
from .classes import CLASS_CLAIMS
from .core import TALK_CLAIMS
from .counts import COUNT_CLAIMS
from .declared import DECLARED_CLAIMS
from .formulas import FORMULA_CLAIMS
from .reductions import REDUCTION_CLAIMS
from .theta import THETA_CLAIMS

CORE_CLAIMS: list[Claim[Any]] = [
    *TALK_CLAIMS,
    *FORMULA_CLAIMS,
    *REDUCTION_CLAIMS,
    *THETA_CLAIMS,
    *COUNT_CLAIMS,
    *CLASS_CLAIMS,
]


def all_claims() -> list[Claim[Any]]:
    """Every registered claim: the core catalogues, the bound claims, then the declared claims."""
    return [*CORE_CLAIMS, *BOUND_CLAIMS, *DECLARED_CLAIMS]


__all__ = ["CORE_CLAIMS", "DECLARED_CLAIMS", "all_claims"]
