"""Achieved-efficiency figures the cost model multiplies peaks by, with their sources.

Defaults are public measurements (cited below, in the GPU catalogue and in docs/calibration.md);
a calibration YAML overrides any of them, so a user can plug in GEMM, attention and collective
numbers measured on their own cluster without touching code. Fields left at None are filled
from the GPU catalogue's measurements by `resolve` (the problem does this once), and fall back
to the generic figures below for a GPU the catalogue has not measured.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..spec.fields import Fields
from ..spec.units import GEMM_DTYPES
from .kernels import (
    MOE_DTYPES,
    OPS,
    BusTable,
    GemmTable,
    KernelTables,
    MoEShape,
    MoETable,
    Roofline,
)

if TYPE_CHECKING:
    from ..spec import GPUSpec

GB = 1e9
# Generic fallbacks for a GPU without measurements in the catalogue.
GENERIC_GEMM_PEAK = 0.75  # large bf16 GEMMs reach ~75-86% of peak (MAMF table, gpus.yaml)
GENERIC_INTRA_EFF = 0.82  # NVLink ring all-reduce ~370 of 450 GB/s on H100 (nccl-tests #212)
LINKS = ("local", "intra", "inter")


@dataclass(frozen=True)
class Calibration:
    # GEMM: eff = gemm_peak * prod(d / (d + gemm_half_dim)) over the three GEMM dims, so small
    # or skinny GEMMs lose efficiency. gemm_peak None: the GPU's measured MAMF fraction.
    gemm_peak: float | None = None
    gemm_half_dim: float = 64.0
    # Measured GEMMs: (GFLOP of one GEMM, achieved fraction of the 16-bit peak), sorted; when
    # given it replaces the curve, log-interpolated and clamped at the ends.
    gemm_table: tuple[tuple[float, float], ...] = ()
    attention_eff: float = 0.55  # fused (flash) attention, fraction of dense peak
    hbm_eff: float = 0.80  # achieved fraction of HBM bandwidth for streaming kernels
    # Shortest time a kernel occupies the GPU, however little it does (launch, ramp-up and
    # tail): what a one-token decode step is made of. aiconfigurator 0.12.0's H100 silicon
    # database times a one-token fused add + RMSNorm at 3.1 us (results/vs-aiconfigurator.md).
    kernel_floor_s: float = 3.0e-6
    # Achieved fraction of nominal link rate (NCCL bus bandwidth): NVLink from the catalogue's
    # measured all-reduce bus bandwidth (None until resolved); NDR IB 46-48 of 50 GB/s
    # (nccl-tests #290).
    link_eff: dict[str, float | None] = field(
        default_factory=lambda: {"local": 1.0, "intra": None, "inter": 0.92}
    )
    # Measured ring-collective bus bandwidth per link: {link: ((group, bytes, B/s), ...)};
    # it replaces the alpha-beta figures for all-reduce, reduce-scatter and all-gather.
    collectives: dict[str, tuple[tuple[int, float, float], ...]] = field(default_factory=dict)
    source: str = "defaults"
    # Measured GEMM (per dtype) and per-op collective tables (autopar.cost.kernels); they win
    # over everything above wherever they have the dtype or the (op, link).
    kernels: KernelTables = field(default_factory=KernelTables)

    def gemm_eff(self, m: float, n: float, k: float, dtype: str | None = None,
                 peak: float | None = None) -> float:
        """Achieved fraction of peak (`peak`: the FLOP/s of `dtype`) of an m x k by k x n
        GEMM: a measured table of the dtype, else the GFLOP table, else the size curve."""
        table = self.kernels.gemm.get(dtype) if dtype else None
        if table is not None and peak:
            return min(1.0, table.flops_per_s(m, n, k) / peak)
        if self.gemm_table:
            return _interp_log(self.gemm_table, 2 * m * n * k / 1e9)
        h = self.gemm_half_dim
        peak = GENERIC_GEMM_PEAK if self.gemm_peak is None else self.gemm_peak
        return peak * (m / (m + h)) * (n / (n + h)) * (k / (k + h))

    def gemm_source(self, dtype: str) -> str:
        return "table" if dtype in self.kernels.gemm else "curve"

    def moe_time(self, dtype: str, shape: MoEShape, tp: int, ep: int, tokens: float,
                 roofline: Roofline) -> float | None:
        """Measured fused-MoE layer time (both expert GEMMs, activation, routing) of
        `tokens` entering the layer over an EP group of `ep` ranks with expert TP `tp`; None
        without a fused-MoE table of `dtype` (the experts then run as GEMMs)."""
        table = self.kernels.moe.get(dtype)
        return None if table is None else table.time_s(shape, tp, ep, tokens, roofline)

    def busbw(self, link: str, group: int, nbytes: float, op: str | None = None) -> float | None:
        """Measured bus bandwidth (B/s) of collective `op` of `nbytes` over `group` GPUs on
        `link`: the op's own table if measured; else (ring ops only) the op-less rows of the
        nearest measured group size, log-interpolated in message size; None without one."""
        own = self.kernels.collectives.get((op, link)) if op else None
        if own is not None:
            return own.busbw(group, nbytes)
        rows = self.collectives.get(link) if op != "alltoall" else None
        if not rows:
            return None
        sizes = sorted({r[0] for r in rows})
        g = min(sizes, key=lambda x: (abs(math.log(x / max(group, 1))), x))
        return _interp_log(tuple((r[1], r[2]) for r in rows if r[0] == g), nbytes)

    def link(self, name: str) -> float:
        v = self.link_eff.get(name)
        return GENERIC_INTRA_EFF if v is None else v

    def resolve(self, gpu: GPUSpec) -> Calibration:
        """Fill the fields left at None from the GPU catalogue's measurements."""
        changes: dict[str, Any] = {}
        if self.gemm_peak is None and gpu.gemm_eff is not None:
            changes["gemm_peak"] = gpu.gemm_eff
        if self.link_eff.get("intra") is None:
            changes["link_eff"] = {**self.link_eff, "intra": gpu.nvlink_eff or GENERIC_INTRA_EFF}
        return replace(self, **changes) if changes else self

    def echo(self, dtypes: tuple[str, ...], moe_shape: MoEShape | None = None,
             serving: bool = False) -> dict[str, Any]:
        """The plan's `inputs.calibration`: every figure, and where tables were given, how
        many rows each holds and which source the GEMMs of each of `dtypes` used; for a
        served MoE model with fused-MoE tables, whether its shape was measured."""
        out = asdict(replace(self, kernels=KernelTables()))
        del out["kernels"]
        out.update(self.kernels.summary())
        if self.kernels.gemm:
            out["gemm_source"] = {d: self.gemm_source(d) for d in sorted(set(dtypes))}
        if self.kernels.moe and moe_shape is not None and serving:
            out["moe_source"] = {d: self.kernels.moe[d].source(moe_shape) if d in
                                 self.kernels.moe else "gemm" for d in sorted(set(dtypes))}
        return out


def _interp_log(rows: tuple[tuple[float, float], ...], x: float) -> float:
    """Piecewise-linear in log(x) through sorted (x, y) rows, clamped at both ends."""
    xs = [r[0] for r in rows]
    if x <= xs[0]:
        return rows[0][1]
    if x >= xs[-1]:
        return rows[-1][1]
    i = bisect_left(xs, x)
    (x0, y0), (x1, y1) = rows[i - 1], rows[i]
    w = math.log(x / x0) / math.log(x1 / x0)
    return y0 + w * (y1 - y0)


def parse_calibration(data: Any, source: str) -> Calibration:
    f = Fields(source, data)
    values: dict[str, Any] = {"source": source}
    for name, lo, hi in (("gemm_peak", 1e-3, 1.0), ("gemm_half_dim", 0.0, 1e6),
                         ("attention_eff", 1e-3, 1.0), ("hbm_eff", 1e-3, 1.0)):
        v = f.float(name, lo, hi, default=None)
        if v is not None:
            values[name] = v
    floor_us = f.float("kernel_floor_us", 0.0, 1000.0, default=None)
    if floor_us is not None:
        values["kernel_floor_s"] = floor_us * 1e-6
    if f.has("gemm"):
        values["gemm_table"] = _gemm_rows(f, "gemm")
    else:
        f.used.add("gemm")
    if f.has("link_eff"):
        g = f.section("link_eff")
        links = dict(Calibration().link_eff)
        for k in LINKS:
            v = g.float(k, 1e-3, 1.0, default=None)
            if v is not None:
                links[k] = v
        g.finish()
        values["link_eff"] = links
    else:
        f.used.add("link_eff")
    gemm, colls, moe = {}, {}, {}
    if f.has("gemm_table"):
        gemm = _gemm_table(f, "gemm_table")
    else:
        f.used.add("gemm_table")
    if f.has("moe_table"):
        moe = _moe_table(f, "moe_table")
    else:
        f.used.add("moe_table")
    if f.has("collectives"):
        g = f.section("collectives")
        legacy = {}
        for k in LINKS:
            if g.has(k):
                plain, ops = _collective_rows(g, k)
                if plain:
                    legacy[k] = plain
                colls.update({(op, k): BusTable(rows) for op, rows in ops.items()})
        values["collectives"] = legacy
        g.finish()
    else:
        f.used.add("collectives")
    if gemm or colls or moe:
        values["kernels"] = KernelTables(gemm, colls, moe)
    f.text("notes")
    f.finish()
    return replace(Calibration(), **values)


def _rows(f: Fields, key: str, most: int = 10_000) -> list[Fields]:
    items = f.data[key]
    f.used.add(key)
    if not isinstance(items, list) or not items or len(items) > most:
        raise f.error(key, "expected a non-empty list of measurements")
    return [Fields(f.source, item, f"{f.field(key)}[{i}]") for i, item in enumerate(items)]


def _gemm_rows(f: Fields, key: str) -> tuple[tuple[float, float], ...]:
    """`gemm: [{gflop, efficiency}]`: achieved fraction of the 16-bit peak per GEMM size."""
    out = []
    for r in _rows(f, key):
        out.append((r.float("gflop", 1e-9, 1e9), r.float("efficiency", 1e-3, 1.0)))
        r.finish()
    return _sorted_unique(f, key, out)


def _gemm_table(f: Fields, key: str) -> dict[str, GemmTable]:
    """`gemm_table: [{m, n, k, dtype, time_us}]`: measured GEMM times per dtype."""
    out: dict[str, dict] = {}
    for r in _rows(f, key, 500_000):
        shape = (r.int("m", 1, 10**8), r.int("n", 1, 10**8), r.int("k", 1, 10**8))
        dtype = r.str("dtype", GEMM_DTYPES)  # fp8_block / mxfp8: block-scaled fp8 GEMMs
        t = r.float("time_us", 1e-6, 1e12) * 1e-6
        r.finish()
        if shape in out.setdefault(dtype, {}):
            raise r.error("m", f"two measurements of {dtype} {'x'.join(map(str, shape))}")
        out[dtype][shape] = t
    return {d: GemmTable(tuple(sorted((*s, t) for s, t in rows.items())))
            for d, rows in out.items()}


MOE_COLUMNS = ("hidden", "inter", "topk", "experts", "tp", "ep", "tokens", "dtype", "time_us")
MOE_KEY = ("dtype", "hidden", "inter", "topk", "experts", "tp", "ep")  # one series each


def moe_series(rows: list[dict]) -> list[dict]:
    """Flat fused-MoE rows (one per token count, MOE_COLUMNS) as the calibration file's
    `moe_table` series: one per dtype, shape, tp and ep, tokens ascending."""
    out: dict[tuple, dict] = {}
    for r in sorted(rows, key=lambda r: tuple(r[c] for c in (*MOE_KEY, "tokens"))):
        key = tuple(r[c] for c in MOE_KEY)
        series = out.setdefault(key, {**dict(zip(MOE_KEY, key, strict=True)), "tokens": [],
                                      "time_us": []})
        series["tokens"].append(r["tokens"])
        series["time_us"].append(r["time_us"])
    return list(out.values())


def _moe_table(f: Fields, key: str) -> dict[str, MoETable]:
    """`moe_table: [{dtype, hidden, inter, topk, experts, tp, ep, tokens: [...], time_us:
    [...]}]`: measured fused-MoE layer times per dtype, one series per shape and layout
    (tokens over the whole EP group)."""
    out: dict[str, dict] = {}
    for r in _rows(f, key, 100_000):
        dtype = r.str("dtype", tuple(MOE_DTYPES))
        h, i = r.int("hidden", 1, 10**6), r.int("inter", 1, 10**6)
        e = r.int("experts", 1, 65_536)
        k = r.int("topk", 1, e)
        tp, ep = r.int("tp", 1, 1024), r.int("ep", 1, e)
        tokens = r.int_list("tokens", 1, 10**8)
        times = r.float_list("time_us", 1e-6, 1e12)
        r.finish()
        if not tokens or len(tokens) != len(times):
            raise r.error("time_us", f"{len(times)} times for {len(tokens)} token counts")
        cells = out.setdefault(dtype, {})
        for n, t in zip(tokens, times, strict=True):
            if (h, i, k, e, tp, ep, n) in cells:
                raise r.error("tokens", f"two measurements of {dtype} at the same shape, tp, "
                                        f"ep and tokens")
            cells[(h, i, k, e, tp, ep, n)] = t * 1e-6
    return {d: MoETable(tuple(sorted((*c, t) for c, t in rows.items())))
            for d, rows in out.items()}


def _collective_rows(f: Fields, key: str) -> tuple[tuple, dict[str, tuple]]:
    """`collectives.<link>: [{group, bytes, busbw_gbps}]` as measured by nccl-tests; rows
    with an `op` (all_reduce, all_gather, reduce_scatter, alltoall) form that op's table,
    rows without one serve every ring collective. Returns (op-less rows, {op: rows})."""
    by_op: dict[str | None, list] = {}
    for r in _rows(f, key, 100_000):
        op = r.str("op", OPS, default=None)
        by_op.setdefault(op, []).append(
            (r.int("group", 2, 1_000_000), r.float("bytes", 1.0, 1e15),
             r.float("busbw_gbps", 1e-3, 1e6) * GB))
        r.finish()
    for rows in by_op.values():
        for g in {x[0] for x in rows}:
            _sorted_unique(f, key, [(b, v) for gg, b, v in rows if gg == g])
    plain = tuple(sorted(by_op.pop(None, [])))
    return plain, {op: tuple(sorted(rows)) for op, rows in by_op.items()}


def _sorted_unique(f: Fields, key: str, rows: list) -> tuple:
    rows = sorted(rows)
    if len({r[0] for r in rows}) != len(rows):
        raise f.error(key, "two measurements at the same size")
    return tuple(rows)
