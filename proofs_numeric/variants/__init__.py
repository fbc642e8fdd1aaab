"""Verify a user-defined MoE-LoRA variant: write it once, state what you believe, let the toolkit try to
break each statement (`moelora verify`, the pytest plugin; guide: docs/variants.md).

A variant file subclasses `moelora_core.adapter.Adapter` and declares at module level

    VARIANT = Variant("adamole", build=AdaMoLE, shapes={"in_features": (1, 8), ...}, claims=[
        reduces_to("lora", embed=to_lora, shapes={"num_experts": 1}),
        param_formula("E*r_e*(n + m) + E*n + n + 1"),
        complexity("r*(n + m) + r**2", theta="r*(n + m)", assume="r <= n"),
        lipschitz_bound(half_router_norm, of="probabilities"),
        property("weights_sum_to_one", lambda a, x: (a.routing(x).sum(-1) - 1).abs().max()),
    ])

Each declaration becomes a `checking.Claim` over drawn instances (config, parameter seed, input seed,
batch shape), checked by `check_claim`: a random phase, then an adversarial phase (`search`) that
redraws parameters and inputs with structure and climbs differentiable margins. Verdicts: holds,
refuted (a counterexample that pastes), or error (the variant's code or declaration raised).

Modules: `base` (shared types), `shapes` (config strategies), `search` (the adversarial phase),
`variant` (`Variant`), `snippet` (counterexample text), `reductions`, `formulas`, `lipschitz`,
`bounds`, `properties` (the declarations), `loading`, `running`.
"""

from __future__ import annotations

from ..checking import ClaimError, Outcome
from .base import Declaration, VariantCase, VariantError, is_variant_file
from .bounds import LIPSCHITZ_RTOL, lipschitz_bound
from .formulas import complexity, mac_formula, param_formula
from .lipschitz import LipschitzWitness, bounds_search, empirical_lipschitz
from .loading import load_module, load_variant, load_variants
from .properties import satisfies
from .reductions import embeds, reduces_to
from .running import VariantReport, check_variant_claim, format_report, run_variant
from .search import STRUCTURES, Tweak
from .variant import Variant

property = satisfies  # the documented name of the declaration (shadows the builtin here only)

__all__ = [
    "LIPSCHITZ_RTOL",
    "STRUCTURES",
    "ClaimError",
    "Declaration",
    "LipschitzWitness",
    "Outcome",
    "Tweak",
    "Variant",
    "VariantCase",
    "VariantError",
    "VariantReport",
    "bounds_search",
    "check_variant_claim",
    "complexity",
    "embeds",
    "empirical_lipschitz",
    "format_report",
    "is_variant_file",
    "lipschitz_bound",
    "load_module",
    "load_variant",
    "load_variants",
    "mac_formula",
    "param_formula",
    "reduces_to",
    "run_variant",
    "satisfies",
]
