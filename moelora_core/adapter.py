"""The interface every architecture implements.

An adapter is an update `Δ: R^n -> R^m` added to a frozen layer, `y = W0 x + Δ(x)`, of the form

    Δ(x) = Σ_i g_i(x) P_i x,        P_i = s·B_i A_i  (a fixed linear map per expert),

with routing weights `g(x) = softmax(W · z(x))` read from some linear `z(x)` of the input (LoRA: E = 1,
g = 1). Each architecture's module owns everything about it:

* maths: `forward` (fused), `reference_delta` (the paper's sum, unfused), `routing(x)`,
  `expert_matrices()` (the P_i), `delta_weight(x)` (Σ_i g_i(x) P_i), `router_input_map()` (x -> z),
  `router_logit_map()` (x -> W z);
* building: `config_from_spec`, `create`, `make_shared` / `shared_part` (parts shared across layers);
* counting (sympy, symbols in `moelora_core.symbols`, values from `subs()`): `param_formula`,
  `shared_param_formula`, `macs_formula`, `sparse_macs_formula`;
* bounds and claims: `expert_factors`, `lipschitz_chain`, `reductions`, and the class-level
  declarations `routing_kind`, `linear_experts`, `router_lipschitz`;
* training: `auxiliary_loss`.

`RoutedAdapter` is the base of the routed ones: its `router` is never None.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import sympy as sp
import torch
from torch import Tensor, nn

from .declared import (
    AdapterSpecLike,
    ExpertFactors,
    HasTalking,
    LipschitzChain,
    Reduction,
    RouterLipschitz,
    RoutingKind,
    no_preparation,
)
from .errors import (
    ConfigError,
    NonFiniteError,
    NotLinearError,
    ShapeError,
    check_input,
    checks_enabled,
)
from .maps import Compose, LinearMap, SoftmaxRouter
from .validate import (
    require_finite_output,
    require_instance,
    require_int,
    require_real,
    require_seed,
    require_tensor,
)

__all__ = [
    "Adapter",
    "AdapterSpecLike",
    "ExpertFactors",
    "HasTalking",
    "LipschitzChain",
    "Reduction",
    "RoutedAdapter",
    "RouterLipschitz",
    "RoutingKind",
    "no_preparation",
    "weighted_heads",
]

Dtype = torch.dtype | None
Device = torch.device | str | None


class Adapter(nn.Module):
    """Base class: subclasses define `forward` (= Δ), `reference_delta`, `expert_matrices`, the
    formulas, `subs` and `config_from_spec`; the other methods have defaults that declare "none"."""

    family: ClassVar[str]  # the registry name
    config_class: ClassVar[type]  # the kw-only frozen dataclass, validated in __post_init__
    routing_kind: ClassVar[RoutingKind] = "none"
    linear_experts: ClassVar[bool] = True  # Δ(x) = Σ_i g_i(x) P_i x with fixed P_i
    router_lipschitz: ClassVar[RouterLipschitz] = "none"
    config: Any
    router: SoftmaxRouter | None

    # ----- building ----------------------------------------------------------------------------------
    @classmethod
    def config_from_spec(cls, spec: AdapterSpecLike, in_features: int, out_features: int) -> Any:
        """The config for an `in_features -> out_features` layer from a generic spec."""
        raise NotImplementedError(f"{cls.__name__} defines no config_from_spec")

    @classmethod
    def create(
        cls,
        config: Any,
        *,
        shared: nn.Module | None = None,
        dtype: Dtype = None,
        device: Device = None,
    ) -> Adapter:
        """Build from a config; `shared` is the part made by `make_shared` (None: nothing shared)."""
        if shared is not None:
            raise ConfigError(
                f"shared={type(shared).__name__}: expected None ({cls.__name__} shares no part "
                "across layers)"
            )
        ctor: Callable[..., Adapter] = cls
        return ctor(config, dtype=dtype, device=device)

    @classmethod
    def make_shared(
        cls, config: Any, *, dtype: Dtype = None, device: Device = None
    ) -> nn.Module | None:
        """The part shared by all layers of one module type under `config` (None: nothing is)."""
        require_instance("config", config, cls.config_class)
        return None

    def shared_part(self) -> nn.Module | None:
        """What `make_shared` made, as this instance holds it (None: nothing shared)."""
        return None

    # ----- sizes -------------------------------------------------------------------------------------
    @property
    def in_features(self) -> int:
        return int(self.config.in_features)

    @property
    def out_features(self) -> int:
        return int(self.config.out_features)

    @property
    def num_experts(self) -> int:
        return 1

    @property
    def reference(self) -> Tensor:
        """A parameter whose dtype and device every input must share."""
        return next(self.parameters())

    # ----- the maths ---------------------------------------------------------------------------------
    def delta(self, x: Tensor) -> Tensor:
        """Δ(x), (..., n) -> (..., m). Unlike `forward` (the training path), the output is checked
        too: an overflow to inf/NaN raises NonFiniteError instead of being returned."""
        out: Tensor = self(x)
        return self._checked(out, "Δ(x)")

    def routing(self, x: Tensor) -> Tensor | None:
        """Routing weights g(x), (..., n) -> (..., E); None for an unrouted adapter."""
        self._check(x)
        router = getattr(self, "router", None)  # an unrouted adapter may not set it at all
        if router is None:
            return None
        g: Tensor = router(self.router_input_map()(x))
        return self._checked(g, "routing weights g(x)")

    def expert_matrices(self) -> Tensor:
        """The fixed expert maps P_i = s·B_i A_i, shape (E, m, n)."""
        self._require_linear("expert_matrices")
        raise NotImplementedError(f"{type(self).__name__} defines no expert_matrices")

    def reference_delta(self, x: Tensor) -> Tensor:
        """Δ(x) written literally as the paper's sum over experts, factor by factor and unfused
        (each architecture overrides it); tests and benchmarks compare the fused `forward` with it."""
        raise NotImplementedError(f"{type(self).__name__} has no reference_delta")

    def _weights(self, x: Tensor) -> Tensor:
        """g(x) (..., E), or ones (..., 1) for an unrouted adapter."""
        g = self.routing(x)
        return torch.ones(*x.shape[:-1], 1, dtype=x.dtype, device=x.device) if g is None else g

    def delta_weight(self, x: Tensor) -> Tensor:
        """The per-token dense update ΔW(x) = Σ_i g_i(x) P_i, shape (..., m, n); Δ(x) = ΔW(x) x."""
        self._require_linear("delta_weight")
        P = self.expert_matrices()  # (E, m, n)
        g = self.routing(x)
        if g is None:
            return P[0].expand(*x.shape[:-1], *P.shape[1:])
        return self._checked(torch.einsum("...e,emn->...mn", g, P), "ΔW(x)")

    def router_input_map(self) -> LinearMap:
        """The linear map x -> z that the router reads."""
        raise NotImplementedError(f"{type(self).__name__} has no router")

    def router_logit_map(self) -> LinearMap | None:
        """x -> W z(x), the router's logits as one composed linear map (None without a router)."""
        router = getattr(self, "router", None)
        if router is None:
            return None
        return Compose(router.logits, self.router_input_map())

    # ----- counting ----------------------------------------------------------------------------------
    def num_trainable_params(self) -> int:
        """Trainable parameters this layer owns (shared modules excluded; see `owned_parameters`)."""
        return sum(p.numel() for p in self.owned_parameters() if p.requires_grad)

    def owned_parameters(self) -> list[nn.Parameter]:
        shared = {id(p) for p in self.shared_parameters()}
        seen: set[int] = set()
        out: list[nn.Parameter] = []
        for p in self.parameters():
            if id(p) not in shared and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters shared with other layers (counted once per module type, not per layer): those of
        `shared_part()`."""
        part = self.shared_part()
        return [] if part is None else list(part.parameters())

    def param_formula(self) -> sp.Expr:
        """Trainable parameters of one layer (shared parts excluded), sympy in `moelora_core.symbols`."""
        raise NotImplementedError(f"{type(self).__name__} defines no param_formula")

    def shared_param_formula(self) -> sp.Expr:
        """Trainable parameters shared by the layers of one module type, counted once per type."""
        return sp.Integer(0)

    def macs_formula(self) -> sp.Expr:
        """Matmul multiply–adds per token of the dense forward (torch's FLOP counter / 2)."""
        raise NotImplementedError(f"{type(self).__name__} defines no macs_formula")

    def sparse_macs_formula(self) -> sp.Expr | None:
        """Matmul multiply–adds per token of the sparse top-k forward; None without one."""
        return None

    def subs(self) -> dict[sp.Symbol, int]:
        """Values of the formulas' symbols for this instance."""
        raise NotImplementedError(f"{type(self).__name__} defines no subs")

    def param_subs(self) -> dict[sp.Symbol, int]:
        """The same as `subs()` (the older name)."""
        return self.subs()

    def param_formula_value(self) -> int:
        return int(self.param_formula().subs(self.param_subs()))

    # ----- bounds, training, declared claims ---------------------------------------------------------
    def expert_factors(self) -> ExpertFactors | None:
        """The P_i as exact float64 CPU low-rank factors; None: use the dense `expert_matrices`."""
        return None

    def lipschitz_chain(self) -> LipschitzChain | None:
        """The structure of a non-linear Δ (`linear_experts = False`); None for a linear one."""
        return None

    def auxiliary_loss(self) -> Tensor | None:
        """A training loss term of the last forward (e.g. load balancing); None by default."""
        return None

    @classmethod
    def reductions(cls) -> tuple[Reduction, ...]:
        """The exact reductions to other registered architectures this one declares."""
        return ()

    # ----- helpers -----------------------------------------------------------------------------------
    def _require_linear(self, what: str) -> None:
        if not self.linear_experts:
            raise NotLinearError(
                f"{what} of {type(self).__name__}: linear_experts=False; expected an adapter whose "
                "Δ(x) = Σ_i g_i(x) P_i x has fixed expert maps P_i (use lipschitz_chain)"
            )

    def _check(self, x: Tensor) -> Tensor:
        return check_input(x, self.in_features, self.reference)

    def _checked(self, y: Tensor, what: str) -> Tensor:
        return require_finite_output(what, y) if checks_enabled() else y

    @torch.no_grad()
    def randomize_(self, seed: int, std: float | None = None) -> Adapter:
        """Overwrite every parameter with N(0, std²) draws (std = 1/sqrt(fan_in) if None), reproducibly.

        Used by checkers: the usual zero-initialised B would make every claim about Δ trivially true.
        seed: an int in [0, 2**64); std: None or a finite real > 0. Every draw must stay below
        (largest value of the dtype)^(1/5), so that Δ, a product of at most five factors (x, A, K or
        a core, B, s), cannot overflow on inputs of moderate size. All draws are made and checked
        before any parameter is written, so a refused call changes nothing.
        """
        require_seed("seed", seed)
        sd_given = None if std is None else require_real("std", std, positive=True)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        draws = []
        for name, p in sorted(self.named_parameters(remove_duplicate=True), key=lambda t: t[0]):
            sd = sd_given if sd_given is not None else 1.0 / math.sqrt(max(1, p.shape[-1]))
            draw = torch.randn(p.shape, generator=gen, dtype=torch.float64) * sd
            limit = torch.finfo(p.dtype).max ** 0.2
            if draw.numel() and not float(draw.abs().max()) <= limit:
                raise NonFiniteError(
                    f"std={std!r}: draws for {name} reach {float(draw.abs().max()):.3g}; expected "
                    f"a std whose draws stay below {limit:.3g} = (largest {p.dtype})^(1/5)"
                )
            draws.append((p, draw))
        for p, draw in draws:
            p.copy_(draw.to(dtype=p.dtype, device=p.device))
        return self

    def extra_repr(self) -> str:
        return repr(self.config)


class RoutedAdapter(Adapter):
    """An adapter with a softmax router over its experts: `router` is never None.

    g(x) = softmax(W z(x)) (top-k: the k largest logits, renormalised), z = `router_input_map()`.
    """

    routing_kind: ClassVar[RoutingKind] = "softmax"
    router_lipschitz: ClassVar[RouterLipschitz] = "half_norm"
    router: SoftmaxRouter

    def routing(self, x: Tensor) -> Tensor:
        """Routing weights g(x), (..., n) -> (..., E)."""
        self._check(x)
        g: Tensor = self.router(self.router_input_map()(x))
        return self._checked(g, "routing weights g(x)")

    def router_logit_map(self) -> LinearMap:
        """x -> W z(x), the router's logits as one composed linear map."""
        return Compose(self.router.logits, self.router_input_map())

    def sparse_forward(self, x: Tensor) -> Tensor:
        """Δ(x) computing only the k chosen experts (`forward` decides via `sparse.use_sparse`)."""
        raise NotImplementedError(f"{type(self).__name__} has no sparse top-k forward")


def weighted_heads(h: Tensor, g: Tensor, head_dim: int) -> Tensor:
    """(g ⊗ 1_d) ⊙ h: scale head i of h (..., E*d) by g_i (..., E)."""
    require_int("head_dim", head_dim)
    require_tensor("h", h, min_ndim=1, data=False)
    require_tensor("g", g, min_ndim=1, data=False)
    E = g.shape[-1]
    if h.shape[-1] != E * head_dim:
        raise ShapeError(
            f"h.shape={tuple(h.shape)}: expected (..., {E * head_dim}) for {E} heads of {head_dim}"
        )
    out: Tensor = (h.unflatten(-1, (E, head_dim)) * g.unsqueeze(-1)).flatten(-2)
    return out
