"""Derive the A100 GEMM-efficiency default from one public end-to-end measurement.

Single-GPU microbenchmarks overstate what GEMMs sustain inside a training job (the MAMF
table's best A100 shape reaches 85.9% of peak). The simplest published Megatron run on A100 is
Korthikanti et al. 2022's 22B model on one DGX node (TP 8, one micro-batch of 4, no pipeline,
no data parallelism, full recompute): 1.42 s per iteration. This script finds the GEMM
efficiency (the `gemm_peak` of the size curve) at which the cost model reproduces it; the
result is the `gemm_tflops` of A100-SXM4-80GB in autopar/data/gpus.yaml. Every other run in
`megatron_runs.yaml` is held out.

    python benchmarks/validation/fit_a100_gemm.py
"""

from __future__ import annotations

from dataclasses import replace

from megatron_table1 import even_cut, problem, published, runs

from autopar.cost.calibration import Calibration
from autopar.cost.evaluate import evaluate
from autopar.cost.layer import MoEState


def step_time(gemm_peak: float, r: dict) -> float:
    p = problem(r, 2022)
    p = replace(p, calib=Calibration(gemm_peak=gemm_peak))
    ev = evaluate(p, published(r), even_cut(r["layers"], r["pp"]), [MoEState()] * r["layers"])
    return ev.step_time


def fit(r: dict, lo: float = 0.3, hi: float = 1.0) -> float:
    """Bisection: the step time falls as the efficiency rises."""
    for _ in range(60):
        mid = (lo + hi) / 2
        if step_time(mid, r) > r["iteration_s"]:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def anchor() -> dict:
    """The 22B full-recompute row, the one run the default is fitted on."""
    return next(r for r in runs("korthikanti2022")
                if r["name"] == "22B" and r.get("recompute", "full") == "full")


def main() -> None:
    eff = fit(anchor())
    print(f"gemm_peak {eff:.4f} -> gemm_tflops {eff * 312:.1f} (A100 bf16/fp16 peak 312)")


if __name__ == "__main__":
    main()
