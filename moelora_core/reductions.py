"""Reductions as constructive embeddings: each function takes an instance and returns an instance of the
target architecture whose parameters are set so that the two compute the same Δ (and, where both route,
the same routing weights). Preconditions that do not hold raise ReductionError.

Embedding formulas (blocks: A_(i) = i-th row block of A, B_i = i-th column block of B):

* TalkLoRA -> latent-router MoELoRA (any T):   A_i = A_(i),  B_i' = B_i K_i,  W_r' = W_r (T ⊗ I).
  With T = I this is W_r' = W_r: "TalkLoRA with identity talking is MoELoRA" (SPEC claim 1), and for
  any T it is the absorption of the talking module into the router (claim 2).
* TalkLoRA -> latent-router MoELoRA, as SPEC claim 1 states it: A_i = K_i A_(i), B_i, W_r unchanged.
  This is exact only when every K_i = I: the router of that MoELoRA reads K A x, TalkLoRA's reads A x.
  Kept as `talklora_to_moelora_as_stated` so the suite can show where it fails.
* Latent-router MoELoRA -> TalkLoRA:           A = [A_1; ...; A_E],  K_i = I,  T = I,  B_i,  W_r.
  With the embedding above, the two function classes are equal at equal total rank.
* TalkLoRA -> input-router MoELoRA (any T):    A_i = A_(i),  B_i' = B_i K_i,  W_g = W_r (T ⊗ I) A.
* CoMoL -> latent-router MoELoRA (core router): r_e = r, A_i = A, B_i = B M_i, W_r' = [W_c 0 ... 0].
  CoMoL w/o core routing -> input-router MoELoRA with W_g unchanged.
* MoELoRA (N experts of rank r_e) -> CoMoL of rank r = N·r_e: A = [A_1; ...], B = [B_1 ...], block-selector
  cores M_i, router unchanged (latent -> core router W_c, input -> router on x).
* CoMoL with N = 1, or all cores equal -> LoRA:  A, B' = B M_1.
* MoELoRA with E = 1, or identical experts -> LoRA:  A_1, B_1.
* HydraLoRA with equal heads -> LoRA:  A, B_1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .adapter import RoutedAdapter
from .comol import CoMoL, CoMoLConfig
from .errors import ReductionError
from .hydralora import HydraLoRA, HydraLoRAConfig
from .lora import LoRA
from .moelora import MoELoRA, MoELoRAConfig, RouterKind
from .stacked import blocks, first_expert_lora, lora_of, up_blocks
from .talklora import TalkLoRA, TalkLoRAConfig
from .validate import require_instance, require_int, require_seed, require_tolerance


def _router_weight(a: RoutedAdapter) -> Tensor:
    """The router's logit matrix W (a Parameter, writable in place)."""
    return a.router.logits.dense()


def _blocks_equal(blocks: Tensor, name: str, atol: float) -> None:
    """blocks: (E, ...); raise ReductionError unless all equal block 0 within atol."""
    atol = require_tolerance("atol", atol)  # NaN would make `diff > atol` never true
    diff = float((blocks - blocks[:1]).abs().max()) if blocks.shape[0] > 1 else 0.0
    if diff > atol:
        raise ReductionError(
            f"{name}: max |block_i - block_1| = {diff:.3e}; expected all equal (atol={atol:g})"
        )


@torch.no_grad()
def talklora_to_moelora(t: TalkLoRA) -> MoELoRA:
    """TalkLoRA (any T) as a latent-router MoELoRA: A_i = A_(i), B_i' = B_i K_i, W_r' = W_r (T ⊗ I)."""
    require_instance("t", t, TalkLoRA)
    c = t.config
    BK = torch.einsum(
        "mei,eij->mej", t.B.weight.unflatten(1, (c.num_experts, c.head_dim)), t.K.weight
    )
    W = _router_weight(t) @ t.talk.dense()  # W_r (T ⊗ I)
    return MoELoRA.from_factors(
        t.A.weight, BK.flatten(1), W, router="latent", top_k=c.top_k, scale=c.scale
    )


@torch.no_grad()
def talklora_to_moelora_as_stated(t: TalkLoRA) -> MoELoRA:
    """SPEC claim 1 literally: A_i = K_i A_(i), same B_i, W_r unchanged. Exact iff T = I and every K_i = I."""
    require_instance("t", t, TalkLoRA)
    c = t.config
    KA = t.K(t.A.weight.T).T  # rows block i = K_i A_(i)
    return MoELoRA.from_factors(
        KA, t.B.weight, _router_weight(t), router="latent", top_k=c.top_k, scale=c.scale
    )


@torch.no_grad()
def moelora_to_talklora(mo: MoELoRA) -> TalkLoRA:
    """A latent-router MoELoRA as a TalkLoRA: A = [A_1; ...; A_E], K_i = I, T = I, same B_i and W_r."""
    require_instance("mo", mo, MoELoRA)
    c = mo.config
    if c.router != "latent":
        raise ReductionError(
            f"router={c.router!r}: expected 'latent' (an input router reads directions outside row(A); "
            "see input_router_witness)"
        )
    cfg = TalkLoRAConfig(
        in_features=c.in_features,
        out_features=c.out_features,
        rank=c.rank,
        num_experts=c.num_experts,
        top_k=c.top_k,
        scale=c.scale,
        talk_init="identity",
    )
    out = TalkLoRA(cfg, dtype=mo.A.weight.dtype, device=mo.A.weight.device)
    out.A.weight.copy_(mo.A.weight)
    out.K.weight.copy_(torch.eye(c.expert_rank, dtype=out.K.weight.dtype).expand_as(out.K.weight))
    out.T.weight.copy_(torch.eye(c.num_experts, dtype=out.T.weight.dtype))
    out.B.weight.copy_(mo.B.weight)
    _router_weight(out).copy_(_router_weight(mo))
    return out


@torch.no_grad()
def talklora_to_input_moelora(t: TalkLoRA) -> MoELoRA:
    """TalkLoRA (any T) as an input-router MoELoRA of the same total rank: W_g = W_r (T ⊗ I) A."""
    require_instance("t", t, TalkLoRA)
    m = talklora_to_moelora(t)
    c = m.config
    W = t.router_logit_map().dense()  # W_r (T ⊗ I) A
    return MoELoRA.from_factors(
        m.A.weight, m.B.weight, W, router="input", top_k=c.top_k, scale=c.scale
    )


@torch.no_grad()
def comol_to_moelora(c_: CoMoL) -> MoELoRA:
    """CoMoL as a MoELoRA with N experts of rank r: A_i = A, B_i = B M_i; router W_c (latent) or W_g (input)."""
    require_instance("c_", c_, CoMoL)
    c = c_.config
    N, r = c.num_cores, c.rank
    kind: RouterKind = "latent" if c.core_router else "input"
    W = _router_weight(c_)
    reads = N * r if c.core_router else c.in_features
    target = W.new_zeros(N, reads)
    target[:, : W.shape[1]].copy_(W)  # latent: [W_c 0 ... 0] reads the first copy of A x
    BM = torch.einsum("mi,nij->mnj", c_.B.weight, c_.cores).flatten(1)  # [B M_1 ... B M_N]
    A = c_.A.weight.repeat(N, 1)  # [A; A; ...; A]
    return MoELoRA.from_factors(A, BM, target, router=kind, top_k=c.top_k, scale=c.scale)


@torch.no_grad()
def comol_to_lora(c_: CoMoL, atol: float = 0.0) -> LoRA:
    """CoMoL with N = 1 or all cores equal (within atol) as LoRA: A, B' = B M_1."""
    require_instance("c_", c_, CoMoL)
    c = c_.config
    _blocks_equal(c_.cores, "CoMoL cores M_i", atol)
    return lora_of(c_.A.weight, c_.B.weight @ c_.cores[0], c.scale)


@torch.no_grad()
def moelora_to_lora(mo: MoELoRA, atol: float = 0.0) -> LoRA:
    """MoELoRA with E = 1 or identical experts (within atol) as LoRA of rank r_e: A_1, B_1."""
    require_instance("mo", mo, MoELoRA)
    A, B = blocks(mo)  # (E, r_e, n), (E, m, r_e)
    _blocks_equal(A, "MoELoRA expert A_i", atol)
    _blocks_equal(
        B,
        "MoELoRA expert B_i",
        atol,
    )
    return first_expert_lora(mo)


@torch.no_grad()
def hydralora_to_lora(hy: HydraLoRA, atol: float = 0.0) -> LoRA:
    """HydraLoRA with equal heads (within atol) as LoRA: A, B_1."""
    require_instance("hy", hy, HydraLoRA)
    c: HydraLoRAConfig = hy.config
    _blocks_equal(
        up_blocks(hy.B.weight, c.num_experts, c.expert_rank),
        "HydraLoRA heads B_i",
        atol,
    )
    return lora_of(hy.A.weight, hy.expert_B(0), c.scale)


def input_router_witness(
    in_features: int, out_features: int, num_experts: int, expert_rank: int, seed: int = 0
) -> MoELoRA:
    """An input-router MoELoRA (total rank r = E·r_e) that no TalkLoRA of total rank r can equal.

    A TalkLoRA Δ(x) depends on x only through A x ∈ R^r, so every Jacobian row lies in row(A) (dim <= r).
    This MoELoRA's router reads W_g x with rows outside row(A): its Jacobians span min(n, r + E - 1) > r
    dimensions (`proofs_numeric.function_class.dependence_rank` certifies it). Needs E >= 2, n > r and
    m >= r_e (with m < r_e each expert map B_i A_i has rank m < r_e and fewer directions are read).
    """
    from .errors import ConfigError

    for name, v in (("in_features", in_features), ("out_features", out_features),
                    ("num_experts", num_experts), ("expert_rank", expert_rank)):  # fmt: skip
        require_int(name, v)
    require_seed("seed", seed)
    r = num_experts * expert_rank
    if num_experts < 2:
        raise ConfigError(
            f"num_experts={num_experts}: expected >= 2 (with one expert the router is constant)"
        )
    if in_features <= r:
        raise ConfigError(
            f"in_features={in_features}: expected > total rank r={r} (else row(A) can be all of R^n)"
        )
    if out_features < expert_rank:
        raise ConfigError(
            f"out_features={out_features}: expected >= expert_rank={expert_rank} (full-rank experts)"
        )
    cfg = MoELoRAConfig(
        in_features=in_features,
        out_features=out_features,
        num_experts=num_experts,
        expert_rank=expert_rank,
        router="input",
    )
    out = MoELoRA(cfg, dtype=torch.float64)
    out.randomize_(seed)
    return out


@torch.no_grad()
def moelora_to_comol(mo: MoELoRA) -> CoMoL:
    """A MoELoRA with N experts of rank r_e as a CoMoL of rank r = N·r_e (block-selector cores).

    A = [A_1; ...; A_N], B = [B_1 ... B_N], M_i = the r x r block selector with I_{r_e} in diagonal
    block i (so B M_i A = B_i A_i), and the router unchanged: a latent router (W_r reads A x) becomes
    CoMoL's core router W_c = W_r, an input router becomes the router on x, W_g. Then
    Δ = s B (Σ g_i M_i) A x = s Σ g_i B_i A_i x: CoMoL contains MoE-LoRA with per-expert rank r/N.
    """
    if not isinstance(mo, MoELoRA):
        raise ReductionError(f"mo={type(mo).__name__}: expected a MoELoRA")
    c = mo.config
    N, d, r = c.num_experts, c.expert_rank, c.rank
    cfg = CoMoLConfig(
        in_features=c.in_features,
        out_features=c.out_features,
        rank=r,
        num_cores=N,
        core_router=c.router == "latent",
        top_k=c.top_k,
        scale=c.scale,
    )
    out = CoMoL(cfg, dtype=mo.A.weight.dtype, device=mo.A.weight.device)
    out.A.weight.copy_(mo.A.weight)
    out.B.weight.copy_(mo.B.weight)
    selectors = torch.zeros_like(out.cores)  # (N, r, r)
    idx = torch.arange(r, device=selectors.device)
    selectors[idx // d, idx, idx] = 1.0  # M_i = diag(0, ..., I_{r_e} (block i), ..., 0)
    out.cores.copy_(selectors)
    _router_weight(out).copy_(_router_weight(mo))
    return out
