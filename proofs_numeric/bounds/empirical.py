"""Empirical lower bounds on a Lipschitz constant: the largest Jacobian norm and the largest
finite-difference ratio found over a domain.

For a differentiable f and any v ≠ 0, ‖J_f(x) v‖/‖v‖ <= ‖J_f(x)‖₂ <= Lip(f near x), and for any pair
‖f(x) − f(x')‖ / ‖x − x'‖ <= Lip(f on the segment). So every number found here is a lower bound on the
Lipschitz constant (up to rounding) however the search went; the search only decides how high it gets.

Vectorisation. A `Probe` evaluates f, J_f v (jvp) and J_fᵀ u (vjp) at many points at once, either with
torch.func.vmap over a one-point function, or, for a row-wise map (every adapter and router maps each
row of an (N, n) batch on its own), by one jvp / vjp of the batched function with one tangent per row:
the Jacobian of a row-wise map is block diagonal, so both give the same per-point products (tested).
The report uses the batched form: it is about twice as fast (vmap's per-op overhead) and needs only
torch.autograd.

Stages, all vectorised over the points:
1. screening: v = J_fᵀ u for a random u, score ‖J_f v‖/‖v‖ at every point;
2. at the best `keep` points, power iteration on J_fᵀ J_f: v <- J_fᵀ J_f v / ‖·‖, σ = ‖J_f v‖; for a
   small output (k <= EXACT_OUT, e.g. routing weights) the full Jacobian from k vjps and its exact
   σ_max instead (a lower bound too, and the best one at that point);
3. gradient ascent on the inputs: x <- x + η ∇_x ‖J_f(x) v‖ / ‖∇‖ with v the current top right
   singular vector (Danskin: the gradient of σ_max where it is simple), projected onto the domain,
   v refreshed by power steps after each move;
4. adversarial pairs (x − δ/2, x + δ/2) started at the best points along v, both ends moved by
   gradient ascent on ‖f(x) − f(x')‖ / ‖x − x'‖ inside the domain.

The search runs in the adapter's dtype; the reported numbers are re-evaluated in float64 (one jvp per
point with the found unit v, and the pair ratios), so a float32 search still reports float64 values.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch.func import grad, jacrev, jvp, vjp, vmap

from .spectral import F64

Fn = Callable[[Tensor], Tensor]
MIN_SEPARATION = 1e-7  # pairs closer than this (relative to 1 + ‖x‖) are not scored
EXACT_OUT = 64  # output dims up to this: full Jacobian by k vjps instead of power iteration


_FORWARD_AD_READY = False


def _prepare_forward_ad() -> None:
    """torch scripts its forward-AD decompositions on first use, with a DeprecationWarning about
    torch.jit.script that says nothing about this code: load them once, quietly."""
    global _FORWARD_AD_READY
    if not _FORWARD_AD_READY:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*")
            importlib.import_module("torch._decomp.decompositions_for_jvp")
        _FORWARD_AD_READY = True


class Probe:
    """f at many points: `batched=True` for a row-wise (N, d) -> (N, k) map, else a one-point
    (d,) -> (k,) map that is vmapped (torch.func).

    The batched form uses torch.autograd only: vjp by reverse mode, jvp by forward mode
    (torch.autograd.forward_ad), full Jacobians by batched reverse passes, and ∇_x ‖J v‖ by the
    double-backward identity J v = ∂/∂u ⟨J_fᵀ u, v⟩ differentiated once more in x (forward mode cannot
    be reversed through softmax). It avoids torch.func, whose first use imports torch._dynamo
    (seconds of start-up). Both forms agree to rounding (tested).
    """

    def __init__(self, f: Fn, batched: bool) -> None:
        _prepare_forward_ad()
        self.f, self.batched = f, batched

    def value(self, X: Tensor) -> Tensor:
        out: Tensor = self.f(X) if self.batched else vmap(self.f)(X)
        return out

    def _leaf(self, X: Tensor) -> tuple[Tensor, Tensor]:
        X_ = X.detach().requires_grad_(True)
        return X_, self.f(X_)

    def jvp(self, X: Tensor, V: Tensor) -> Tensor:
        """Rows J_f(x_k) v_k."""
        if self.batched:
            with fwAD.dual_level():
                out = self.f(fwAD.make_dual(X.detach(), V.detach()))
                tangent = fwAD.unpack_dual(out).tangent
            return torch.zeros_like(out) if tangent is None else tangent.detach()
        f = self.f
        return vmap(lambda x, v: jvp(f, (x,), (v,))[1])(X, V)  # type: ignore[no-any-return]

    def vjp(self, X: Tensor, U: Tensor) -> Tensor:
        """Rows J_f(x_k)ᵀ u_k."""
        if self.batched:
            with torch.enable_grad():
                X_, y = self._leaf(X)
                (g,) = torch.autograd.grad(y, X_, U, allow_unused=True)
            return torch.zeros_like(X) if g is None else g.detach()
        f = self.f
        return vmap(lambda x, u: vjp(f, x)[1](u)[0])(X, U)  # type: ignore[no-any-return]

    def jacobians(self, X: Tensor) -> Tensor:
        """Full Jacobians (N, k, d) (for a small output dimension k)."""
        if not self.batched:
            return vmap(jacrev(self.f))(X)  # type: ignore[no-any-return]
        with torch.enable_grad():
            X_, y = self._leaf(X)
            N, k = y.shape
            eye = torch.eye(k, dtype=y.dtype, device=y.device)
            cot = eye.unsqueeze(1).expand(k, N, k)  # cot[i] = e_i on every row
            res = torch.autograd.grad(y, X_, cot, is_grads_batched=True, allow_unused=True)
        rows: Tensor | None = res[0]  # None when f does not depend on x
        if rows is None:
            return torch.zeros(N, k, X.shape[-1], dtype=X.dtype, device=X.device)
        return rows.detach().transpose(0, 1)  # (N, k, d)

    def sigma_grad(self, X: Tensor, V: Tensor) -> Tensor:
        """Rows ∇_x ‖J_f(x_k) v_k‖ (v_k held fixed)."""
        f = self.f
        if self.batched:
            with torch.enable_grad():
                X_, y = self._leaf(X)
                u = torch.zeros_like(y, requires_grad=True)
                (g,) = torch.autograd.grad(y, X_, u, create_graph=True)  # Jᵀu, linear in u
                (jv,) = torch.autograd.grad(g, u, V, create_graph=True)  # J v
                total = torch.linalg.vector_norm(jv, dim=-1).sum()
                (gx,) = torch.autograd.grad(total, X_, allow_unused=True)
            return torch.zeros_like(X) if gx is None else gx.detach()

        def one(x: Tensor, v: Tensor) -> Tensor:
            out: Tensor = torch.linalg.vector_norm(jvp(f, (x,), (v,))[1])
            return out

        return vmap(grad(one))(X, V)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Region:
    """Where the search may go: the ball B(centres[idx[s]], radius) for start s, or anywhere (None)."""

    centres: Tensor | None  # (C, d)
    idx: Tensor | None  # (S,) long, centre of each start
    radius: float

    def project(self, X: Tensor) -> Tensor:
        if self.centres is None or self.idx is None:
            return X
        c = self.centres[self.idx]
        off = X - c
        norm = torch.linalg.vector_norm(off, dim=-1, keepdim=True)
        shrink = torch.clamp(self.radius / norm.clamp_min(1e-300), max=1.0)
        return c + off * shrink

    def step_scale(self, X: Tensor) -> Tensor:
        """(S, 1) base step length: a fraction of the radius, or of the point's norm if unbounded."""
        if self.centres is not None:
            return torch.full((X.shape[0], 1), 0.5 * self.radius, dtype=X.dtype, device=X.device)
        out: Tensor = 0.25 * torch.linalg.vector_norm(X, dim=-1, keepdim=True).clamp_min(1.0)
        return out

    def take(self, rows: Tensor) -> Region:
        return Region(self.centres, None if self.idx is None else self.idx[rows], self.radius)

    def to(self, dtype: torch.dtype, device: torch.device) -> Region:
        c = None if self.centres is None else self.centres.to(dtype=dtype, device=device)
        i = None if self.idx is None else self.idx.to(device)
        return Region(c, i, self.radius)


def unit(V: Tensor) -> Tensor:
    out: Tensor = V / torch.linalg.vector_norm(V, dim=-1, keepdim=True).clamp_min(1e-300)
    return out


def _masked(V: Tensor, mask: Tensor | None) -> Tensor:
    return V if mask is None else V * mask


def screen(
    p: Probe, X: Tensor, *, mask: Tensor | None = None, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """One vjp and one jvp per point: v = J_fᵀ u (u random), score ‖J_f v‖ for unit v; (σ, v)."""
    k = p.value(X[:1]).shape[-1]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    U = torch.randn(X.shape[0], k, generator=gen, dtype=F64).to(dtype=X.dtype, device=X.device)
    V = _masked(p.vjp(X, U), mask)
    zero = torch.linalg.vector_norm(V, dim=-1) == 0  # e.g. J = 0: any direction will do
    if bool(zero.any()):
        R = torch.randn(X.shape, generator=gen, dtype=F64).to(dtype=X.dtype, device=X.device)
        V = torch.where(zero.unsqueeze(-1), _masked(R, mask), V)
    V = unit(V)
    return torch.linalg.vector_norm(p.jvp(X, V), dim=-1), V


def power(
    p: Probe, X: Tensor, V: Tensor, iterations: int, *, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Power iteration on J_fᵀ J_f from unit V; returns (‖J_f v‖ (N,), unit v (N, d))."""
    for _ in range(iterations):
        W = _masked(p.vjp(X, p.jvp(X, V)), mask)
        nz = torch.linalg.vector_norm(W, dim=-1, keepdim=True) > 0
        V = torch.where(nz, unit(W), V)
    return torch.linalg.vector_norm(p.jvp(X, V), dim=-1), V


def jacobian_power(
    p: Probe, X: Tensor, iterations: int, *, mask: Tensor | None = None, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Screening start then `iterations` power steps at every row of X; (σ (N,), unit v (N, d))."""
    _, V = screen(p, X, mask=mask, seed=seed)
    return power(p, X, V, iterations, mask=mask)


def jacobians(p: Probe, X: Tensor) -> Tensor:
    """Full Jacobians (N, k, d): one forward, then the pullback vmapped over the k unit cotangents."""
    return p.jacobians(X)


def top_singular(J: Tensor) -> tuple[Tensor, Tensor]:
    """σ_max of each J (N, k, d) and its unit top right singular vector, via the k x k Gram in
    float64 (rows with non-finite entries score 0: an overflowed point proves nothing)."""
    J64 = J.to(F64)
    G = J64 @ J64.transpose(-1, -2)  # (N, k, k): non-finite iff J is (or its Gram overflows)
    ok = torch.isfinite(G).flatten(1).all(dim=1)  # (N,)
    w, U = torch.linalg.eigh(torch.where(ok[:, None, None], G, torch.zeros_like(G)))
    s = w[..., -1].clamp_min(0).sqrt()
    v = (U[..., -1].unsqueeze(-2) @ J64).squeeze(-2)  # (N, d): u_topᵀ J = σ vᵀ
    v = torch.where(ok[:, None], v, torch.zeros_like(v))
    return s.to(J.dtype), unit(v).to(J.dtype)


def exact_small(p: Probe, X: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(σ_max, unit top right singular vector) per point from the full Jacobian (k <= EXACT_OUT);
    `mask` (N, d) or (d,) keeps only those input coordinates (the restricted Jacobian)."""
    J = jacobians(p, X)
    if mask is not None:
        J = J * mask.unsqueeze(-2)
    return top_singular(J)


def out_dim(p: Probe, X: Tensor) -> int:
    return int(p.value(X[:1]).shape[-1])


def jacobian_at(p: Probe, X: Tensor, V: Tensor) -> Tensor:
    """‖J_f(x_k) v_k‖ / ‖v_k‖ (one jvp), (N,)."""
    out: Tensor = torch.linalg.vector_norm(p.jvp(X, unit(V)), dim=-1)
    return out


def ascend_jacobian(
    p: Probe, X: Tensor, V: Tensor, region: Region, steps: int, *, mask: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradient ascent of ‖J_f(x) v‖ over x in the region; the best (σ, x, v) per start."""
    small = out_dim(p, X) <= EXACT_OUT
    best_s, best_x, best_v = jacobian_at(p, X, V), X.clone(), V.clone()
    for t in range(steps):
        g = p.sigma_grad(X, V)
        eta = region.step_scale(X) * (0.7**t)
        X = region.project(X + eta * unit(g))
        s, V = exact_small(p, X, mask) if small else power(p, X, V, 2, mask=mask)
        better = s > best_s
        best_s = torch.where(better, s, best_s)
        best_x = torch.where(better.unsqueeze(-1), X, best_x)
        best_v = torch.where(better.unsqueeze(-1), V, best_v)
    return best_s, best_x, best_v


def pair_ratio(p: Probe, A: Tensor, B: Tensor) -> Tensor:
    """‖f(a) − f(b)‖ / ‖a − b‖ per row; rows closer than MIN_SEPARATION give 0."""
    d = torch.linalg.vector_norm(A - B, dim=-1)
    num = torch.linalg.vector_norm(p.value(A) - p.value(B), dim=-1)
    scale = 1.0 + torch.linalg.vector_norm(A, dim=-1)
    ok = d > MIN_SEPARATION * scale
    return torch.where(ok, num / d.clamp_min(1e-300), torch.zeros_like(d))


def ascend_pairs(
    p: Probe, X: Tensor, V: Tensor, region: Region, steps: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Adversarial pairs from (x − δ/2, x + δ/2), δ ∥ v; the best (ratio, a, b) per start."""
    half = 0.05 * region.step_scale(X) * unit(V)
    A = region.project(X - half).detach()
    B = region.project(A + 2 * half).detach()
    best_r = pair_ratio(p, A, B).detach()
    best_a, best_b = A.clone(), B.clone()
    for t in range(steps):
        A_ = A.detach().requires_grad_(True)
        B_ = B.detach().requires_grad_(True)
        with torch.enable_grad():
            r = pair_ratio(p, A_, B_)
            ga, gb = torch.autograd.grad(r.sum(), (A_, B_))
        eta = 0.1 * region.step_scale(X) * (0.7**t)
        A = region.project(A.detach() + eta * unit(ga))
        B = region.project(B.detach() + eta * unit(gb))
        r = pair_ratio(p, A, B).detach()
        better = r > best_r
        best_r = torch.where(better, r, best_r)
        best_a = torch.where(better.unsqueeze(-1), A, best_a)
        best_b = torch.where(better.unsqueeze(-1), B, best_b)
    return best_r, best_a, best_b


@dataclass(frozen=True)
class SearchResult:
    """Float64 re-evaluated lower bounds: max Jacobian norm and max pair ratio over the domain."""

    jacobian: float
    pairs: float
    best_point: Tensor  # (d,) float64, where the Jacobian norm was largest
    best_direction: Tensor  # (d,) unit
    points: int  # points screened
    refined: int  # points that got power iteration (and ascent, pairs)
    iterations: int  # power iterations (0 when the Jacobian was formed exactly)
    ascent_steps: int
    pair_steps: int

    @property
    def value(self) -> float:
        return max(self.jacobian, self.pairs)


def search(
    p: Probe,
    p64: Probe,
    starts: Tensor,
    region: Region,
    *,
    iterations: int,
    ascent: int,
    pair_steps: int,
    keep: int,
    mask: Tensor | None = None,
    seed: int = 0,
    extra_pairs: tuple[Tensor, Tensor] | None = None,
) -> SearchResult:
    """Screen every start, refine the `keep` best (power iteration, ascent, pairs), re-evaluate the
    winners in float64 with `p64` (the same map in float64). `extra_pairs` (A, B) are pairs already
    in the domain (e.g. pairs of given inputs), scored as they are."""
    X = region.project(starts)
    score, V = screen(p, X, mask=mask, seed=seed)
    k = min(keep, X.shape[0])
    top = torch.topk(score, k).indices
    Xk, sub = X[top], region.take(top)
    mk = None if mask is None or mask.dim() == 1 else mask[top]
    small = out_dim(p, X) <= EXACT_OUT
    if small:
        _, Vk = exact_small(p, Xk, mk)
    else:
        _, Vk = power(p, Xk, V[top], iterations, mask=mk)
    if ascent > 0:
        _, Xk, Vk = ascend_jacobian(p, Xk, Vk, sub, ascent, mask=mk)
    X64, V64 = Xk.detach().to(F64), Vk.detach().to(F64)
    if small:
        m64 = None if mk is None else mk.to(F64)
        s64, V64 = exact_small(p64, X64, m64)
    else:
        s64 = jacobian_at(p64, X64, V64)
    best = int(torch.argmax(s64))
    pair_best = 0.0
    if pair_steps > 0 and mask is None:
        _, A, B = ascend_pairs(p, Xk.detach(), Vk.detach(), sub, pair_steps)
        pair_best = float(pair_ratio(p64, A.to(F64), B.to(F64)).max())
    if extra_pairs is not None and extra_pairs[0].shape[0] > 0:
        A, B = extra_pairs
        pair_best = max(pair_best, float(pair_ratio(p64, A.to(F64), B.to(F64)).max()))
    return SearchResult(
        jacobian=float(s64[best]),
        pairs=pair_best,
        best_point=X64[best],
        best_direction=unit(V64[best]),
        points=int(X.shape[0]),
        refined=k,
        iterations=0 if small else iterations,
        ascent_steps=ascent,
        pair_steps=pair_steps if mask is None else 0,
    )
