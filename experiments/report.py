"""The per-layer table of `moelora bounds` (rich).

It reads the `measure.measure_layer` results of each adapted layer; nothing is recomputed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from rich.table import Table

AMP_KEY = "0.1"  # the noise scale shown in tables


def short_name(layer: str) -> str:
    """'encoder.encoder.layer.3.attention.self.query' -> 'L3.query' (any model: last index + leaf)."""
    idx = re.findall(r"\.(\d+)\.", f".{layer}.")
    leaf = layer.rsplit(".", 1)[-1]
    return f"L{idx[-1]}.{leaf}" if idx else leaf


def _fmt(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}g}"


def layer_row(m: Mapping[str, Any]) -> dict[str, float | None]:
    """The numbers shown for one layer (None where the architecture has no router or no T)."""
    b = m.get("bounds") or {}
    amp = (m.get("amplification") or {}).get(AMP_KEY) or {}
    amp_all = [v["max"] for v in (m.get("amplification") or {}).values()]
    talk = b.get("talk") or {}
    r = m.get("routing") or {}
    return {
        "centred": b.get("upper_centred"),
        "effective": b.get("upper_effective"),
        "product": b.get("upper_product"),
        "lower": b.get("lower"),
        "gap": b.get("gap_ratio"),
        "amp_mean": amp.get("mean"),
        "amp_max": max(amp_all) if amp_all else None,
        "entropy": r.get("entropy_normalised"),
        "max_share": r.get("max_load_share"),
        "talk_norm": talk.get("talk_norm"),
    }


def bounds_table(label: str, layers: Mapping[str, Any], caption: str = "") -> Table:
    t = Table(title=f"{label}: per-layer router bounds", caption=caption or None)
    for c in (
        "layer",
        "Lip(g) ≤",
        "effective",
        "product",
        "found ≥",
        "gap",
        f"amp ε={AMP_KEY}",
        "amp max",
        "entropy/logE",
        "max load",
        "‖T‖₂",
    ):
        t.add_column(c, justify="left" if c == "layer" else "right")
    for name, m in layers.items():
        r = layer_row(m)
        t.add_row(short_name(name), *(_fmt(r[k]) for k in ("centred", "effective", "product", "lower", "gap",
                  "amp_mean", "amp_max", "entropy", "max_share", "talk_norm")))  # fmt: skip
    return t
