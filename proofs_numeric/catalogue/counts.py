"""Parameter-count claims read from the modules themselves, and the count the CoMoL paper reports.

Formulas are never re-typed here: the whole count is the module's `param_formula()` (equal to its counted
parameters: `params_formula_all`), and the router's part is *measured* from the module (the numel of its
router, interpolated over a grid of tiny shapes by `complexity.interpolated_count`). The Θ statements are
then decided by `complexity.same_theta`. These are symbolic statements about formulas valid for every
shape, so each runs once (one case); the drawn-shape checks behind them are `params_formula_all` and
`params_layer_shared` (200 cases each).

The CoMoL paper's count comparison (Qwen3-8B: hidden 4096, intermediate 12288, 36 layers, 32 query heads
and 8 key/value heads of 128): its MoLoRA row, 107.35M, is reproduced exactly by 8 input-router experts of
rank 8 on the targets q, k, v, o, down (CoMoL's own targets): 107,347,968. CoMoL with r = 16, N = 8 on the
same targets has 25,164,288, LoRA r = 16 has 24,772,608. The CoMoL repository's training script gives every
baseline expert the full rank r = 16 (its `r // num_experts` line is commented out): that baseline has
206,438,400, which is not the paper's row. Counts are taken from modules built on the `meta` device.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import sympy as sp
from hypothesis import strategies as st

from moelora_core import symbols as S
from moelora_core.adapter import Adapter, RoutedAdapter
from moelora_core.comol import CoMoL, CoMoLConfig
from moelora_core.lora import LoRA, LoRAConfig
from moelora_core.moelora import MoELoRA, MoELoRAConfig
from moelora_core.talklora import TalkLoRA, TalkLoRAConfig

from ..checking import Claim, claim_with_twin
from ..complexity import interpolated_count, limit_ratio, same_theta
from ..outcomes import symbolic

CV = [S.n, S.m, S.r, S.N]  # CoMoL's variables


def _comol(v: dict[sp.Symbol, int], core_router: bool) -> CoMoL:
    cfg = CoMoLConfig(
        in_features=v[S.n],
        out_features=v[S.m],
        rank=v[S.r],
        num_cores=v[S.N],
        core_router=core_router,
    )
    return CoMoL(cfg, device="meta")


def _moelora_rank_r(v: dict[sp.Symbol, int]) -> MoELoRA:
    """MoE-LoRA with N input-router experts of rank r (the CoMoL repository's baseline)."""
    cfg = MoELoRAConfig(
        in_features=v[S.n], out_features=v[S.m], num_experts=v[S.N], expert_rank=v[S.r]
    )
    return MoELoRA(cfg, device="meta")


def _router_numel(a: RoutedAdapter) -> int:
    return sum(p.numel() for p in a.router.parameters())


@lru_cache(maxsize=8)
def router_count(kind: str) -> sp.Expr:
    """The router's parameter count of a module kind, measured and interpolated over (n, m, r, N)."""
    build: Callable[[dict[sp.Symbol, int]], RoutedAdapter] = {
        "comol_core": lambda v: _comol(v, True),
        "comol_x": lambda v: _comol(v, False),
        "moelora_r": _moelora_rank_r,
    }[kind]
    return interpolated_count(lambda v: _router_numel(build(v)), CV, degree=1)


def comol_formula(core_router: bool) -> sp.Expr:
    """CoMoL's own `param_formula()` (the formula does not depend on the instance's sizes)."""
    return _comol({S.n: 1, S.m: 1, S.r: 1, S.N: 1}, core_router).param_formula()


def moelora_rank_r_formula() -> sp.Expr:
    """MoELoRA's own `param_formula()` with E = N experts of rank r_e = r."""
    f = _moelora_rank_r({S.n: 1, S.m: 1, S.r: 1, S.N: 1}).param_formula()
    return sp.expand(f.subs({S.E: S.N, S.r_e: S.r}))


def lora_formula() -> sp.Expr:
    return LoRA(LoRAConfig(in_features=1, out_features=1, rank=1), device="meta").param_formula()


def _router_theta(core_claimed: sp.Expr) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        cr, x = router_count("comol_core"), router_count("comol_x")
        ok = (
            same_theta(cr, core_claimed, CV)
            and same_theta(x, S.N * S.n, CV)
            and not same_theta(cr, x, CV)
        )
        return ok, f"measured router: core {cr}, on x {x}; claimed core Θ({core_claimed})"

    return check


def _experts_theta() -> tuple[bool, str]:
    comol = sp.expand(comol_formula(True) - router_count("comol_core"))
    moe = sp.expand(moelora_rank_r_formula() - router_count("moelora_r"))
    ok = same_theta(comol, (S.n + S.m) * S.r + S.N * S.r**2, CV) and not same_theta(comol, moe, CV)
    return ok, f"CoMoL experts {comol}, MoE-LoRA (N experts of rank r) experts {moe}"


def _ratio_to_lora(formula: Callable[[], sp.Expr], expected: int) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        lim = limit_ratio(formula(), lora_formula(), [S.n, S.m])
        return bool(
            sp.simplify(lim - expected) == 0
        ), f"lim_(n,m→∞) ratio = {lim} (claimed {expected})"

    return check


# ----- the CoMoL paper's count comparison on Qwen3-8B -------------------------------------------------

QWEN3_8B_LAYERS = 36
QWEN3_8B = {  # module: (in_features, out_features); hidden 4096, intermediate 12288, 32 q / 8 kv heads of 128
    "q": (4096, 32 * 128),
    "k": (4096, 8 * 128),
    "v": (4096, 8 * 128),
    "o": (32 * 128, 4096),
    "gate": (4096, 12288),
    "up": (4096, 12288),
    "down": (12288, 4096),
}
COMOL_TARGETS = ("q", "k", "v", "o", "down")  # the CoMoL repository's target modules
PAPER_MOLORA_M = 107.35  # the paper's MoLoRA row on Qwen3-8B, millions


def model_count(build: Callable[[int, int], Adapter], targets: tuple[str, ...]) -> int:
    """Trainable parameters over the 36 layers of Qwen3-8B, one adapter per target module (meta device)."""
    per_layer = sum(build(*QWEN3_8B[t]).num_trainable_params() for t in targets)
    return QWEN3_8B_LAYERS * per_layer


def molora(experts: int, rank: int) -> Callable[[int, int], Adapter]:
    def build(n: int, m: int) -> Adapter:
        cfg = MoELoRAConfig(in_features=n, out_features=m, num_experts=experts, expert_rank=rank)
        return MoELoRA(cfg, device="meta")

    return build


def comol(rank: int, cores: int) -> Callable[[int, int], Adapter]:
    def build(n: int, m: int) -> Adapter:
        cfg = CoMoLConfig(in_features=n, out_features=m, rank=rank, num_cores=cores)
        return CoMoL(cfg, device="meta")

    return build


def lora(rank: int) -> Callable[[int, int], Adapter]:
    def build(n: int, m: int) -> Adapter:
        return LoRA(LoRAConfig(in_features=n, out_features=m, rank=rank), device="meta")

    return build


def _paper_row(expert_rank: int) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        count = model_count(molora(8, expert_rank), COMOL_TARGETS)
        ok = round(count / 1e6, 2) == PAPER_MOLORA_M
        return ok, (
            f"MoLoRA, 8 input-router experts of rank {expert_rank}, targets {COMOL_TARGETS}: "
            f"{count:,} = {count / 1e6:.4f}M vs the paper's {PAPER_MOLORA_M}M"
        )

    return check


def _comparable(
    baseline: Callable[[int, int], Adapter], name: str
) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        ref = model_count(lora(16), COMOL_TARGETS)
        count = model_count(baseline, COMOL_TARGETS)
        return (
            count <= 1.02 * ref,
            f"{name}: {count:,} vs LoRA r=16: {ref:,} (ratio {count / ref:.4f})",
        )

    return check


def _talk_lightweight(assume: tuple[str, ...]) -> Callable[[], tuple[bool, str]]:
    """TalkLoRA's own param_formula is Θ(LoRA's) once E <= r <= n: the talking module (E²), the K_i
    (r²/E) and the router (E r) are lower order. Without the assumptions E·r can dominate."""

    def check() -> tuple[bool, str]:
        cfg = TalkLoRAConfig(in_features=2, out_features=2, rank=2, num_experts=2)
        talk = TalkLoRA(cfg, device="meta").param_formula()
        vs = [S.n, S.m, S.r, S.E]
        ok = same_theta(talk, lora_formula(), vs, assume=assume)
        return ok, f"TalkLoRA {talk} vs LoRA {lora_formula()} under {list(assume)}"

    return check


_ONE = st.just(0)
Check = Callable[[], tuple[bool, str]]


def _once(
    name: str, statement: str, check: Check, twin: str, twin_check: Check, **kw: Any
) -> list[Claim[Any]]:
    """A one-case claim decided by `check` and its twin decided by `twin_check`."""
    return claim_with_twin(
        name, statement, _ONE, symbolic(check), twin=twin, twin_case=symbolic(twin_check),
        max_examples=1, **kw,
    )  # fmt: skip


COUNT_CLAIMS: list[Claim[Any]] = [
    *_once(
        "comol_router_theta",
        "CoMoL's router, measured from the module: Θ(N·r) parameters with core routing, Θ(N·n) "
        "without, and the two classes differ",
        _router_theta(S.N * S.r),
        "wrong_class: the measured core router is Θ(N·n)",
        _router_theta(S.N * S.n),
        spec="SPEC claim 3",
    ),
    Claim(
        "comol_experts_theta",
        "CoMoL's param_formula minus its measured router is Θ((n+m)r + N r²), not the MoE-LoRA "
        "module's (N experts of rank r) Θ(N r (n+m))",
        _ONE,
        symbolic(_experts_theta),
        spec="SPEC claim 3",
        max_examples=1,
    ),
    *_once(
        "comol_over_lora_to_one",
        "CoMoL's param_formula / LoRA's param_formula -> 1 as n, m -> ∞ at fixed r, N",
        _ratio_to_lora(lambda: comol_formula(True), 1),
        "moelora: the MoE-LoRA module's param_formula (N experts of rank r) / LoRA's -> 1",
        _ratio_to_lora(moelora_rank_r_formula, 1),
        twin_name="moelora_over_lora_to_one",
        spec="SPEC claim 3",
    ),
    *_once(
        "comol_paper_molora_row",
        "the CoMoL paper's MoLoRA row on Qwen3-8B (107.35M) is 8 input-router experts of rank 8 on "
        "q, k, v, o, down: the modules' counted parameters give 107,347,968",
        _paper_row(8),
        "repo_baseline: the row is the repository's baseline (8 experts of the full rank r = 16)",
        _paper_row(16),
        spec="CoMoL paper, count comparison",
    ),
    *_once(
        "comol_count_comparable_to_lora",
        "CoMoL (r = 16, N = 8) on Qwen3-8B's q, k, v, o, down has at most 2% more parameters than "
        "LoRA r = 16 (25,164,288 vs 24,772,608), a quarter of the paper's MoLoRA row",
        _comparable(comol(16, 8), "CoMoL r=16, N=8"),
        "molora: MoLoRA (8 experts of rank 8, the paper's row) is within 2% of LoRA r = 16",
        _comparable(molora(8, 8), "MoLoRA 8x8"),
        spec="CoMoL abstract: parameter efficiency comparable to LoRA",
    ),
    *_once(
        "talk_params_theta_lora",
        "TalkLoRA's param_formula is Θ(LoRA's r(n+m)) under E <= r <= n: the talking module is "
        "lightweight (decided with assumptions)",
        _talk_lightweight(("E <= r", "r <= n")),
        "no_assumption: the same without E <= r <= n (then E·r, E², r²/E can outgrow r(n+m))",
        _talk_lightweight(()),
        spec="TalkLoRA abstract: lightweight Talking Module",
    ),
]
