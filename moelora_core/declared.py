"""What an architecture declares about itself, beside its maths (re-exported by `moelora_core.adapter`).

* `RoutingKind`: how its gate g(x) is made (none, softmax, mask, threshold);
* `ExpertFactors`: its expert maps as exact low-rank factors, P_i = s · (L_1 ⋯ L_k)_i R_i;
* `LipschitzChain`: the structure of a non-linear Δ = φ_k ∘ L_k ∘ ⋯ ∘ φ_1 ∘ L_1;
* `Reduction`: an exact reduction to another registered architecture, with its precondition;
* `AdapterSpecLike`: the generic spec an architecture builds its config from;
* `HasTalking`: what callers ask for instead of `isinstance(a, TalkLoRA)`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from torch import Tensor

from .maps import Dense

if TYPE_CHECKING:
    from .adapter import Adapter

RoutingKind = Literal["none", "softmax", "mask", "threshold"]
"""none: unrouted; softmax: g = softmax(W z), optionally top-k renormalised (a distribution, exactly k
non-zero under top-k); mask: g ∈ {0,1}^E with exactly k ones; threshold: g_i = relu(p_i − τ(x)) /
Σ_j relu(p_j − τ(x)), a distribution with a variable number of non-zeros."""

RouterLipschitz = Literal["half_norm", "refuted", "none"]
"""half_norm: ‖g(x) − g(y)‖ ≤ ½‖W‖ ‖z(x) − z(y)‖ for soft routing (softmax: the certified router
bound applies; under top-k only between selection switches, where g jumps);
refuted: the gate is NOT ½‖W‖-Lipschitz and a declared claim must find a violation; none: no router."""


@dataclass(frozen=True)
class ExpertFactors:
    """P_i = scale · (L_1 L_2 ⋯ L_k)_i · R_i, the expert maps as exact float64 CPU factors.

    Every factor is (E, a, b), or (1, a, b) when one factor is shared by all experts; `right` with
    leading 1 is a shared input side (HydraLoRA's and CoMoL's A). The caller does the rigorous
    products: these are the adapter's parameters, converted exactly (float32 -> float64 is exact).
    """

    left: tuple[Tensor, ...]
    right: Tensor
    scale: float

    def dense(self) -> Tensor:
        """The P_i as one (E, m, n) float64 tensor (plain float64 products, for checks only)."""
        out = self.left[0]
        for f in self.left[1:]:
            out = out @ f  # (E or 1, m, ·)
        return self.scale * (out @ self.right)


@dataclass(frozen=True)
class LipschitzChain:
    """Δ = φ_k ∘ L_k ∘ ⋯ ∘ φ_1 ∘ L_1 (L_j exact float64 matrices, the first applied first), each φ_j
    Lipschitz with constant c_j (an exact upper bound, e.g. GELU: Φ(√2) + √2 φ(√2) ≤ 1.1289), so

        ‖Δ(x) − Δ(y)‖ ≤ scale · ∏ c_j ∏ ‖L_j‖ ‖x − y‖.
    """

    maps: tuple[Tensor, ...]
    constants: tuple[float, ...]
    scale: float = 1.0


def _always(config: Any) -> bool:
    """The default domain of a declared reduction: every config."""
    return True


@dataclass(frozen=True)
class Reduction:
    """A declared exact reduction: after `prepare(adapter)` (makes the precondition hold, in place, e.g.
    T = I), `embed(adapter)` is an adapter of the registered architecture `target` with the same Δ
    (and the same g where both route). `unprepared_fails`: skipping `prepare` must make the check fail
    on some drawn instance (the mutated twin); False when the embedding is exact without it (e.g. the
    absorption of TalkLoRA's T into the router). `applies(config)`: the configs it is claimed on."""

    name: str
    target: str
    prepare: Callable[[Adapter], None]
    embed: Callable[[Adapter], Adapter]
    unprepared_fails: bool = True
    applies: Callable[[Any], bool] = _always


def no_preparation(adapter: Adapter) -> None:
    """The `prepare` of a reduction that holds for every instance."""


class AdapterSpecLike(Protocol):
    """The generic spec an architecture's `config_from_spec` reads (e.g. `experiments.inject`'s)."""

    @property
    def rank(self) -> int: ...  # total rank r (LoRA, TalkLoRA, CoMoL)
    @property
    def experts(self) -> int: ...  # E, or N for CoMoL
    @property
    def expert_rank(self) -> int | None: ...  # r_e; None: rank // experts
    @property
    def top_k(self) -> int | None: ...
    @property
    def scale(self) -> float: ...
    @property
    def router(self) -> str: ...  # MoELoRA: "input" | "latent"
    @property
    def core_router(self) -> bool: ...  # CoMoL
    @property
    def shared(self) -> bool: ...  # the architecture's cross-layer sharing (TalkLoRA B, CoMoL A, B)
    @property
    def options(self) -> Mapping[str, Any]: ...  # any other config field, by its config name


@runtime_checkable
class HasTalking(Protocol):
    """An adapter with a talking module T (E x E) mixing the router's heads (TalkLoRA)."""

    @property
    def talking(self) -> Dense: ...
