"""Measured kernel tables: GEMM time by (m, n, k) per dtype and collective bus bandwidth by
(op, group, message size) per link, interpolated in log space between measured points.

A calibration file holds them (`gemm_table:`, `collectives:` rows with an `op`, `moe_table:`
fused-MoE layers; docs/calibration.md); `Calibration` asks them first and keeps its flat
fractions as the fallback where a dtype or a link has no table.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import product

OPS = ("all_reduce", "all_gather", "reduce_scatter", "alltoall")
# Weight bytes per parameter of a fused-MoE precision, scales included: fp8 block scales are
# one fp32 per 128 x 128 block, NVFP4 one fp8 per 16 values.
MOE_DTYPES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "fp8_block": 1.0 + 4 / (128 * 128),
              "nvfp4": 0.5 + 1 / 16}
MoEShape = tuple[int, int, int, int]  # (hidden, expert inter size, top-k, routed experts)
# (shape, tp, ep, tokens) -> roofline seconds of that MoE layer on this GPU
Roofline = Callable[[MoEShape, int, int, float], float]


def _memoized(memo: dict, key: tuple, compute: Callable[[], float]) -> float:
    """A table's answer for `key`, computed once: a search asks about the same few hundred
    shapes and message sizes many times. The memo is bounded (cleared past 100,000)."""
    if key not in memo:
        if len(memo) > 100_000:
            memo.clear()
        memo[key] = compute()
    return memo[key]


def _bracket(axis: tuple[float, ...], x: float) -> tuple[int, int, float]:
    """Indices of the measured values either side of log-coordinate x and x's weight on the
    upper one; clamped to the ends (weight 0 on a single point)."""
    if x <= axis[0] or len(axis) == 1:
        return 0, 0, 0.0
    if x >= axis[-1]:
        return len(axis) - 1, len(axis) - 1, 0.0
    i = bisect_right(axis, x)
    lo, hi = axis[i - 1], axis[i]
    return i - 1, i, (x - lo) / (hi - lo)


@dataclass(frozen=True)
class GemmTable:
    """Measured GEMMs of one dtype: achieved FLOP/s at each (m, n, k), so that outside the
    measured range the rate is clamped (a bigger GEMM than any measured runs at the largest
    one's rate), not the time. Inside, log rate is multilinear in (log m, log n, log k) over
    the corners of the enclosing grid cell; a corner not measured is interpolated along the
    grid lines through it, one with no measured node on any of them drops out with its
    weight, and a cell with none left takes the nearest measured shape."""

    rows: tuple[tuple[int, int, int, float], ...]  # (m, n, k, time_s), sorted
    axes: tuple[tuple[float, ...], ...] = field(init=False, repr=False, compare=False)
    rate: dict = field(init=False, repr=False, compare=False)
    # answers already computed: a search asks about the same few hundred shapes many times
    memo: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        logs = {(math.log(m), math.log(n), math.log(k)): math.log(2 * m * n * k / t)
                for m, n, k, t in self.rows}
        axes = tuple(tuple(sorted({p[d] for p in logs})) for d in range(3))
        object.__setattr__(self, "axes", axes)
        object.__setattr__(self, "rate", logs)
        object.__setattr__(self, "memo", {})

    def flops_per_s(self, m: float, n: float, k: float) -> float:
        """Achieved FLOP/s of an m x k by k x n GEMM."""
        return _memoized(self.memo, (m, n, k), lambda: self._flops_per_s(m, n, k))

    def _flops_per_s(self, m: float, n: float, k: float) -> float:
        q = [math.log(max(v, 1e-9)) for v in (m, n, k)]
        cell = [_bracket(ax, x) for ax, x in zip(self.axes, q, strict=True)]
        num = den = 0.0
        for corner in product((0, 1), repeat=3):
            idx, w = [], 1.0
            for lo, hi, t in cell:
                idx.append(hi if corner[len(idx)] else lo)
                w *= t if corner[len(idx) - 1] else 1.0 - t
            if w <= 0.0:
                continue
            v = self._at(tuple(idx))
            if v is not None:
                num += w * v
                den += w
        if den > 0.0:
            return math.exp(num / den)
        near = min(self.rate, key=lambda p: sum((a - b) ** 2 for a, b in zip(p, q, strict=True)))
        return math.exp(self.rate[near])

    def _at(self, idx: tuple[int, int, int]) -> float | None:
        """Log rate at a grid node: measured, else interpolated along each of the three grid
        lines through it between the nearest measured nodes either side (one side only: that
        node's, counted as farther), the lines weighted by 1 / the log span they bridge."""
        key = tuple(ax[i] for ax, i in zip(self.axes, idx, strict=True))
        if key in self.rate:
            return self.rate[key]
        num = den = 0.0
        for d, ax in enumerate(self.axes):
            def node(j: int, d: int = d, ax: tuple = ax) -> tuple[float, ...]:
                return key[:d] + (ax[j],) + key[d + 1:]

            lo = next((j for j in range(idx[d] - 1, -1, -1) if node(j) in self.rate), None)
            hi = next((j for j in range(idx[d] + 1, len(ax)) if node(j) in self.rate), None)
            if lo is not None and hi is not None:
                span = ax[hi] - ax[lo]
                t = (key[d] - ax[lo]) / span
                v = (1 - t) * self.rate[node(lo)] + t * self.rate[node(hi)]
            elif lo is not None or hi is not None:
                j = lo if lo is not None else hi
                span, v = 2 * abs(key[d] - ax[j]) + 10.0, self.rate[node(j)]
            else:
                continue
            num += v / span
            den += 1 / span
        return num / den if den > 0.0 else None

    def time_s(self, m: float, n: float, k: float) -> float:
        return 2 * m * n * k / self.flops_per_s(m, n, k)


@dataclass(frozen=True)
class BusTable:
    """Measured bus bandwidth of one collective on one link: log-linear in message size
    between measured sizes and in group size between measured groups, clamped at the ends."""

    rows: tuple[tuple[int, float, float], ...]  # (group, bytes, B/s), sorted
    # per measured group: (log bytes, log B/s) axes; and answers already computed
    groups: tuple[int, ...] = field(init=False, repr=False, compare=False)
    curves: dict = field(init=False, repr=False, compare=False)
    memo: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        groups = tuple(sorted({r[0] for r in self.rows}))
        curves = {g: (tuple(math.log(b) for gg, b, _ in self.rows if gg == g),
                      tuple(math.log(v) for gg, _, v in self.rows if gg == g)) for g in groups}
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "curves", curves)
        object.__setattr__(self, "memo", {})

    def busbw(self, group: int, nbytes: float) -> float:
        return _memoized(self.memo, (group, nbytes), lambda: self._busbw(group, nbytes))

    def _busbw(self, group: int, nbytes: float) -> float:
        groups = self.groups
        lo, hi, t = _bracket(tuple(math.log(g) for g in groups), math.log(max(group, 1)))
        x = math.log(max(nbytes, 1.0))

        def at(g: int) -> float:
            xs, ys = self.curves[g]
            i, j, w = _bracket(xs, x)
            return (1 - w) * ys[i] + w * ys[j]

        y = at(groups[lo]) if t == 0.0 else (1 - t) * at(groups[lo]) + t * at(groups[hi])
        return math.exp(y)


@dataclass(frozen=True)
class MoETable:
    """Measured fused-MoE layers of one dtype (what vLLM and SGLang run: routing, both expert
    GEMMs and the activation in one op): time per (model shape, expert TP, EP, tokens), where
    tokens are those entering the layer over the whole EP group (each EP rank computes
    tokens x top-k / EP of them). Between measured token counts the time is log-linear;
    above the largest it grows with the roofline, below the smallest it stays at that time.
    A shape or (tp, ep) not measured takes the nearest measured series (same tp, ep first)
    scaled by the ratio of the two layers' rooflines: a transfer, which the plan names."""

    rows: tuple[tuple[int, int, int, int, int, int, int, float], ...]
    # (hidden, inter, top_k, experts, tp, ep, tokens, time_s), sorted
    series: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        out: dict = {}
        for h, i, k, e, tp, ep, n, t in self.rows:
            out.setdefault(((h, i, k, e), tp, ep), []).append((n, t))
        object.__setattr__(self, "series", {key: tuple(sorted(v)) for key, v in out.items()})

    def nearest(self, shape: MoEShape, tp: int, ep: int) -> tuple[MoEShape, int, int]:
        """The measured (shape, tp, ep) to read: itself if measured, else the closest in log
        space, a different (tp, ep) weighing more than a different shape."""
        key = (shape, tp, ep)
        if key in self.series:
            return key

        def dist(c: tuple) -> float:
            d = sum(math.log(a / b) ** 2 for a, b in zip(c[0], shape, strict=True))
            return d + 10.0 * (math.log(c[1] / tp) ** 2 + math.log(c[2] / ep) ** 2)

        return min(self.series, key=lambda c: (dist(c), c))

    def time_s(self, shape: MoEShape, tp: int, ep: int, tokens: float,
               roofline: Roofline) -> float:
        key = self.nearest(shape, tp, ep)
        pts = self.series[key]
        n = max(tokens, 1e-9)
        if n <= pts[0][0]:
            t = pts[0][1]
        elif n >= pts[-1][0]:
            t = pts[-1][1] * roofline(key[0], key[1], key[2], n) / roofline(
                key[0], key[1], key[2], pts[-1][0])
        else:
            i, j, w = _bracket(tuple(math.log(p[0]) for p in pts), math.log(n))
            t = math.exp((1 - w) * math.log(pts[i][1]) + w * math.log(pts[j][1]))
        if key != (shape, tp, ep):
            t *= roofline(shape, tp, ep, n) / roofline(key[0], key[1], key[2], n)
        return t

    def source(self, shape: MoEShape) -> str:
        """`table` when the shape was measured (at some tp, ep), else the shape transferred."""
        shapes = {key[0] for key in self.series}
        if shape in shapes:
            return "table"
        near = min(shapes, key=lambda c: (sum(math.log(a / b) ** 2 for a, b in zip(
            c, shape, strict=True)), c))
        return "transfer from hidden {} inter {} top-{} of {}".format(*near)


@dataclass(frozen=True)
class KernelTables:
    """Every measured table of one calibration: GEMMs per dtype, collectives per (op, link),
    fused-MoE layers per dtype."""

    gemm: dict[str, GemmTable] = field(default_factory=dict)
    collectives: dict[tuple[str, str], BusTable] = field(default_factory=dict)
    moe: dict[str, MoETable] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.gemm or self.collectives or self.moe)

    def summary(self) -> dict:
        """What a plan echoes of the tables: how many measurements each holds (the rows
        themselves stay in the calibration file)."""
        out: dict = {}
        if self.gemm:
            out["gemm_shapes"] = {d: len(t.rows) for d, t in sorted(self.gemm.items())}
        if self.collectives:
            out["collective_tables"] = {f"{op}.{link}": len(t.rows)
                                        for (op, link), t in sorted(self.collectives.items())}
        if self.moe:
            out["moe_layers"] = {d: len(t.rows) for d, t in sorted(self.moe.items())}
        return out
