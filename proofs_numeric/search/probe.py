"""`Probe`: a map f evaluated at many points at once, with its Jacobian-vector products.

For a differentiable f and any v ≠ 0, ‖J_f(x) v‖/‖v‖ <= ‖J_f(x)‖₂ <= Lip(f near x). A `Probe` evaluates
f, J_f v (jvp) and J_fᵀ u (vjp) at many points at once, either with torch.func.vmap over a one-point
function, or, for a row-wise map (every adapter and router maps each row of an (N, n) batch on its
own), by one jvp / vjp of the batched function with one tangent per row: the Jacobian of a row-wise
map is block diagonal, so both give the same per-point products (tested). The batched form is about
twice as fast (vmap's per-op overhead) and needs only torch.autograd.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch.func import grad, jacrev, jvp, vjp, vmap

Fn = Callable[[Tensor], Tensor]

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
