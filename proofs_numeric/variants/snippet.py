"""Counterexamples as text that pastes: the drawn values, then a runnable snippet that loads the
variant file through the toolkit's loader (so its classes are the ones `isinstance` checks use),
rebuilds the instance and re-checks the claim (printing the measured `Outcome`)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .base import VariantCase, fmt

if TYPE_CHECKING:
    from .variant import Variant


def config_expression(config: Any, variant: Variant) -> tuple[str, list[str]]:
    """Python that evaluates to `config` after the snippet's imports, and those imports."""
    text, cls = repr(config), type(config)
    head = cls.__qualname__ + "("
    module = variant.module
    if module is not None and getattr(module, cls.__qualname__, None) is cls:
        return ("v.module." + text if text.startswith(head) else text), []
    try:
        if getattr(importlib.import_module(cls.__module__), cls.__qualname__, None) is cls:
            return text, [f"from {cls.__module__} import {cls.__qualname__}"]
    except ImportError:
        pass
    return text, []


def describe_case(variant: Variant, case: VariantCase, claim: str, show_inputs: bool) -> str:
    """A counterexample: config, seeds, tweak, inputs (when small and used), and the snippet."""
    tweak = f", tweak={case.tweak!r}" if case.tweak is not None else ""
    lines = [
        f"{case.config!r}, seed={case.seed}, input_seed={case.input_seed}, batch={case.batch}{tweak}"
    ]
    try:
        _, x = variant.rebuild(case.config, case.seed, case.input_seed, case.batch, case.tweak)
        if show_inputs and x.numel() <= 24 and not (case.tweak and case.tweak.meta):
            steps = case.tweak.steps if case.tweak is not None else 0
            lines.append(f"x = {fmt(x)}" + (f" (before {steps} ascent steps)" if steps else ""))
    except Exception as e:  # describe must never raise: the failure is reported by the claim
        lines.append(f"(building it raises {type(e).__name__}: {e})")
    lines += snippet(variant, case, claim)
    return "\n".join(lines)


def snippet(variant: Variant, case: VariantCase, claim: str) -> list[str]:
    cfg, imports = config_expression(case.config, variant)
    if case.tweak is not None:
        imports.append("from proofs_numeric.variants import Tweak")
    target = variant.origin or variant.source or "<the variant file or module>"
    args = f"seed={case.seed}, input_seed={case.input_seed}, batch={case.batch}"
    if case.tweak is not None:
        args += f", tweak={case.tweak!r}"
    short = claim.split(".", 1)[1] if claim.startswith(variant.name + ".") else claim
    return [
        "rebuild:",
        "    from proofs_numeric.variants import load_variant",
        *(f"    {line}" for line in imports),
        f"    v = load_variant({target!r}, {variant.name!r})",
        f"    config = {cfg}",
        f"    adapter, x = v.rebuild(config, {args})",
        f"    print(v.recheck({short!r}, config, {args}))",
    ]
