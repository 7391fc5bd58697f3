"""Derive the compact kernel tables autopar ships (`--calibration bundled`) from the
aiconfigurator-core package's measured tables, into autopar/data/kernels/.

For each GPU type: the bf16, fp8, fp8_block and nvfp4 (Blackwell only) GEMM timings of
aiconfigurator's TensorRT-LLM table on the power-of-two grid (m 1..32768, n and k
32..65536, powers of two only), its NCCL table (every op, group and size `autopar calibrate
--from-aiconfigurator` reads), and its vLLM fused-MoE table (balanced routing, token counts
on powers of two: what `autopar calibrate --from-aiconfigurator` reads with --moe-framework
vllm). Re-run with
a Python that has aiconfigurator-core installed:
    python benchmarks/bundle_kernels.py
benchmarks/kernel_holdout.py --bundled measures how far the compact tables are from the full
ones (results/kernel-holdout.md).
"""

from __future__ import annotations

import csv
import importlib.metadata
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from autopar.cost.bundled import GEMM_COLUMNS, MOE_COLUMNS, NCCL_COLUMNS, bundle_dir  # noqa: E402
from autopar.cost.measured import (  # noqa: E402
    _table,
    aiconfigurator_root,
    moe_table_path,
    read_aiconfigurator,
    read_aiconfigurator_moe,
)

# autopar GPU type -> aiconfigurator system
SYSTEMS = {"H100-SXM5-80GB": "h100_sxm", "H200-SXM-141GB": "h200_sxm", "B200": "b200_sxm"}
# bf16, per-tensor fp8 (delayed / tensorwise recipes), block-scaled fp8 (blockwise recipe),
# NVFP4 (nvfp4 serving checkpoints; measured on B200 only); aiconfigurator-core 0.12.0
# measured no MXFP8 GEMM, so the mxfp8 recipe keeps the curve
DTYPES = ("bf16", "fp8", "fp8_block", "nvfp4")


def pow2(x: int) -> bool:
    return x & (x - 1) == 0


def main() -> None:
    root = aiconfigurator_root()
    if root is None:
        sys.exit("needs aiconfigurator-core: pip install 'autopar[calibrate]'")
    version = importlib.metadata.version("aiconfigurator-core")
    out = bundle_dir()
    index = []
    for gpu, system in SYSTEMS.items():
        gemm, colls = read_aiconfigurator(system, root, "pow2")
        keep = sorted((r for r in gemm if r["dtype"] in DTYPES and pow2(r["n"])
                       and pow2(r["k"])), key=lambda r: (r["dtype"], r["m"], r["n"], r["k"]))
        stem = gpu.lower()
        with open(out / f"{stem}-gemm.csv", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(GEMM_COLUMNS)
            w.writerows([r[c] for c in GEMM_COLUMNS] for r in keep)
        rows = sorted(({"link": link, **r} for link, rs in colls.items() for r in rs),
                      key=lambda r: tuple(r[c] for c in NCCL_COLUMNS[:4]))
        with open(out / f"{stem}-nccl.csv", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(NCCL_COLUMNS)
            w.writerows([r[c] for c in NCCL_COLUMNS] for r in rows)
        moe = read_aiconfigurator_moe(system, root, "vllm", "pow2")
        with open(out / f"{stem}-moe.csv", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(MOE_COLUMNS)
            w.writerows([r[c] for c in MOE_COLUMNS] for r in moe)
        files = [str(p.relative_to(root.parent.parent.parent)) for p in (
            _table(root / system / "gemm" / "trtllm", "gemm_perf"),
            _table(root / system / "comm" / "nccl", "nccl_perf"),
            moe_table_path(system, root, "vllm"))]
        index.append((gpu, system, f"aiconfigurator-core {version} {system} (Apache-2.0): "
                                   + ", ".join(files)))
        print(f"{gpu}: {len(keep)} GEMM shapes, {len(rows)} collective sizes, {len(moe)} "
              f"fused-MoE layers")
    with open(out / "index.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(("gpu", "system", "provenance"))
        w.writerows(index)


if __name__ == "__main__":
    main()
