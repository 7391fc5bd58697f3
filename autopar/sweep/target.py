"""What `autopar recommend` must meet, which GPU types it compares and at what price.

A target is `KEY=VALUE` pairs joined by commas: one throughput (`tokens_per_s`,
`tokens_per_day` for training or for a serving workload's output tokens, `requests_per_s`
for serving) and, for serving, the latency limits by the workload's own field names
(`ttft_ms`, `tpot_ms`: the limits `--ttft-ms` / `--tpot-ms` and a workload's `ttft_ms` /
`tpot_ms` state, range-checked by the same workload reader when each point is read).
Prices are `TYPE=USD_PER_GPU_HOUR` pairs; nothing here knows a price.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..spec.hardware import gpu_catalogue

THROUGHPUTS = ("tokens_per_s", "tokens_per_day", "requests_per_s")
LIMITS = ("ttft_ms", "tpot_ms")
SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class Target:
    """A throughput to reach and the latency limits a serving point must keep."""

    metric: str  # "tokens_per_s" (tokens/day is stated as tokens/s) or "requests_per_s"
    value: float  # in the metric's unit, per second
    stated: str  # the target as written, for the report
    ttft_ms: float | None = None
    tpot_ms: float | None = None

    @property
    def limits(self) -> bool:
        return self.ttft_ms is not None or self.tpot_ms is not None

    def figure(self, row: dict[str, Any]) -> float | None:
        """The row's figure this target is stated in (None: no solved plan)."""
        if row.get("status") != "solved":
            return None
        if self.metric == "requests_per_s":
            return row.get("requests_per_s")
        return row.get("output_tokens_per_s") or row.get("throughput_tokens_per_s")

    def met(self, row: dict[str, Any]) -> bool:
        """The row's plan reaches the throughput within the latency limits."""
        f = self.figure(row)
        if f is None or f < self.value:
            return False
        for lim, key in ((self.ttft_ms, "ttft_s"), (self.tpot_ms, "tpot_s")):
            got = row.get(key)
            if lim is not None and (got is None or got * 1e3 > lim):
                return False
        return True

    def describe(self) -> str:
        unit = "requests/s" if self.metric == "requests_per_s" else "tokens/s"
        parts = [f"{self.value:,.6g} {unit}"]
        parts += [f"TTFT <= {self.ttft_ms:g} ms"] if self.ttft_ms is not None else []
        parts += [f"TPOT <= {self.tpot_ms:g} ms"] if self.tpot_ms is not None else []
        return ", ".join(parts)


def _pairs(text: str, source: str) -> list[tuple[str, str]]:
    if not isinstance(text, str) or not text.strip():
        raise InputError(source, "", "KEY=VALUE pairs joined by commas, got nothing")
    out = []
    for part in text.split(","):
        if not part.strip():
            continue
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise InputError(source, part.strip(), "not KEY=VALUE")
        out.append((key.strip(), value.strip()))
    return out


def _number(source: str, key: str, value: str, lo: float, hi: float) -> float:
    try:
        v = float(value.replace("_", ""))
    except ValueError:
        raise InputError(source, key, f"a number, got {value!r}") from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise InputError(source, key, f"{value} is outside [{lo:g}, {hi:g}]")
    return v


def parse_target(text: str, source: str = "--target", ttft_ms: float | None = None,
                 tpot_ms: float | None = None) -> Target:
    """`requests_per_s=150,ttft_ms=2000,tpot_ms=50` or `tokens_per_day=2e11`; `ttft_ms` /
    `tpot_ms` given apart (the --ttft-ms / --tpot-ms flags) join it, once each."""
    metric = value = None
    limits: dict[str, float | None] = {"ttft_ms": ttft_ms, "tpot_ms": tpot_ms}
    given: set[str] = set()
    for key, raw in _pairs(text, source):
        if key in given:
            raise InputError(source, key, "given twice")
        given.add(key)
        if key in THROUGHPUTS:
            if metric is not None:
                raise InputError(source, key, f"one throughput per target ({metric} given)")
            v = _number(source, key, raw, 1e-9, 1e18)
            metric, value = key, v
        elif key in LIMITS:
            if limits[key] is not None:
                raise InputError(source, key, f"given by --{key.replace('_', '-')} too")
            limits[key] = _number(source, key, raw, 1e-3, 1e9)  # the workload reader's range
        else:
            raise InputError(source, key, f"unknown key; known: {', '.join(THROUGHPUTS + LIMITS)}")
    if metric is None:
        raise InputError(source, "", f"no throughput: add one of {', '.join(THROUGHPUTS)}")
    assert value is not None
    if metric == "tokens_per_day":
        metric, value = "tokens_per_s", value / SECONDS_PER_DAY
    return Target(metric, value, text, limits["ttft_ms"], limits["tpot_ms"])


def resolve_gpu(name: str, source: str = "--gpu") -> str:
    """A catalogue GPU type from its name or a unique prefix of it (`H100` ->
    `H100-SXM5-80GB`; `A100` is ambiguous: two memory sizes)."""
    cat = list(gpu_catalogue())
    if name in cat:
        return name
    low = name.strip().lower()
    hits = [c for c in cat if c.lower().startswith(low + "-")] if low else []
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise InputError(source, name, f"ambiguous: {', '.join(hits)}")
    raise InputError(source, name, f"unknown GPU type; known: {', '.join(cat)}")


def parse_gpus(text: str, source: str = "--gpu") -> list[str]:
    """`H100,H200`: catalogue GPU types, each once, in the order given."""
    names = [x.strip() for x in (text or "").split(",") if x.strip()]
    if not names:
        raise InputError(source, "", "one or more GPU types, e.g. H100,H200")
    out: list[str] = []
    for n in names:
        g = resolve_gpu(n, source)
        if g in out:
            raise InputError(source, n, "given twice")
        out.append(g)
    return out


def parse_prices(text: str | dict | None, source: str = "--price") -> dict[str, float]:
    """`H100=2.5,H200=3.2` (or a mapping): US$ per GPU-hour by catalogue GPU type. These
    are inputs, stated by whoever asks; autopar keeps no prices."""
    if text is None:
        return {}
    items = (list(text.items()) if isinstance(text, dict) else _pairs(text, source))
    out: dict[str, float] = {}
    for key, raw in items:
        g = resolve_gpu(str(key), source)
        if g in out:
            raise InputError(source, str(key), "given twice")
        out[g] = _number(source, str(key), str(raw), 0.0, 1e6)
    return out


__all__ = ["Target", "parse_target", "resolve_gpu", "parse_gpus", "parse_prices",
           "THROUGHPUTS", "LIMITS"]
