"""Top-k routers are discontinuous: a witness instead of a Lipschitz constant.

With top-k (k < E) the kept set S(x) = indices of the k largest logits changes where the k-th and
(k+1)-th logits tie, and g jumps there: at a tie between a kept expert a and a dropped expert b the
weight g_a = e^{z_a} / Σ_{j∈S} e^{z_j} moves to b. So for every ε > 0 there are x, x' with
‖x − x'‖ < ε and ‖g(x) − g(x')‖ >= c for a c that does not shrink with ε: no finite Lipschitz constant.

Construction (then checked by evaluating the adapter's own routing at both points):
1. take the pair (a, b) with the largest ‖l_a − l_b‖ (rows of the centred logit map Π L);
2. aim at centred logits z* with k − 1 other experts at +1, z_a = z_b = 0 and the rest at −4, and solve
   Π L x0 = Π z* by least squares (exact when rank Π L = E − 1; otherwise the line search still works);
3. on the line x0 + t u, u = (l_a − l_b)/‖l_a − l_b‖, find t_lo < t_hi with different kept sets and
   bisect to the change t*; x = x0 + (t* − ε/4) u and x' = x0 + (t* + ε/4) u, ‖x − x'‖ = ε/2 < ε
   (ε/4 from the tie, far above rounding, so the router's own comparison sees both sides);
4. if that fails (rank Π L < E − 1 can make the aimed-at tie unreachable) or the jump is tiny, repeat
   from a few random starts and keep the largest jump.
If all rows of Π L are equal (E = 1, or L constant along experts) g is constant: no witness.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from moelora_core.adapter import Adapter
from moelora_core.errors import ShapeError, input_checks
from moelora_core.maps import topk_mask
from moelora_core.validate import (
    require_finite,
    require_int,
    require_real,
    require_seed,
    require_tensor,
)

from ..pairwise import farthest_pair
from .domain import require_routed
from .spectral import F64, centring

BISECTIONS = 200


@dataclass(frozen=True)
class TopKWitness:
    """Two inputs closer than `epsilon` whose routing weights differ by `jump`."""

    top_k: int
    epsilon: float
    distance: float  # ‖x − x'‖ < epsilon
    jump: float  # ‖g(x) − g(x')‖₂
    kept: tuple[list[int], list[int]]  # the kept experts at x and at x'
    x: Tensor  # (n,) float64
    x_prime: Tensor  # (n,) float64

    @property
    def ratio(self) -> float:
        """jump / distance: exceeds any proposed Lipschitz constant as ε -> 0."""
        return self.jump / self.distance if self.distance > 0 else float("inf")

    def to_dict(self) -> dict[str, object]:
        return {
            "top_k": self.top_k,
            "epsilon": self.epsilon,
            "distance": self.distance,
            "jump": self.jump,
            "ratio": self.ratio,
            "kept": [list(self.kept[0]), list(self.kept[1])],
            "x_norm": float(torch.linalg.vector_norm(self.x)),
        }


def _kept(L: Tensor, X: Tensor, k: int) -> Tensor:
    """(N, E) bool: the k largest logits of each row (ties to the lowest index, as the router's gate)."""
    return topk_mask(X @ L.T, k)


def _bisect(
    L: Tensor, x0: Tensor, u: Tensor, k: int, eps: float, at_tie: bool
) -> tuple[Tensor, Tensor] | None:
    """Points x0 + t u on both sides of a change of the kept set, closer than eps (or None).

    at_tie: x0 sits on a tie of the pair along u, so bracket it symmetrically first; otherwise (or
    if that fails) walk out from x0 in both directions until the kept set changes.
    """

    def kept(t: float) -> Tensor:
        return _kept(L, (x0 + t * u).unsqueeze(0), k)

    lo = hi = 0.0
    if at_tie:
        h = eps
        for _ in range(40):
            if not torch.equal(kept(-h), kept(h)):
                lo, hi = -h, h
                break
            h *= 2.0
    if lo == hi:
        s0, span = kept(0.0), 1.0
        for _ in range(60):  # grow |t| in both directions until the kept set changes
            for t in (span, -span):
                if not torch.equal(kept(t), s0):
                    lo, hi = 0.0, t
                    break
            if hi != 0.0:
                break
            span *= 2.0
    if lo == hi:
        return None
    s_lo = kept(lo)
    for _ in range(BISECTIONS):
        if abs(hi - lo) < 0.5 * eps:
            break
        mid = 0.5 * (lo + hi)
        if torch.equal(kept(mid), s_lo):
            lo = mid
        else:
            hi = mid
    # step back to eps/4 on each side of the change: bisection leaves one end within rounding of
    # the tie, where torch.topk and the router's own comparison may disagree
    mid, q = 0.5 * (lo + hi), 0.25 * eps
    if torch.equal(kept(mid - q), s_lo) and not torch.equal(kept(mid + q), s_lo):
        lo, hi = mid - q, mid + q
    return x0 + lo * u, x0 + hi * u


def _witness(
    adapter: Adapter, L: Tensor, k: int, epsilon: float, x: Tensor, xp: Tensor
) -> TopKWitness:
    """The pair (x, x') across a change of the kept set, with the adapter's own routing jump."""
    ref = adapter.reference
    with torch.no_grad(), input_checks(False):
        g = adapter.routing(torch.stack([x, xp]).to(dtype=ref.dtype, device=ref.device))
    assert g is not None
    g = g.to(F64).cpu()
    kept = _kept(L, torch.stack([x, xp]), k)
    return TopKWitness(
        top_k=k,
        epsilon=epsilon,
        distance=float(torch.linalg.vector_norm(x - xp)),
        jump=float(torch.linalg.vector_norm(g[0] - g[1])),
        kept=(
            [int(i) for i in kept[0].nonzero().flatten()],
            [int(i) for i in kept[1].nonzero().flatten()],
        ),
        x=x,
        x_prime=xp,
    )


def topk_witness(
    adapter: Adapter, L: Tensor, k: int, epsilon: float, seed: int = 0, starts: int = 4
) -> TopKWitness | None:
    """A discontinuity witness for the top-k router with float64 logit map L (E x n)."""
    adapter = require_routed(adapter)
    require_finite("L", require_tensor("L", L, ndim=2))
    if L.shape != (adapter.num_experts, adapter.in_features) or L.dtype != F64:
        raise ShapeError(
            f"L: shape={tuple(L.shape)}, dtype={L.dtype}; expected ({adapter.num_experts}, "
            f"{adapter.in_features}) float64, the adapter's logit map"
        )
    require_int("k", k, 1, adapter.num_experts)
    require_real("epsilon", epsilon, positive=True)
    require_seed("seed", seed)
    require_int("starts", starts, 0)
    L = L.cpu()
    E, n = L.shape
    PL = centring(E) @ L
    a, b, d2 = farthest_pair(PL)  # ‖l_a − l_b‖² largest, a < b
    scale = max(1.0, float(torch.linalg.vector_norm(PL, dim=1).max()) ** 2)  # max_i ‖l_i‖²
    if E < 2 or k >= E or float(d2[a, b]) <= 1e-24 * scale:
        return None
    u = PL[a] - PL[b]
    u = u / torch.linalg.vector_norm(u)
    others = [j for j in range(E) if j not in (a, b)]
    z = torch.full((E,), -4.0, dtype=F64)
    z[others[: k - 1]] = 1.0
    z[a] = z[b] = 0.0
    x_target = torch.linalg.pinv(PL) @ (centring(E) @ z)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    scale = 1.0 + float(torch.linalg.vector_norm(x_target))
    candidates = [x_target] + [
        scale * torch.randn(n, generator=gen, dtype=F64) / n**0.5 for _ in range(starts)
    ]
    best: TopKWitness | None = None
    for c, x0 in enumerate(candidates):  # a handful of line searches, not a forward-pass loop
        pair = _bisect(L, x0, u, k, epsilon, at_tie=c == 0)
        if pair is None:
            continue
        w = _witness(adapter, L, k, epsilon, *pair)
        if best is None or w.jump > best.jump:
            best = w
        if c == 0 and w.jump >= 1e-3:  # the aimed-at tie worked: no need for the random starts
            break
    return best
