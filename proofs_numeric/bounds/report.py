"""`layer_report`: certified upper bounds and searched lower bounds for one routed adapter layer.

    rep = layer_report(adapter, inputs=None | (N, n), radius=None | R, seed=0)
    rep = report_layer(adapter, inputs, radius=R, options=ReportOptions(samples=16))  # the same
    rep.to_dict()   # JSON-serialisable
    print(rep)      # readable

What is measured (see docs/bounds.md for the derivations), one section each (sections.py,
local_section.py):
  * router x ↦ g(x): product, effective and centred certified upper bounds (certified.py), and the
    largest Jacobian norm / pair ratio found over the domain (proofs_numeric.search); gap = lower / upper;
  * latent routers: the same for the head-perturbation map h ↦ g; TalkLoRA: ‖T‖₂, ‖T e_j‖₂ and the
    per-head bounds;
  * the local bound on Δ on balls around the inputs (local.py), with a searched lower bound;
  * top-k routers: a discontinuity witness (topk.py) instead of numbers;
  * `not_tight`: reasons, proved from the computed quantities, why the bound cannot be attained.
"""

from __future__ import annotations

import time

from torch import Tensor

from moelora_core.adapter import Adapter
from moelora_core.errors import input_checks
from moelora_core.validate import require_instance

from ..threads import torch_threads
from .chain import chain_bounds, chain_lower, require_chain
from .domain import require_adapter
from .layer import Layer, RouterCertificate, certify_router, open_layer
from .local import Centres
from .local_section import local_section
from .options import ReportOptions
from .results import LayerBoundReport, MapReport
from .rigorous import CertificateError
from .sections import head_section, router_section, topk_section


def layer_report(
    adapter: Adapter,
    inputs: Tensor | None = None,
    *,
    radius: float | None = None,
    seed: int = 0,
    samples: int = 64,
    iterations: int = 8,
    ascent_steps: int = 6,
    pair_steps: int = 6,
    local: bool = True,
    local_samples: int = 32,
    epsilon: float = 1e-6,
    threads: int | None = None,
) -> LayerBoundReport:
    """Certified and empirical bounds for one routed adapter layer (see the module docstring).

    inputs: (N, n) points (e.g. real hidden states) or None; radius: None or R >= 0. Domain: inputs
    and no radius -> the points; a radius -> balls of radius R around the inputs (or the origin);
    neither -> all of R^n. The other arguments are the fields of `ReportOptions` (options.py).
    """
    options = ReportOptions(
        seed=seed, samples=samples, iterations=iterations, ascent_steps=ascent_steps,
        pair_steps=pair_steps, local=local, local_samples=local_samples, epsilon=epsilon,
        threads=threads,
    )  # fmt: skip
    return report_layer(adapter, inputs, radius=radius, options=options)


def report_layer(
    adapter: Adapter,
    inputs: Tensor | None = None,
    *,
    radius: float | None = None,
    options: ReportOptions | None = None,
) -> LayerBoundReport:
    """`layer_report` with its options as one validated `ReportOptions`."""
    options = (
        ReportOptions() if options is None else require_instance("options", options, ReportOptions)
    )
    with torch_threads(options.threads):
        return measure(adapter, inputs, radius, options)


def measure(
    adapter: Adapter,
    inputs: Tensor | None,
    radius: float | None,
    options: ReportOptions,
    prepared: Centres | None = None,
) -> LayerBoundReport:
    """The report of one layer under `options` (threads as they are): a certified router and local
    bound for a linear routed adapter, the chain bound for a non-linear one, else the reason there
    is none. `prepared`: the inputs as `local.Centres` when several layers share them."""
    a = require_adapter(adapter)
    kind = type(a)
    if not kind.linear_experts:
        return chain_report(open_layer(a, inputs, radius, options, routed=False))
    if kind.routing_kind in ("mask", "threshold") or kind.router_lipschitz == "refuted":
        return gate_report(open_layer(a, inputs, radius, options, routed=False))
    layer = open_layer(a, inputs, radius, options)
    layer.prepared = prepared
    return _measure(layer)


def _measure(layer: Layer) -> LayerBoundReport:
    """Certify, then run the sections that apply; every lower bound is checked against its bound."""
    try:
        with layer.timed("certified"):
            cert = certify_router(layer)
    except CertificateError as err:
        return uncertified(layer, str(err))
    rep = new_report(layer, cert)
    if not cert.dense:
        topk_section(layer, cert, rep)
    else:
        with input_checks(False):
            router_section(layer, cert, rep)
            head_section(layer, cert, rep)
            local_section(layer, cert, rep)
    rep.seconds = time.perf_counter() - layer.started
    rep.timings = dict(layer.timings)
    if cert.dense:
        check_consistent(rep)
    return rep


def arch_name(adapter: Adapter, latent: bool | None) -> str:
    """family[latent] / family[input] for a softmax router, the family alone otherwise."""
    fam = getattr(adapter, "family", type(adapter).__name__.lower())
    return fam if latent is None else f"{fam}[{'latent' if latent else 'input'}]"


def _skeleton(
    layer: Layer, latent: bool | None, num_experts: int, top_k: int | None
) -> LayerBoundReport:
    """A report with no bound yet: the layer's description and the domain (latent None: the gate is
    not a softmax router, described by its routing kind)."""
    a = layer.adapter
    o = layer.options
    router = type(a).routing_kind if latent is None else "latent" if latent else "input"
    return LayerBoundReport(
        arch=arch_name(a, latent), router=router, num_experts=num_experts,
        in_features=a.in_features, out_features=a.out_features, top_k=top_k,
        dtype=str(layer.dtype).replace("torch.", ""), domain=layer.domain, upper_product=None,
        upper_effective=None, upper_centred=None, lower=None, lower_jacobian=None,
        lower_pairs=None, norms={}, router_map=None,
        iterations={"power": o.iterations, "ascent": o.ascent_steps, "pairs": o.pair_steps},
    )  # fmt: skip


def new_report(layer: Layer, cert: RouterCertificate) -> LayerBoundReport:
    """The report with the certified router forms filled in (None for a top-k router)."""
    rb = cert.router
    rep = _skeleton(layer, cert.latent, rb.num_experts, cert.top_k)
    rep.norms = {**rb.factor_norms, "L": rb.logit_norm, "ΠL": rb.centred_norm}
    rep.talk = cert.talk
    if cert.dense:
        rep.upper_product, rep.upper_effective, rep.upper_centred = (
            rb.product, rb.effective, rb.centred
        )  # fmt: skip
        rep.router_map = MapReport(rb)
    return rep


def uncertified(layer: Layer, reason: str) -> LayerBoundReport:
    """The report when no certificate can be made: every bound None, the reason in `notes`."""
    from .certified import is_latent, logit_factors

    router = layer.adapter.router
    assert router is not None  # open_layer checked it
    rep = _skeleton(layer, is_latent(logit_factors(layer.work)), router.num_experts, router.top_k)
    rep.iterations = {}
    rep.notes.append(f"no certificate: {reason}")
    rep.seconds = time.perf_counter() - layer.started
    return rep


def chain_report(layer: Layer) -> LayerBoundReport:
    """A non-linear adapter (`linear_experts = False`): the certified global bound on Lip(Δ) from its
    `LipschitzChain` and the searched lower bound (chain.py); a router, if any, is not bounded here."""
    a, o = layer.work, layer.options
    rep = _skeleton(layer, None, a.num_experts, None)
    with layer.timed("chain_certified"):
        chain = require_chain(a)
        try:
            rep.chain = chain_bounds(chain)
        except CertificateError as err:
            rep.notes.append(f"no certificate: {err}")
    if rep.chain is not None:
        with layer.timed("chain_search"), input_checks(False):
            lower, points = chain_lower(
                layer.work, layer.w64, layer.domain, layer.centres, layer.radius, o.samples,
                o.iterations, o.ascent_steps, o.pair_steps, o.seed,
            )  # fmt: skip
        rep.chain.lower, rep.chain.samples, rep.samples = lower, points, points
        rep.chain.gap_ratio = lower / rep.chain.upper if rep.chain.upper > 0 else None
    rep.seconds = time.perf_counter() - layer.started
    rep.timings = dict(layer.timings)
    check_consistent(rep)
    return rep


def gate_report(layer: Layer) -> LayerBoundReport:
    """A gate the certified softmax bound does not cover (`routing_kind` mask or threshold, or
    `router_lipschitz = "refuted"`): no bound, and why."""
    a = layer.adapter
    kind = type(a)
    rep = _skeleton(layer, None, a.num_experts, getattr(a.config, "top_k", None))
    rep.iterations = {}
    why = {
        "mask": "g ∈ {0,1}^E jumps where the k-th and (k+1)-th scores tie: no Lipschitz constant",
        "threshold": "g_i = relu(p_i − τ(x)) / Σ_j relu(p_j − τ(x)) is not ½‖W‖-Lipschitz (refuted "
        "by a declared claim)",
    }.get(kind.routing_kind, "the architecture declares its gate not ½‖W‖-Lipschitz")
    rep.notes.append(
        f"no certified bound: routing_kind={kind.routing_kind!r}, "
        f"router_lipschitz={kind.router_lipschitz!r}: {why}; the router and local bounds (softmax "
        "Jacobian ½) do not apply"
    )
    rep.seconds = time.perf_counter() - layer.started
    return rep


def check_consistent(rep: LayerBoundReport) -> None:
    """Every searched lower bound is at most its certified upper bound, else CertificateError (a
    certified value below a value actually attained would be a refuted certificate)."""
    pairs: list[tuple[str, float | None, float | None]] = [("router", rep.lower, rep.upper)]
    if rep.head is not None:
        pairs.append(("head map", rep.head.lower, rep.head.upper))
    if rep.talk is not None and rep.talk_head_lower is not None:
        heads = zip(rep.talk_head_lower, rep.talk.head_centred, strict=True)
        pairs.extend((f"talk head {j}", lo_j, up_j) for j, (lo_j, up_j) in enumerate(heads))
    if rep.local is not None:
        pairs.append(("local Δ", rep.local.lower, rep.local.adaptive))
    if rep.chain is not None:
        pairs.append(("global Δ", rep.chain.lower, rep.chain.upper))
    for name, lo, up in pairs:
        if lo is not None and up is not None and not lo <= up:  # also catches NaN
            raise CertificateError(
                f"{rep.arch}: {name} certified upper bound {up!r} is below the searched lower "
                f"bound {lo!r}; the certificate is refuted"
            )
