"""Achieved-efficiency figures the cost model multiplies peaks by, with their sources.

Defaults are public measurements (cited below and in docs/cost-model.md); a calibration YAML
overrides any of them, so a user can plug in GEMM and collective numbers measured on their own
cluster without touching code.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from .fields import Fields


@dataclass(frozen=True)
class Calibration:
    # GEMM: eff = gemm_peak * prod(d / (d + gemm_half_dim)) over the three GEMM dims, so small
    # or skinny GEMMs lose efficiency; large bf16 GEMMs reach ~70-80% of peak on A100/H100.
    gemm_peak: float = 0.75
    gemm_half_dim: float = 64.0
    attention_eff: float = 0.55  # fused (flash) attention, fraction of dense peak
    hbm_eff: float = 0.80  # achieved fraction of HBM bandwidth for streaming kernels
    # Achieved fraction of nominal link rate (NCCL bus bandwidth): NVLink ring ~370 of 450 GB/s
    # (nccl-tests #212); NDR IB 46-48 of 50 GB/s (nccl-tests #290).
    link_eff: dict[str, float] = field(
        default_factory=lambda: {"local": 1.0, "intra": 0.82, "inter": 0.92}
    )
    source: str = "defaults"

    def gemm_eff(self, m: float, n: float, k: float) -> float:
        h = self.gemm_half_dim
        return self.gemm_peak * (m / (m + h)) * (n / (n + h)) * (k / (k + h))


def parse_calibration(data: Any, source: str) -> Calibration:
    f = Fields(source, data)
    base = Calibration()
    values: dict[str, Any] = {"source": source}
    for fl in fields(Calibration):
        if fl.name in ("link_eff", "source"):
            continue
        hi = 1.0 if fl.name != "gemm_half_dim" else 1e6
        v = f.float(fl.name, 0.0 if fl.name == "gemm_half_dim" else 1e-3, hi, default=None)
        if v is not None:
            values[fl.name] = v
    if f.has("link_eff"):
        g = f.section("link_eff")
        links = dict(base.link_eff)
        for k in ("local", "intra", "inter"):
            v = g.float(k, 1e-3, 1.0, default=None)
            if v is not None:
                links[k] = v
        g.finish()
        values["link_eff"] = links
    else:
        f.used.add("link_eff")
    f.text("notes")
    f.finish()
    return replace(base, **values)
