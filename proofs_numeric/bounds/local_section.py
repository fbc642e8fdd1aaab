"""The local-bound section of a layer report: the certified local bounds on Δ on the balls B(c_k, R)
(local.py) and the searched lower bound at the centres with the largest certified bound."""

from __future__ import annotations

import torch
from torch import Tensor

from moelora_core.errors import ConfigError

from ..search import Probe, Region, SearchResult, search
from .factors import check_factors, expert_factors
from .layer import Layer, RouterCertificate
from .local import LocalBounds, local_bounds
from .results import LayerBoundReport
from .rigorous import CertificateError
from .searches import delta_fn, random_in_balls
from .spectral import F64


def local_section(layer: Layer, cert: RouterCertificate, rep: LayerBoundReport) -> None:
    """Fills `rep.local` (or says in `rep.notes` why there is no local bound)."""
    if not layer.options.local:
        return
    if layer.centres is None:
        rep.notes.append(
            "no local bound on Δ: Δ is not globally Lipschitz (‖DΔ(y)‖ grows like ‖y‖); "
            "give inputs or a radius"
        )
        return
    with layer.timed("local_certified"):
        certified = _certified(layer, cert, rep)
    if certified is None:
        return
    lb, per_centre = certified
    with layer.timed("local_search"):
        res = _search(layer, per_centre)
    gap = res.value / lb.adaptive if lb.adaptive > 0 else None
    rep.local = LocalBounds(
        **{**lb.__dict__, "lower": res.value, "gap_ratio": gap, "samples": res.points}
    )


def _certified(
    layer: Layer, cert: RouterCertificate, rep: LayerBoundReport
) -> tuple[LocalBounds, Tensor] | None:
    """The certified local bounds and K_adapt per centre (N,), or None with the reason noted."""
    work, seed = layer.work, layer.options.seed
    try:
        fac = expert_factors(work)
    except ConfigError as e:
        rep.notes.append(f"no local bound on Δ: {e}")
        return None
    check_factors(work, fac, seed=seed)
    assert layer.centres is not None
    try:
        centres = layer.prepared if layer.prepared is not None else layer.centres
        return local_bounds(fac, centres, layer.radius or 0.0, cert.factors)
    except CertificateError as e:
        rep.notes.append(f"no local bound on Δ: no certificate: {e}")
        return None


def _search(layer: Layer, per_centre: Tensor) -> SearchResult:
    """The search for a large Jacobian norm / pair ratio of Δ in the balls around the `local_samples`
    centres with the largest certified bound (at those centres only when R = 0)."""
    o, centres, R = layer.options, layer.centres, layer.radius or 0.0
    assert centres is not None
    k = min(o.local_samples, centres.shape[0])
    sel = torch.topk(per_centre, k).indices.to(centres.device)
    C = centres[sel]
    dtype, device = layer.dtype, layer.device
    if R > 0:
        gen = torch.Generator(device="cpu").manual_seed(o.seed + 7)
        rnd, ridx = random_in_balls(C.cpu(), R, o.local_samples, gen)
        starts = torch.cat([C.to(F64).cpu(), rnd])
        region = Region(C.to(dtype), torch.cat([torch.arange(k), ridx]).to(device), R)
        ascent, pairs = o.ascent_steps, o.pair_steps
    else:
        starts, region, ascent, pairs = C.to(F64).cpu(), Region(None, None, 0.0), 0, 0
    return search(
        Probe(delta_fn(layer.work), True), Probe(delta_fn(layer.w64), True),
        starts.to(dtype=dtype, device=device), region, iterations=o.iterations, ascent=ascent,
        pair_steps=pairs, keep=o.local_samples, seed=o.seed + 3,
    )  # fmt: skip
