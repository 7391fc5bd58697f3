"""The measured kernel tables autopar ships (`--calibration bundled`): compact bf16 / fp8 GEMM
and NCCL tables per GPU type, derived from aiconfigurator-core's measurements by
benchmarks/bundle_kernels.py into autopar/data/kernels/ (its NOTICE.md: provenance, licence).

Opt-in: without `bundled` nothing here is read and the defaults stay as they are.
"""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from importlib import resources
from pathlib import Path

from ..errors import InputError
from ..spec.datafile import read_text
from .calibration import GB, LINKS, Calibration
from .kernels import OPS, BusTable, GemmTable, KernelTables
from .measured import GEMM_COLUMNS, read_gemm_csv

BUNDLED = "bundled"  # the --calibration value that selects these tables
NCCL_COLUMNS = ("link", "op", "group", "bytes", "busbw_gbps")
SOURCE = "--calibration bundled"


def bundle_dir() -> Path:
    return Path(str(resources.files("autopar"))) / "data" / "kernels"


def bundled_index() -> dict[str, tuple[str, str]]:
    """{GPU type: (aiconfigurator system, provenance)} of the shipped tables."""
    path = bundle_dir() / "index.csv"
    rows = list(csv.DictReader(io.StringIO(read_text(path))))
    return {r["gpu"]: (r["system"], r["provenance"]) for r in rows}


def bundled_calibration(gpu: str) -> Calibration:
    """The default calibration with the shipped GEMM and NCCL tables of GPU type `gpu`; its
    source names them and their provenance. An InputError naming the GPU and the types that
    have tables when `gpu` has none."""
    index = bundled_index()
    if gpu not in index:
        raise InputError(SOURCE, "", f"no bundled kernel tables for GPU {gpu}; bundled: "
                                     f"{', '.join(sorted(index))}")
    system, provenance = index[gpu]
    stem = bundle_dir() / gpu.lower()
    gemm_path, nccl_path = f"{stem}-gemm.csv", f"{stem}-nccl.csv"
    by_dtype: dict[str, list] = {}
    for r in read_gemm_csv(read_text(gemm_path), gemm_path):
        by_dtype.setdefault(r["dtype"], []).append((r["m"], r["n"], r["k"],
                                                    r["time_us"] * 1e-6))
    gemm = {d: GemmTable(tuple(sorted(rows))) for d, rows in by_dtype.items()}
    colls: dict[tuple[str, str], list] = {}
    for line, r in enumerate(csv.DictReader(io.StringIO(read_text(nccl_path))), start=2):
        try:
            op, link = r["op"], r["link"]
            row = (int(r["group"]), float(r["bytes"]), float(r["busbw_gbps"]) * GB)
        except (KeyError, TypeError, ValueError):
            raise InputError(nccl_path, f"line {line}", f"expected the columns "
                             f"{','.join(NCCL_COLUMNS)}") from None
        if op not in OPS or link not in LINKS or row[0] < 2 or row[1] <= 0 or row[2] <= 0:
            raise InputError(nccl_path, f"line {line}", "op, link, group or a size out of "
                                                        "range")
        colls.setdefault((op, link), []).append(row)
    tables = KernelTables(gemm, {k: BusTable(tuple(sorted(v))) for k, v in colls.items()})
    return replace(Calibration(), kernels=tables, source=f"{BUNDLED}: {provenance}")


__all__ = ["BUNDLED", "GEMM_COLUMNS", "NCCL_COLUMNS", "bundle_dir", "bundled_calibration",
           "bundled_index"]
