"""The sections of a layer report, each filling its part of a `LayerBoundReport`:

* `topk_section`: a top-k router is discontinuous: the witness (topk.py), no bound;
* `router_section`: the searched lower bound on Lip(g) over the domain (searches.py) and the
  reasons the certified forms cannot be tight (certified.py);
* `head_section`: latent routers: the head map h ↦ g (`head_report`) and, for a talking module, the
  measured per-head sensitivities (`talk_head_lower`);
* `local_section` (local_section.py): the local bound on Δ on balls around the inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from moelora_core.adapter import Adapter

from ..search import Probe, jacobians
from .certified import RouterBounds, effective_matrix, logit_factors, tightness_reasons
from .domain import Domain
from .layer import Layer, RouterCertificate
from .results import LayerBoundReport, MapReport
from .searches import head_fn, routing_fn, run_search, starting_points
from .spectral import F64
from .topk import topk_witness


def topk_section(layer: Layer, cert: RouterCertificate, rep: LayerBoundReport) -> None:
    """A top-k router (k < E): the discontinuity witness instead of numbers."""
    top_k = cert.top_k
    assert top_k is not None
    opts = layer.options
    with layer.timed("topk_witness"):
        rep.topk_witness = topk_witness(layer.w64, cert.L, top_k, float(opts.epsilon), opts.seed)
    rep.not_tight.append(
        f"top-{top_k} routing is discontinuous where the k-th and (k+1)-th logits tie: no finite "
        "Lipschitz constant exists (see the witness); no bound is reported"
    )
    if rep.topk_witness is None:
        rep.notes.append("no witness: all rows of Π L are equal, so g is constant")


def router_section(layer: Layer, cert: RouterCertificate, rep: LayerBoundReport) -> None:
    """The searched lower bound on Lip(g) (Jacobian norms and pair ratios, float64 re-evaluated)."""
    o = layer.options
    with layer.timed("router_search"):
        res = run_search(
            routing_fn(layer.work), routing_fn(layer.w64), layer.domain, layer.centres, cert.L,
            layer.radius or 0.0, layer.dtype, layer.device, samples=o.samples,
            iterations=o.iterations, ascent=o.ascent_steps, pairs=o.pair_steps, seed=o.seed,
        )  # fmt: skip
        rep.lower, rep.lower_jacobian, rep.lower_pairs = res.value, res.jacobian, res.pairs
        rep.samples = res.points
        assert rep.router_map is not None
        rep.router_map.lower, rep.router_map.samples = res.value, res.points
        rep.router_map.lower_jacobian, rep.router_map.lower_pairs = res.jacobian, res.pairs
        rep.not_tight.extend(tightness_reasons(cert.router, layer.domain))


def head_section(layer: Layer, cert: RouterCertificate, rep: LayerBoundReport) -> None:
    """Latent routers: the head map's bounds and search; a talking module's per-head lower bounds."""
    if cert.head is None:
        return
    o = layer.options
    with layer.timed("head_search"):
        rep.head = head_report(
            layer.work, layer.w64, cert.head, layer.domain, layer.centres, layer.radius,
            o.samples, o.iterations, o.seed,
        )  # fmt: skip
        if cert.talk is not None:
            rep.talk_head_lower = talk_head_lower(
                layer.work, layer.w64, layer.domain, layer.centres, layer.radius, o.samples, o.seed
            )


def latent_domain(
    work: Adapter, centres: Tensor | None, R: float | None
) -> tuple[Tensor | None, float]:
    """The head search domain: the latents A c_k, radius R ‖A‖₂ (contains A(B(c_k, R)))."""
    A = logit_factors(work)[0]
    if centres is None:
        return None, 0.0
    with torch.no_grad():
        H = A(centres)
    radius = 0.0
    if R:
        radius = R * float(torch.linalg.matrix_norm(A.dense().detach().to(F64), ord=2))
    return H, radius


def head_report(
    work: Adapter, w64: Adapter, hb: RouterBounds, domain: Domain, centres: Tensor | None,
    R: float | None, samples: int, iterations: int, seed: int,
) -> MapReport:  # fmt: skip
    """The head map h ↦ g of a latent router: its certified forms and the searched lower bound."""
    H = effective_matrix(logit_factors(work)[1:])
    Hc, radius = latent_domain(work, centres, R)
    ref = work.reference
    res = run_search(
        head_fn(work), head_fn(w64), domain, Hc, H, radius, ref.dtype, ref.device,
        samples=samples, iterations=iterations, ascent=4, pairs=4, seed=seed + 1,
    )  # fmt: skip
    return MapReport(hb, res.value, res.jacobian, res.pairs, res.points)


def talk_head_lower(
    work: Adapter, w64: Adapter, domain: Domain, centres: Tensor | None, R: float | None,
    samples: int, seed: int,
) -> list[float]:  # fmt: skip
    """Per head j: the largest norm of the head-map Jacobian restricted to head j's coordinates,
    from the exact Jacobians (E x r) at `samples` head-map starting points (heads of equal size
    r / E, as TalkLoRA's talking module mixes them)."""
    E = work.num_experts
    H = effective_matrix(logit_factors(work)[1:])
    d = H.shape[1] // E
    Hc, radius = latent_domain(work, centres, R)
    starts, _, _ = starting_points(domain, Hc, H, radius, samples, seed + 2)
    gen = torch.Generator(device="cpu").manual_seed(seed + 5)
    pick = torch.randperm(starts.shape[0], generator=gen)[:samples]
    X = starts[pick]
    X64 = X.to(dtype=F64, device=work.reference.device)
    J = jacobians(Probe(head_fn(w64), True), X64).detach().cpu()  # (S, E, r) float64
    Jh = J.unflatten(-1, (E, d)).permute(0, 2, 1, 3)  # (S, heads, E, d)
    return [float(v) for v in torch.linalg.matrix_norm(Jh, ord=2).max(dim=0).values]
