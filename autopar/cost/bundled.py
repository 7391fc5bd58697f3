"""The measured kernel tables autopar ships (`--calibration bundled`): compact bf16 / fp8 GEMM,
NCCL and vLLM fused-MoE tables per GPU type, derived from aiconfigurator-core's measurements by
benchmarks/bundle_kernels.py into autopar/data/kernels/ (its NOTICE.md: provenance, licence).

They are the default calibration of a GPU type that has them (`default_calibration`); the
name `defaults` keeps the catalogue's flat fractions instead, `bundled` insists on tables.
"""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..errors import InputError
from ..spec.datafile import read_text
from .calibration import MOE_COLUMNS, Calibration, moe_series, parse_calibration
from .measured import GEMM_COLUMNS, read_gemm_csv

BUNDLED = "bundled"  # the --calibration value that selects these tables
DEFAULTS = "defaults"  # the --calibration value that keeps the flat fractions
NCCL_COLUMNS = ("link", "op", "group", "bytes", "busbw_gbps")
SOURCE = "--calibration bundled"


def bundle_dir() -> Path:
    return Path(str(resources.files("autopar"))) / "data" / "kernels"


@lru_cache(maxsize=1)
def bundled_index() -> dict[str, tuple[str, str]]:
    """{GPU type: (aiconfigurator system, provenance)} of the shipped tables."""
    path = bundle_dir() / "index.csv"
    rows = list(csv.DictReader(io.StringIO(read_text(path))))
    return {r["gpu"]: (r["system"], r["provenance"]) for r in rows}


def default_calibration(gpu: str) -> Calibration:
    """What a problem plans with when no calibration is given: the shipped tables of GPU type
    `gpu` where there are some, else the flat fractions (Calibration())."""
    return bundled_calibration(gpu) if gpu in bundled_index() else Calibration()


@lru_cache(maxsize=16)
def bundled_calibration(gpu: str) -> Calibration:
    """The default calibration with the shipped GEMM and NCCL tables of GPU type `gpu`; its
    source names them and their provenance. An InputError naming the GPU and the types that
    have tables when `gpu` has none. The rows go through `parse_calibration`, so shipped
    tables get the same range and duplicate checks as a user's calibration file."""
    index = bundled_index()
    if gpu not in index:
        raise InputError(SOURCE, "", f"no bundled kernel tables for GPU {gpu}; bundled: "
                                     f"{', '.join(sorted(index))}")
    _, provenance = index[gpu]
    stem = bundle_dir() / gpu.lower()
    gemm_path, nccl_path, moe_path = (f"{stem}-{x}.csv" for x in ("gemm", "nccl", "moe"))
    data = {"gemm_table": read_gemm_csv(read_text(gemm_path), gemm_path),
            "collectives": _nccl_rows(read_text(nccl_path), nccl_path)}
    if Path(moe_path).is_file():
        data["moe_table"] = _moe_rows(read_text(moe_path), moe_path)
    cal = parse_calibration(data, f"{gemm_path}, {nccl_path}, {moe_path}")
    return replace(cal, source=f"{BUNDLED}: {provenance}")


def _nccl_rows(text: str, path: str) -> dict[str, list[dict]]:
    """`link,op,group,bytes,busbw_gbps` rows as the calibration file's `collectives` rows."""
    out: dict[str, list[dict]] = {}
    for line, r in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        try:
            link = r["link"]
            row = {"op": r["op"], "group": int(r["group"]), "bytes": float(r["bytes"]),
                   "busbw_gbps": float(r["busbw_gbps"])}
        except (KeyError, TypeError, ValueError):
            raise InputError(path, f"line {line}", f"expected the columns "
                             f"{','.join(NCCL_COLUMNS)}") from None
        out.setdefault(link, []).append(row)
    return out


def _moe_rows(text: str, path: str) -> list[dict]:
    """`hidden,inter,topk,experts,tp,ep,tokens,dtype,time_us` rows as `moe_table` series (the
    ranges are checked by parse_calibration)."""
    out = []
    for line, r in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        try:
            row: dict = {c: int(r[c]) for c in MOE_COLUMNS[:7]}
            row.update(dtype=r["dtype"], time_us=float(r["time_us"]))
        except (KeyError, TypeError, ValueError):
            raise InputError(path, f"line {line}", f"expected the columns "
                             f"{','.join(MOE_COLUMNS)}") from None
        out.append(row)
    return moe_series(out)


__all__ = ["BUNDLED", "DEFAULTS", "GEMM_COLUMNS", "MOE_COLUMNS", "NCCL_COLUMNS", "bundle_dir",
           "bundled_calibration", "bundled_index", "default_calibration"]
