"""`autopar recommend`'s answer as text, Markdown and JSON: per GPU type the fewest nodes,
the layout, the figure against the target and one node fewer; then every size solved with
its cost and the cost frontier."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tabulate import tabulate

from .cost import cost_key
from .sizing import Recommendation, TypeAnswer


def _fig(rec: Recommendation, row: dict | None) -> str:
    f = rec.target.figure(row) if row else None
    return "" if f is None else f"{f:,.1f}"


def _ms(row: dict | None, key: str) -> str:
    v = row.get(key) if row else None
    return "" if v is None else f"{v * 1e3:.1f}"


def answer_rows(rec: Recommendation) -> list[list[str]]:
    """One line per GPU type: fewest nodes / GPUs, layout, figure, latency, the size below."""
    out = []
    for a in rec.answers:
        r, b = a.row, a.below
        below = ""
        if a.nodes == 1:
            below = "(one node is the least)"
        elif b is not None:
            below = f"{_fig(rec, b) or b['status']} on {(a.nodes - 1) * a.gpus_per_node} GPUs"
        line = [a.gpu, a.nodes or f"> {rec.max_nodes}", a.num_gpus or "",
                r["layout"] if r else a.why(rec.target, rec.max_nodes), _fig(rec, r)]
        line += [_ms(r, "ttft_s"), _ms(r, "tpot_s")] if rec.serving else []
        out.append([*line, below])
    return out


def _unit(rec: Recommendation) -> str:
    return "requests/s" if rec.target.metric == "requests_per_s" else "tokens/s"


def verdict(rec: Recommendation) -> str:
    """The recommendation and the runner-up, in one or two sentences."""
    if not rec.ranked:
        return (f"No GPU type meets {rec.target.describe()} within {rec.max_nodes} nodes.")
    how = ("the lowest cost per hour of the deployment at the stated prices"
           if rec.prices and all(a.gpu in rec.prices for a in rec.ranked)
           else "the fewest GPUs")
    first = rec.ranked[0]
    s = (f"Recommended: {first.num_gpus} x {first.gpu} ({first.nodes} nodes, "
         f"{first.row['layout']}), by {how}.")
    if len(rec.ranked) > 1:
        ru = rec.ranked[1]
        s += f" Runner-up: {ru.num_gpus} x {ru.gpu} ({ru.nodes} nodes, {ru.row['layout']})."
    return s


def cost_rows(rec: Recommendation) -> tuple[list[str], list[list[str]]]:
    """Every size solved: GPUs, figure, GPU-hours (and US$) per million tokens, frontier."""
    priced = cost_key(rec.rows) == "usd_per_mtok"
    serving_rps = rec.target.metric == "requests_per_s"
    head = ["GPU", "GPUs", "layout", *([_unit(rec)] if serving_rps else []),
            "output tokens/s" if rec.serving else "tokens/s", "GPU-h / M tokens"]
    head += ["US$ / M tokens"] if priced else []
    head += ["frontier"]
    body = []
    for r in rec.rows:
        tok = r.get("output_tokens_per_s") or r.get("throughput_tokens_per_s")
        line = [r.get("gpu_type"), r.get("num_gpus") or "", r.get("layout") or r["status"],
                *([_fig(rec, r)] if serving_rps else []), f"{tok:,.0f}" if tok else "",
                f"{r['gpu_hours_per_mtok']:.4g}" if "gpu_hours_per_mtok" in r else ""]
        if priced:
            line.append(f"{r['usd_per_mtok']:.4g}" if r.get("usd_per_mtok") else "")
        line.append("*" if r.get("cost_frontier") else "")
        body.append(line)
    return head, body


def text(rec: Recommendation, fmt: str = "simple") -> str:
    head = ["GPU", "nodes", "GPUs", "layout", _unit(rec),
            *(["TTFT ms", "TPOT ms"] if rec.serving else []), "one node fewer"]
    ch, cb = cost_rows(rec)
    tokens = "output tokens" if rec.serving else "training tokens"
    cut = sum(bool(r.get("cut_short")) for r in rec.rows)
    note = [f"note: the time limit cut {cut} of the {len(rec.rows)} sizes' searches short "
            "(their figures are the best found; a larger --time-limit may change them and "
            "the answer)", ""] if cut else []
    return "\n".join([f"target: {rec.target.describe()} (stated: {rec.target.stated})",
                      f"nodes: {rec.hardware}, 1 to {rec.max_nodes}", "",
                      tabulate(answer_rows(rec), head, tablefmt=fmt, disable_numparse=True),
                      "", verdict(rec), "", *note,
                      f"each type at every size any type solved; cost per million {tokens} "
                      "(cost frontier: *)",
                      tabulate(cb, ch, tablefmt=fmt, disable_numparse=True)])


def document(rec: Recommendation) -> dict[str, Any]:
    """The answer as JSON: the target, each type's answer and every row solved."""
    def ans(a: TypeAnswer) -> dict[str, Any]:
        return {"gpu": a.gpu, "nodes": a.nodes, "num_gpus": a.num_gpus,
                "row": a.row, "one_node_fewer": a.below,
                "why_not": None if a.nodes else a.why(rec.target, rec.max_nodes),
                "best_reached": a.best(rec.target)}
    t = rec.target
    return {"target": {"stated": t.stated, "metric": t.metric, "value": t.value,
                       "ttft_ms": t.ttft_ms, "tpot_ms": t.tpot_ms},
            "assumption": "meeting the target is monotone in the node count; the answer's "
                          "one-node-fewer row was solved and fails it",
            "hardware": rec.hardware, "max_nodes": rec.max_nodes,
            "prices_usd_per_gpu_hour": rec.prices,
            "answers": [ans(a) for a in rec.answers],
            "ranked": [a.gpu for a in rec.ranked], "verdict": verdict(rec),
            "cost_key": cost_key(rec.rows), "rows": rec.rows}


def write(rec: Recommendation, out: Path, title: str) -> list[Path]:
    """recommend.json, recommend.md and the chosen sizes' plans under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "recommend.json", out / "recommend.md"]
    _atomic(paths[0], json.dumps(document(rec), indent=1, sort_keys=True) + "\n")
    _atomic(paths[1], f"# Recommend: {title}\n\n{text(rec, 'github')}\n")
    for a in rec.answers:
        if a.plan is not None:
            p = out / "plans" / f"{a.gpu}-{a.nodes}n.json"
            p.parent.mkdir(exist_ok=True)
            _atomic(p, json.dumps(a.plan, indent=1, sort_keys=True) + "\n")
            paths.append(p)
    return paths


def _atomic(path: Path, body: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(body)
    os.replace(tmp, path)


__all__ = ["text", "document", "write", "verdict", "answer_rows", "cost_rows"]
