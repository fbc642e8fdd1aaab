"""Bounds measured on a trained model at the hidden states that really reach each adapted layer.

1. `capture_inputs` runs held-out text through the model with forward hooks on every `AdaptedLinear`
   and keeps, per layer, the inputs x of real (non-padding) tokens: X ∈ R^{N x n}.
2. `measure_layer` hands X to `proofs_numeric.bounds` (which asks the architecture what applies: for a
   gate declared ½‖W‖-Lipschitz, certified router-Lipschitz bounds in product and tight form, an
   empirical lower bound and the gap; a Lipschitz chain for a non-linear adapter; else the reason; TalkLoRA's ‖T‖₂ and per-head attenuation ‖T e_j‖₂;
   routing statistics of g(X), a k-hot mask gate's as the uniform distribution over its k experts),
   and adds the perturbation amplification of the router under Gaussian
   input noise, an empirical quantity that the certified bound must dominate:

       amp(ε) = ‖g(x + δ) − g(x)‖₂ / ‖δ‖₂,   δ = ε · rms(x) · ξ,  ξ ~ N(0, I_n)

   (mean and max over tokens, for a few relative noise scales ε). For TalkLoRA it also reports the same
   amplification with the talking module replaced by the identity (same A, W_r), the measured
   counterpart of the ‖T‖₂ factor by which the bound differs from T = I.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from moelora_core.adapter import Adapter, HasTalking
from moelora_core.errors import ConfigError, input_checks

from .peft_bridge import measurable_layers

NOISE_SCALES = (0.01, 0.1, 0.5)


@torch.no_grad()
def capture_inputs(
    model: nn.Module,
    batches: Iterable[Mapping[str, Tensor]],
    *,
    max_tokens: int = 512,
    layers: Mapping[str, Any] | None = None,
) -> dict[str, Tensor]:
    """{layer name: X (N, n)}: the inputs of each adapted layer at the real tokens of `batches`.

    Each batch is passed to `model(**batch)`; its `attention_mask` (B, L), if present, selects the
    tokens (else all). At most `max_tokens` rows are kept per layer (the first ones, in batch order).
    Inputs are returned in float64 on the CPU.
    """
    targets = dict(layers if layers is not None else measurable_layers(model))
    seen: dict[str, list[Tensor]] = {name: [] for name in targets}
    current: dict[str, Tensor] = {}

    def hook(name: str) -> Any:
        def f(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            current[name] = args[0].detach()

        return f

    handles = [layer.register_forward_hook(hook(name)) for name, layer in targets.items()]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            device = next(model.parameters()).device
            model(**{k: v.to(device) for k, v in batch.items()})
            mask = batch.get("attention_mask")
            for name, x in current.items():  # (B, L, n) or (N, n)
                rows = (
                    x[mask.to(x.device).bool()]
                    if mask is not None and x.dim() == 3
                    else x.flatten(0, -2)
                )
                seen[name].append(rows.to("cpu", torch.float64))
            current.clear()
            if all(sum(len(t) for t in v) >= max_tokens for v in seen.values()):
                break
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: torch.cat(v)[:max_tokens] for name, v in seen.items() if v}


def float64_copy(adapter: Adapter, device: torch.device | str = "cpu") -> Adapter:
    """A float64 copy of an adapter on `device` (measurements in double precision; the original is
    untouched)."""
    return copy.deepcopy(adapter).to(device=device, dtype=torch.float64)


@torch.no_grad()
def amplification(
    adapter: Adapter, X: Tensor, scales: Iterable[float], seed: int = 0
) -> dict[str, Any] | None:
    """Router perturbation ratios ‖g(x+δ) − g(x)‖ / ‖δ‖ at the rows of X; None without a router."""
    g0 = adapter.routing(X)  # (N, E)
    if g0 is None:
        return None
    gen = torch.Generator().manual_seed(seed)
    rms = X.norm(dim=-1, keepdim=True) / math.sqrt(X.shape[-1])  # (N, 1)
    out: dict[str, Any] = {}
    for eps in scales:
        xi = torch.randn(X.shape, generator=gen, dtype=X.dtype).to(X.device)  # CPU stream
        delta = eps * rms * xi  # (N, n)
        g1 = adapter.routing(X + delta)
        assert g1 is not None
        ratio = (g1 - g0).norm(dim=-1) / delta.norm(dim=-1)  # (N,)
        out[f"{eps:g}"] = {"mean": float(ratio.mean()), "max": float(ratio.max())}
    return out


def with_identity_talk(adapter: Adapter) -> Adapter:
    """A copy of an adapter with a talking module (`HasTalking`, e.g. TalkLoRA) whose talking module
    is T = I (everything else unchanged)."""
    twin = copy.deepcopy(adapter)
    if not isinstance(twin, HasTalking):
        raise ConfigError(f"{type(adapter).__name__}: has no talking module T")
    T = twin.talking.weight  # (E, E)
    with torch.no_grad():
        T.copy_(torch.eye(T.shape[0], dtype=T.dtype, device=T.device))
    return twin


def measure_layer(
    adapter: Adapter,
    X: Tensor,
    *,
    seed: int = 0,
    scales: Iterable[float] = NOISE_SCALES,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Bounds, routing statistics and perturbation amplification of one layer at inputs X (N, n).
    device: where the float64 copy, the searches and the amplification run (the certified parts
    of the report always run on the CPU, in float64 enclosures)."""
    from proofs_numeric.bounds import layer_report, routing_stats

    a = float64_copy(adapter, device)
    X = X.to(device=a.reference.device, dtype=torch.float64)
    scales = tuple(scales)
    with input_checks(False):
        out: dict[str, Any] = {"arch": type(a).family, "tokens": int(X.shape[0])}
        # bounds for a routed or a non-linear layer; `layer_report` asks the architecture which
        # apply (certified for a ½‖W‖-Lipschitz gate, a Lipschitz chain, or why there is none)
        bounded = a.routing_kind != "none" or not type(a).linear_experts
        out["bounds"] = layer_report(a, inputs=X, seed=seed).to_dict() if bounded else None
        g = a.routing(X)  # (N, E)
        if g is not None and a.routing_kind == "mask":  # k-hot: uniform over its k experts
            g = g / g.sum(-1, keepdim=True).clamp_min(1.0)
        out["routing"] = routing_stats(g.cpu()).to_dict() if g is not None else None
        out["amplification"] = amplification(a, X, scales, seed)
        if isinstance(a, HasTalking):
            out["amplification_identity_talk"] = amplification(
                with_identity_talk(a), X, scales, seed
            )
    return out


def measure_model(
    inputs: Mapping[str, Tensor],
    layers: Mapping[str, Any],
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """{layer name: measure_layer(...)} for every layer that has captured inputs, on `device`."""
    return {
        name: measure_layer(layers[name].adapter, X, seed=seed, device=device)
        for name, X in inputs.items()
    }


def measure_adapted_model(
    model: nn.Module | str | Path,
    batches: Iterable[Mapping[str, Tensor]],
    *,
    max_tokens: int = 512,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Bounds of every adapted layer of a model at its real hidden states on `batches` (the
    measurements on `device`).

    `model` is a toolkit model (AdaptedLinear layers), a PEFT model (`PeftModel` of LoRA or of a routed
    method), or a saved adapter directory (toolkit or PEFT; its base model is loaded on the CPU).
    """
    if isinstance(model, str | Path):
        from .bounds_cmd import load_checkpoint

        model = load_checkpoint(Path(model)).model
    layers = measurable_layers(model)
    inputs = capture_inputs(model, batches, max_tokens=max_tokens, layers=layers)
    return measure_model(inputs, layers, seed=seed, device=device)
