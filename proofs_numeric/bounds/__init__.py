"""Certified and empirical bounds on routers and adapters (docs/bounds.md).

    from proofs_numeric.bounds import layer_report, routing_stats
    rep = layer_report(adapter, inputs, radius=0.5)   # LayerBoundReport; rep.to_dict(), print(rep)
    reps = model_report(model, {name: inputs})        # every adapted layer, grouped by shape
    stats = routing_stats(adapter.routing(inputs))    # RoutingStats

Upper bounds are certified (exact spectral norms, or certified intervals, in float64 with a stated
rounding margin); lower bounds are measured (Jacobian norms and pair ratios found by search).
"""

from .certified import RouterBounds, TalkBounds, head_bounds, router_bounds, talk_bounds
from .domain import Domain, NoRouterError, RoutingWeightsError
from .factors import ExpertFactors, expert_factors
from .local import LocalBounds, local_bounds
from .model import ModelBoundReport, model_report
from .norms import stack_norms
from .options import ReportOptions
from .report import layer_report, report_layer
from .results import LayerBoundReport, MapReport
from .spectral import CERT_RTOL, SOFTMAX_LIP, SpectralNorm, softmax_jacobian, spectral_norm
from .stats import RoutingStats, routing_stats
from .talk import averaging_talk, reference_init_amplification
from .topk import TopKWitness, topk_witness

__all__ = [
    "CERT_RTOL",
    "SOFTMAX_LIP",
    "Domain",
    "ExpertFactors",
    "LayerBoundReport",
    "LocalBounds",
    "MapReport",
    "ModelBoundReport",
    "NoRouterError",
    "ReportOptions",
    "RouterBounds",
    "RoutingStats",
    "RoutingWeightsError",
    "SpectralNorm",
    "TalkBounds",
    "TopKWitness",
    "averaging_talk",
    "expert_factors",
    "head_bounds",
    "layer_report",
    "local_bounds",
    "model_report",
    "reference_init_amplification",
    "report_layer",
    "router_bounds",
    "routing_stats",
    "softmax_jacobian",
    "spectral_norm",
    "stack_norms",
    "talk_bounds",
    "topk_witness",
]
