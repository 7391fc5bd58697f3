"""Cost against throughput over GPU types: GPU-hours (and, with a stated price per GPU-hour,
US$) per million tokens of each solved point, and the Pareto frontier of cost and
throughput. A serving point's tokens are the output tokens its users get; a training
point's are the tokens it trains on. Prices are inputs (`--price`, a study's `prices`)."""

from __future__ import annotations

from typing import Any

from ..errors import InputError
from .target import parse_prices, resolve_gpu


def tokens_per_s(row: dict[str, Any]) -> float | None:
    """The throughput the cost is per: output tokens (serving) or training tokens."""
    if row.get("status") != "solved":
        return None
    return row.get("output_tokens_per_s") or row.get("throughput_tokens_per_s")


def _gpu_type(row: dict[str, Any]) -> str | None:
    g = row.get("gpu")
    if not g:
        return None
    try:
        return resolve_gpu(str(g))
    except InputError:
        return str(g)  # a GPU stated field by field: its name, priced only if named so


def with_costs(rows: list[dict[str, Any]], prices: dict[str, float] | str | None = None
               ) -> list[dict[str, Any]]:
    """Each row with `gpu_hours_per_mtok`, `usd_per_mtok` (where its GPU type has a price)
    and `cost_frontier` (no other solved row has at least its throughput at no more cost,
    one of them strictly better). Cost is in US$ when every solved row's type is priced,
    else in GPU-hours."""
    prices = parse_prices(prices) if not isinstance(prices, dict) else {
        resolve_gpu(k, "prices"): float(v) for k, v in prices.items()}
    out = []
    for r in rows:
        tok, n = tokens_per_s(r), r.get("num_gpus")
        r = dict(r)
        if tok and n:
            gh = n / (tok * 3600.0) * 1e6
            r["gpu_hours_per_mtok"] = gh
            price = prices.get(_gpu_type(r) or "")
            if price is not None:
                r["usd_per_mtok"] = gh * price
        out.append(r)
    priced = bool(prices) and all(r.get("usd_per_mtok") is not None for r in out
                                  if "gpu_hours_per_mtok" in r)
    key = "usd_per_mtok" if priced else "gpu_hours_per_mtok"
    pts = [r for r in out if r.get(key) is not None]
    for r in pts:
        r["cost_frontier"] = not any(_dominates(o, r, key) for o in pts)
    return out


def cost_key(rows: list[dict[str, Any]]) -> str:
    """Which cost the frontier was taken on (what `with_costs` chose)."""
    costed = [r for r in rows if "gpu_hours_per_mtok" in r]
    if costed and all(r.get("usd_per_mtok") is not None for r in costed):
        return "usd_per_mtok"
    return "gpu_hours_per_mtok"


def _dominates(a: dict, b: dict, key: str) -> bool:
    ta, tb = tokens_per_s(a) or 0.0, tokens_per_s(b) or 0.0
    ca, cb = a[key], b[key]
    eps = 1e-9  # relative: equal figures computed in a different order are equal
    faster, cheaper = ta > tb * (1 + eps), ca < cb * (1 - eps)
    return ta >= tb * (1 - eps) and ca <= cb * (1 + eps) and (faster or cheaper)


__all__ = ["with_costs", "cost_key", "tokens_per_s"]
