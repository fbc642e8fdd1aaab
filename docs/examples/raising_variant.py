"""A variant whose own code raises: the verdict is *error*, never *refuted*, and never "as declared".

MoELoRA with an input router, built by a function that refuses E = n with a `ConfigError` (such configs
are redrawn, not errors), and three claims:

* `param_formula` (true): E·r_e·(n + m) + E·n, holds;
* `router_bound_over_e_minus_1`, declared `expect="refuted"`: the bound function divides by E − 1 and
  raises ZeroDivisionError at E = 1. A crash is not a refutation, so the claim is an *error* (with the
  file and line of the division) and does not count as the expected refutation;
* `params_with_undeclared_symbol`: the formula uses K, which no instance gives a value: an error of
  the declaration, not a false formula.

Run: `moelora verify docs/examples/raising_variant.py` (exit code 3: some claim's check raised).
"""

from __future__ import annotations

from moelora_core.adapter import Adapter
from moelora_core.errors import ConfigError
from moelora_core.moelora import MoELoRA, MoELoRAConfig
from proofs_numeric import variants as v


def build(config: MoELoRAConfig) -> MoELoRA:
    """MoELoRA, except that E = n is refused (a ConfigError: the config is redrawn)."""
    if config.num_experts == config.in_features:
        raise ConfigError(f"num_experts={config.num_experts}: expected != in_features")
    return MoELoRA(config)


def router_bound_over_e_minus_1(a: Adapter) -> float:
    """½‖W_g‖₂ · E / (E − 1) (raises at E = 1)."""
    assert a.router is not None
    return 0.5 * a.router.logits.spectral_norm() * a.num_experts / (a.num_experts - 1)


VARIANT = v.Variant(
    "raising",
    build=build,
    config=MoELoRAConfig,
    shapes={
        "in_features": (1, 4),
        "out_features": (1, 4),
        "num_experts": (1, 3),
        "expert_rank": (1, 2),
        "router": "input",
    },
    claims=[
        v.param_formula("E*r_e*(n + m) + E*n"),
        v.lipschitz_bound(
            router_bound_over_e_minus_1,
            name="router_bound_over_e_minus_1",
            expect="refuted",
            max_examples=20,
        ),
        v.param_formula("E*r_e*(n + m) + E*n + K", name="params_with_undeclared_symbol"),
    ],
)
