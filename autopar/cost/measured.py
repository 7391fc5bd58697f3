"""Readers of measured kernel timings, for `autopar calibrate`: a CSV of the user's own GEMM
timings, nccl-tests output, and the tables the `aiconfigurator-core` package ships. Each
returns calibration rows (`gemm_table:`, `collectives.<link>:`, docs/calibration.md), so the
file `calibrate` writes is the one `--calibration` reads.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from ..errors import InputError
from ..spec.units import GEMM_DTYPES
from .calibration import moe_series
from .kernels import OPS

GEMM_COLUMNS = ("m", "n", "k", "dtype", "time_us")
DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32",
                 "float8": "fp8", "e4m3": "fp8"}
# bus bandwidth over algorithm bandwidth per op (nccl-tests' PERFORMANCE.md)
BUS_FACTOR = {"all_reduce": lambda n: 2 * (n - 1) / n, "all_gather": lambda n: (n - 1) / n,
              "reduce_scatter": lambda n: (n - 1) / n, "alltoall": lambda n: (n - 1) / n}


def _dtype(value: str) -> str | None:
    v = value.strip().lower()
    v = DTYPE_ALIASES.get(v, v)
    return v if v in GEMM_DTYPES else None


# --------------------------------------------------------------------------- GEMM CSV
def read_gemm_csv(text: str, source: str) -> list[dict]:
    """`m,n,k,dtype,time_us` rows (a header line first; other columns ignored)."""
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader, [])]
    missing = [c for c in GEMM_COLUMNS if c not in header]
    if missing:
        raise InputError(source, "line 1", f"header lacks column {missing[0]!r} (expected "
                                           f"{','.join(GEMM_COLUMNS)})")
    col = {c: header.index(c) for c in GEMM_COLUMNS}
    rows = []
    for line, rec in enumerate(reader, start=2):
        if not rec or all(not x.strip() for x in rec):
            continue
        if len(rec) < len(header):
            raise InputError(source, f"line {line}", f"{len(rec)} fields, the header has "
                                                     f"{len(header)}")
        row: dict = {}
        for c in ("m", "n", "k"):
            v = rec[col[c]].strip()
            if not v.isdigit() or int(v) < 1:
                raise InputError(source, f"line {line}, field {c}",
                                 f"expected a positive integer, got {v!r}")
            row[c] = int(v)
        dtype = _dtype(rec[col["dtype"]])
        if dtype is None:
            raise InputError(source, f"line {line}, field dtype", f"{rec[col['dtype']]!r} is "
                             f"not one of {', '.join(GEMM_DTYPES)}")
        row["dtype"] = dtype
        try:
            t = float(rec[col["time_us"]])
        except ValueError:
            t = float("nan")
        if not t > 0 or t == float("inf"):
            raise InputError(source, f"line {line}, field time_us",
                             f"expected a time in microseconds above 0, got "
                             f"{rec[col['time_us']].strip()!r}")
        row["time_us"] = t
        rows.append(row)
    if not rows:
        raise InputError(source, "", "no GEMM measurements after the header")
    return rows


# --------------------------------------------------------------------------- nccl-tests
_OP_RE = re.compile(r"(all_reduce|all_gather|reduce_scatter|alltoall)_perf")


def read_nccl_tests(text: str, source: str, op: str | None = None) -> tuple[str, list[dict]]:
    """(link, rows) of one nccl-tests run (`all_reduce_perf` etc.): the size and out-of-place
    busbw columns; the op from `op` or the file's header, the group from its `Rank` lines
    (or nGpus), the link `inter` when the ranks sit on more than one host."""
    lines = text.splitlines()
    if op is None:
        found = next((m.group(1) for ln in lines if ln.startswith("#")
                      for m in [_OP_RE.search(ln)] if m), None)
        if found is None:
            raise InputError(source, "", "cannot tell the collective from the header; give "
                             f"--nccl OP=FILE with OP one of {', '.join(OPS)}")
        op = found
    hosts = [m.group(1) for ln in lines
             for m in [re.match(r"#\s+Rank\s+\d+\s.*?\son\s+(\S+)\s+device", ln)] if m]
    group = len(hosts)
    if not group:
        m = re.search(r"nGpus\s+(\d+)", text)
        group = int(m.group(1)) if m else 0
    if group < 2:
        raise InputError(source, "", "fewer than 2 ranks (no '#  Rank' lines or nGpus)")
    head = next((ln.lstrip("#").split() for ln in lines
                 if ln.startswith("#") and "size" in ln.split() and "busbw" in ln.split()), None)
    if head is None:
        raise InputError(source, "", "no column header with 'size' and 'busbw'")
    i_size, i_bus = head.index("size"), head.index("busbw")
    rows = []
    for n, ln in enumerate(lines, start=1):
        tok = ln.split()
        if not tok or ln.lstrip().startswith("#") or not tok[0].isdigit():
            continue
        try:
            size, bus = int(tok[i_size]), float(tok[i_bus])
        except (IndexError, ValueError):
            raise InputError(source, f"line {n}", "expected the size and busbw columns of "
                                                  "the header") from None
        if size > 0 and bus > 0:
            rows.append({"op": op, "group": group, "bytes": size, "busbw_gbps": bus})
    if not rows:
        raise InputError(source, "", "no measurements with a size and a bus bandwidth above 0")
    return ("inter" if len(set(hosts)) > 1 else "intra"), rows


# --------------------------------------------------------------------------- aiconfigurator
def aiconfigurator_root() -> Path | None:
    """The installed `aiconfigurator-core` package's `systems/data` folder, or None."""
    import importlib.util

    spec = importlib.util.find_spec("aiconfigurator_core")
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent / "systems" / "data"


def _version_key(name: str) -> tuple:
    return tuple(int(x) if x.isdigit() else -1 for x in re.split(r"[.a-z]+", name) if x)


def _table(folder: Path, stem: str) -> Path | None:
    """The newest version's table `stem` (.parquet, or the older .txt / .csv form)."""
    best = None
    for d in sorted((p for p in folder.glob("*") if p.is_dir()), key=lambda p: _version_key(
            p.name)):
        for ext in (".parquet", ".txt", ".csv"):
            if (d / f"{stem}{ext}").is_file():
                best = d / f"{stem}{ext}"
                break
    return best


def _records(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq  # comes with aiconfigurator-core
        except ImportError:
            raise InputError(str(path), "", "reading parquet needs pyarrow: pip install "
                                            "'autopar[calibrate]'") from None
        return pq.read_table(path).to_pylist()
    return list(csv.DictReader(io.StringIO(path.read_text())))


def read_aiconfigurator(system: str, root: Path,
                        m_values: str = "pow2") -> tuple[list[dict], dict[str, list[dict]]]:
    """GEMM rows (the trtllm table, else any framework's; m on powers of two unless
    m_values is "all") and intra-node collective rows (nccl) of one aiconfigurator system."""
    base = root / system
    if not base.is_dir():
        known = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise InputError(str(root), "", f"no system {system!r}; known: {', '.join(known)}")
    src = str(base)
    gemm_dir = base / "gemm"
    frameworks = sorted(gemm_dir.glob("*"), key=lambda p: (p.name != "trtllm", p.name))
    path = next((t for f in frameworks for t in [_table(f, "gemm_perf")] if t), None)
    gemm = []
    for r in _records(path) if path else []:
        dtype, m = _dtype(str(r["gemm_dtype"])), int(r["m"])
        if dtype is None or (m_values == "pow2" and m & (m - 1)):
            continue  # nvfp4 and the like: no autopar GEMM dtype
        gemm.append({"m": m, "n": int(r["n"]), "k": int(r["k"]), "dtype": dtype,
                     "time_us": round(float(r["latency"]) * 1e3, 4)})  # latency in ms
    comm = _table(base / "comm" / "nccl", "nccl_perf")
    colls = []
    for r in _records(comm) if comm else []:
        op, n = str(r["op_name"]), int(r["num_gpus"])
        if op not in OPS or str(r["nccl_dtype"]) != "half" or n < 2:
            continue
        nbytes = int(r["message_size"]) * 2  # elements of the whole buffer, as nccl-tests
        t = float(r["latency"]) * 1e-3
        colls.append({"op": op, "group": n, "bytes": nbytes,
                      "busbw_gbps": round(nbytes / t * BUS_FACTOR[op](n) / 1e9, 3)})
    if not gemm and not colls:
        raise InputError(src, "", "no GEMM or NCCL table found")
    return gemm, ({"intra": colls} if colls else {})


MOE_DTYPE_NAMES = {"bfloat16": "bf16", "float16": "fp16", "fp8": "fp8", "fp8_block": "fp8_block",
                   "nvfp4": "nvfp4"}


def moe_table_path(system: str, root: Path, framework: str = "vllm") -> Path | None:
    """The newest `moe_perf` table of one framework's fused-MoE measurements."""
    return _table(root / system / "moe" / framework, "moe_perf")


def read_aiconfigurator_moe(system: str, root: Path, framework: str = "vllm",
                            tokens: str = "pow2") -> list[dict]:
    """Fused-MoE rows (`moe_table:`, docs/calibration.md) of one aiconfigurator system and
    framework: balanced routing only (autopar applies its own load imbalance); where several
    kernels measured the same dtype, shape, layout and tokens, the one with the most
    measurements of that dtype (the framework's main path for it) gives the row; token counts
    on powers of two unless `tokens` is "all"."""
    path = moe_table_path(system, root, framework)
    if path is None:
        return []
    recs = [r for r in _records(path) if str(r["distribution"]) == "balanced"
            and str(r["moe_dtype"]) in MOE_DTYPE_NAMES]
    count: dict[tuple[str, str], int] = {}
    for r in recs:
        key = (str(r["moe_dtype"]), str(r["kernel_source"]))
        count[key] = count.get(key, 0) + 1
    rows: dict[tuple, tuple[int, dict]] = {}
    for r in recs:
        d, n = str(r["moe_dtype"]), int(r["num_tokens"])
        e, ep = int(r["num_experts"]), int(r["moe_ep_size"])
        if e % ep or (tokens == "pow2" and n & (n - 1)):
            continue
        row = {"hidden": int(r["hidden_size"]), "inter": int(r["inter_size"]),
               "topk": int(r["topk"]), "experts": e, "tp": int(r["moe_tp_size"]), "ep": ep,
               "tokens": n, "dtype": MOE_DTYPE_NAMES[d],
               "time_us": round(float(r["latency"]) * 1e3, 3)}
        key = tuple(row[c] for c in ("dtype", "hidden", "inter", "topk", "experts", "tp", "ep",
                                     "tokens"))
        rank = count[(d, str(r["kernel_source"]))]
        if key not in rows or rank > rows[key][0]:
            rows[key] = (rank, row)
    return [rows[k][1] for k in sorted(rows)]


def calibration_data(gemm: list[dict], colls: dict[str, list[dict]], notes: str,
                     moe: list[dict] | None = None) -> dict:
    """The calibration file's content (docs/calibration.md), rows sorted, duplicates (the
    same shape or size measured twice) resolved to the last measurement."""
    out: dict = {"notes": notes}
    if gemm:
        by_key = {(r["dtype"], r["m"], r["n"], r["k"]): r for r in gemm}
        out["gemm_table"] = [by_key[k] for k in sorted(by_key)]
    if colls:
        out["collectives"] = {}
        for link, rows in sorted(colls.items()):
            by_key = {(r["op"], r["group"], r["bytes"]): r for r in rows}
            out["collectives"][link] = [by_key[k] for k in sorted(by_key)]
    if moe:
        out["moe_table"] = moe_series(moe)
    return out
