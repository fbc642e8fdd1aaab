"""The sympy symbols every parameter formula is written in."""

from __future__ import annotations

import sympy as sp

n, m = sp.symbols("n m", positive=True, integer=True)  # in_features, out_features
r = sp.Symbol("r", positive=True, integer=True)  # total rank
r_e = sp.Symbol("r_e", positive=True, integer=True)  # per-expert rank
E = sp.Symbol("E", positive=True, integer=True)  # experts (MoELoRA, HydraLoRA, TalkLoRA)
N = sp.Symbol("N", positive=True, integer=True)  # cores (CoMoL)
L = sp.Symbol("L", positive=True, integer=True)  # layers of one module type

ALL: dict[str, sp.Symbol] = {s.name: s for s in (n, m, r, r_e, E, N, L)}
