"""Function-class arguments by computation: the dependence rank of an update map.

For a smooth `Δ: R^n -> R^m`, `Δ(x + v) = Δ(x)` for all x iff `J(x) v = 0` for all x. The *dependence
rank* is the rank of the Jacobians stacked over many points, i.e. the dimension of the subspace of inputs
that Δ actually reads. A TalkLoRA (or latent-router MoELoRA, or CoMoL with core routing) of total rank r
reads x only through `A x`, so its dependence rank is <= r. A map whose stacked Jacobians have rank > r
therefore equals no such adapter, for any choice of their parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import jacrev, vmap

from moelora_core.adapter import Adapter
from moelora_core.errors import ShapeError, check_input, input_checks
from moelora_core.validate import require_instance, require_real


def require_points(adapter: object, points: object, name: str = "points") -> None:
    """An Adapter and points (K >= 1, n) of its dtype and device, finite (the adapter's check)."""
    a = require_instance("adapter", adapter, Adapter)
    x = check_input(points, a.in_features, a.reference, name)
    if x.dim() != 2 or x.shape[0] == 0:
        raise ShapeError(
            f"{name}.shape={tuple(x.shape)}: expected (K, {a.in_features}) with K >= 1"
        )


@dataclass(frozen=True)
class DependenceRank:
    rank: int
    singular_values: tuple[float, ...]  # of the stacked Jacobians, descending
    rtol: float

    def gap_after(self, k: int) -> float:
        """σ_{k+1} / σ_1 (0 if there is no (k+1)-th singular value)."""
        s = self.singular_values
        return s[k] / s[0] if len(s) > k and s[0] > 0 else 0.0


def analytic_jacobian(adapter: Adapter, x: torch.Tensor) -> torch.Tensor:
    """J(x) = Σ_i g_i(x) P_i + Σ_i (P_i x) ∇g_i(x)ᵀ,  ∇g(x) = (diag g − g gᵀ) W_eff  (soft routing).

    x: (K, n) -> (K, m, n). `W_eff` is the router's logit map as one matrix (`router_logit_map().dense()`);
    P_i are `expert_matrices()`. Exact for soft routers; a top-k router is piecewise this (with g and
    the softmax Jacobian restricted to the kept experts) away from ties.
    """
    require_points(adapter, x, "x")
    P = adapter.expert_matrices()  # (E, m, n)
    g = adapter.routing(x)
    if g is None:
        return P[0].expand(x.shape[0], *P.shape[1:])
    logit_map = adapter.router_logit_map()
    assert logit_map is not None
    Js = torch.diag_embed(g) - g.unsqueeze(-1) * g.unsqueeze(-2)  # (K, E, E) softmax Jacobian
    grad_g = Js @ logit_map.dense()  # (K, E, n)
    Px = torch.einsum("emn,kn->kem", P, x)  # (K, E, m)
    return torch.einsum("ke,emn->kmn", g, P) + torch.einsum("kem,ken->kmn", Px, grad_g)


def autograd_jacobian(adapter: Adapter, x: torch.Tensor) -> torch.Tensor:
    """J(x) by reverse-mode autodiff through the forward pass, x: (K, n) -> (K, m, n)."""
    with input_checks(False):
        J: torch.Tensor = vmap(jacrev(adapter.delta))(x)
    return J


def dependence_rank(adapter: Adapter, points: torch.Tensor, rtol: float = 1e-9) -> DependenceRank:
    """Rank of [J(x_1); ...; J(x_K)] for points (K, n), singular values > rtol·σ_max (soft routers)."""
    require_points(adapter, points)
    require_real("rtol", rtol, positive=True)
    J = analytic_jacobian(adapter, points).detach().double()  # (K, m, n); svd in float64
    s = torch.linalg.svdvals(J.reshape(-1, J.shape[-1]))
    rank = int((s > rtol * s[0]).sum()) if s[0] > 0 else 0
    return DependenceRank(rank, tuple(float(v) for v in s), rtol)


def output_rank(outputs: torch.Tensor, rtol: float = 1e-9) -> DependenceRank:
    """Dimension of the span of output vectors (..., m): the *output directions* a map reaches.

    An adapter `Δ(x) = Σ_i g_i(x) B_i (...)` has every output in Σ_i col(B_i); CoMoL and a layer-shared
    TalkLoRA have every output (of every layer) in col(B), of dimension <= r. Outputs at many points
    spanning more than r dimensions (singular-value gap) certify that no such adapter produced them."""
    s = torch.linalg.svdvals(outputs.detach().reshape(-1, outputs.shape[-1]))
    rank = int((s > rtol * s[0]).sum()) if s.numel() and s[0] > 0 else 0
    return DependenceRank(rank, tuple(float(v) for v in s), rtol)
