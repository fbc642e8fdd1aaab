"""The maps the lower-bound search evaluates, and where it starts.

Maps (row-wise, as the adapter computes them, so the search is independent of the certified side's
dense matrices): x ↦ g(x) (`adapter.routing`), h ↦ g(h) for a latent router (the factors after the
latent map, then the router), x ↦ Δ(x).

Starting points for each domain (see domain.py):
  * unconstrained: pair targets, points with centred logits Π L x = Π z*, z* = 12 on a pair (i, j)
    and 0 elsewhere, where p ≈ (e_i + e_j)/2 and ‖J(p)‖₂ -> ½ (the pairs with the largest
    ‖l_i − l_j‖ first), and Gaussian points with logit spread ~3;
  * points: the inputs themselves, and pairs of distinct inputs for the ratio;
  * balls: the centres, uniform points in the balls, and steps of length R from a centre along a
    pair target's direction (which adds a pair pattern to the logits).
"""

from __future__ import annotations

import torch
from torch import Tensor

from moelora_core.adapter import Adapter
from moelora_core.maps import LinearMap

from ..pairwise import pairwise_sq_distances
from ..search import Fn, Probe, Region, SearchResult, search
from .certified import logit_factors
from .domain import Domain
from .spectral import F64, centring

PAIR_LOGIT = 12.0  # pair-target starts: logits of (i, j) this far above the rest (p_rest ~ e^-12)


def routing_fn(m: Adapter) -> Fn:
    def f(x: Tensor) -> Tensor:
        g = m.routing(x)
        assert g is not None
        return g

    return f


def head_fn(m: Adapter) -> Fn:
    """h ↦ g for a latent router: the factors after the latent map, then the router's softmax."""
    factors = logit_factors(m)
    inner: list[LinearMap] = list(factors[1:-1])
    router = m.router
    assert router is not None

    def f(h: Tensor) -> Tensor:
        z = h
        for fac in inner:  # the 0-2 linear maps between latent and logits, not a loop over data
            z = fac(z)
        out: Tensor = router(z)
        return out

    return f


def delta_fn(m: Adapter) -> Fn:
    def f(x: Tensor) -> Tensor:
        return m.delta(x)

    return f


def pair_targets(M: Tensor, count: int) -> Tensor:
    """Points v with centred logits Π M v = Π z*, z* = PAIR_LOGIT (e_i + e_j), for the `count` pairs
    (i, j) with the largest ‖m_i − m_j‖: there p ≈ (e_i + e_j)/2, where ‖J(p)‖₂ -> ½."""
    E = M.shape[0]
    if E < 2 or count <= 0:
        return torch.zeros(0, M.shape[1], dtype=F64)
    Pi = centring(E)
    PM = Pi @ M
    iu = torch.triu_indices(E, E, 1)
    scores = pairwise_sq_distances(PM)[iu[0], iu[1]]  # ‖m_i − m_j‖² (centred), i < j
    order = torch.argsort(scores, descending=True)[:count]
    Z = torch.zeros(order.numel(), E, dtype=F64)
    rows = torch.arange(order.numel())
    Z[rows, iu[0][order]] = PAIR_LOGIT
    Z[rows, iu[1][order]] = PAIR_LOGIT
    out: Tensor = (Z @ Pi) @ torch.linalg.pinv(PM).T  # (count, in)
    return out


def random_in_balls(
    centres: Tensor, radius: float, count: int, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """`count` uniform points (float64, on the CPU) in balls around random centres, and the centres'
    indices."""
    C, d = centres.shape
    idx = torch.randint(0, C, (count,), generator=gen)
    u = torch.randn(count, d, generator=gen, dtype=F64)
    u = u / torch.linalg.vector_norm(u, dim=-1, keepdim=True).clamp_min(1e-300)
    rad = radius * torch.rand(count, 1, generator=gen, dtype=F64) ** (1.0 / d)
    return centres[idx.to(centres.device)].to(F64).cpu() + rad * u, idx


def starting_points(
    domain: Domain, centres: Tensor | None, M: Tensor, radius: float, samples: int, seed: int
) -> tuple[Tensor, Region, tuple[Tensor, Tensor] | None]:
    """Starting points, the region, and (for 'points') pairs of given inputs. Points and balls keep
    the centres' dtype (no copy of the inputs); unconstrained starts are float64."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    d = M.shape[1]
    targets = pair_targets(M, max(1, samples // 2))
    if domain.kind == "unconstrained":
        spread = 3.0 / max(float(torch.linalg.matrix_norm(M, ord=2)), 1e-12)
        rnd = spread * torch.randn(samples, d, generator=gen, dtype=F64)
        return torch.cat([targets, rnd]), Region(None, None, 0.0), None
    assert centres is not None
    C = centres.detach()
    N = C.shape[0]
    if domain.kind == "points":
        perm = torch.randperm(N, generator=gen).to(C.device)
        keep = (perm != torch.arange(N, device=C.device)).nonzero().flatten()[: 4 * samples]
        return C, Region(None, None, 0.0), (C[keep], C[perm[keep]])
    rnd, ridx = random_in_balls(C, radius, samples, gen)
    parts, idx = [C, rnd.to(C)], [torch.arange(N), ridx]
    if targets.shape[0] > 0 and radius > 0:
        tidx = torch.randint(0, N, (targets.shape[0],), generator=gen)
        unit = targets / torch.linalg.vector_norm(targets, dim=-1, keepdim=True).clamp_min(1e-300)
        parts.append(C[tidx.to(C.device)] + (radius * unit).to(C))
        idx.append(tidx)
    return torch.cat(parts), Region(C, torch.cat(idx).to(C.device), radius), None


def run_search(
    f: Fn,
    f64: Fn,
    domain: Domain,
    centres: Tensor | None,
    M: Tensor,
    radius: float,
    dtype: torch.dtype,
    device: torch.device,
    *,
    samples: int,
    iterations: int,
    ascent: int,
    pairs: int,
    seed: int,
) -> SearchResult:
    starts, region, extra = starting_points(domain, centres, M, radius, samples, seed)
    moves = domain.kind != "points"
    return search(
        Probe(f, batched=True),
        Probe(f64, batched=True),
        starts.to(dtype=dtype, device=device),
        region.to(dtype, device),
        iterations=iterations,
        ascent=ascent if moves else 0,
        pair_steps=pairs if moves else 0,
        keep=samples,
        seed=seed,
        extra_pairs=None if extra is None else (extra[0].to(device), extra[1].to(device)),
    )
