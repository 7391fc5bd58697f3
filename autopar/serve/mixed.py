"""The serving search on a mixed file (several GPU groups): whole requests under TTFT / TPOT
targets, where one engine's layout must run on every GPU it spans.

Two answers, each a plan on the cluster the file describes:
- `uniform`: the one-type serving search on the cluster paced by its slowest type and
  links (`spec.groups.paced_by_slowest`: every GPU and link does at least what it is priced
  at), so its TTFT and TPOT hold on every group; the plan document is that search's, with
  `"mode": "uniform"` and `uniform_on` as a training step's uniform form;
- `pools_by_type` (with `--disaggregate`): a prefill pool on one group and a decode pool on
  another, each priced on its own type (`disagg_search` with the decode pool's hardware),
  the KV cache sent over the NICs between the groups; every ordered pair of groups is
  searched and stated, the best compared with the uniform plan per GPU and in all.

A stage or engine spanning two types (the mixed training forms) is not searched here:
serving engines run one layout per engine on one GPU type."""

from __future__ import annotations

from dataclasses import replace
from itertools import permutations
from typing import Any

from ..cost.bundled import default_calibration
from ..cost.fp8 import check_weights
from ..cost.layer import Problem
from ..errors import InputError
from ..plan.document import Plan
from ..plan.mixed_uniform import mark_uniform
from ..search import SearchOptions
from ..search.deadline import Deadline
from ..spec.groups import MixedHardware, paced_by_slowest, refuse_mixed, slowest
from .disagg import disagg_search
from .frontier import Targets
from .plan import serve


def serve_mixed(p: Problem, mixed: MixedHardware, opts: SearchOptions, frontier: bool,
                disaggregate: bool, deadline: Deadline) -> Plan:
    """The uniform serving plan on `mixed`, with its pools-by-type comparison under
    `disaggregate` (phase both: whole requests)."""
    dtype = p.model.dtype
    paced = paced_by_slowest(mixed, dtype)
    if paced is None:
        raise refuse_mixed(mixed, "the serving search on groups of different node sizes")
    slow = slowest(mixed, dtype)
    check_weights(p.model, paced, f"{mixed.source or mixed.name}: every GPU as {slow.name}")
    q = replace(p, hw=paced, calib=default_calibration(slow.hw.gpu.name))
    pools = disaggregate and len(mixed.groups) > 1
    if disaggregate and p.workload.phase != "both":
        raise InputError("workload", "phase",
                         "disaggregated serving needs phase both (whole requests)")
    plan = serve(q, opts, frontier, False, None, deadline.fraction(0.5) if pools else deadline)
    mark_uniform(plan.data, mixed, slow, {})
    if pools:
        plan.data["pools_by_type"] = pools_by_type(p, mixed, opts, plan.data, deadline)
    return plan


def pools_by_type(p: Problem, mixed: MixedHardware, opts: SearchOptions,
                  uniform: dict[str, Any], deadline: Deadline) -> dict[str, Any]:
    """Every ordered pair (prefill group, decode group): its best disaggregated point under
    the targets, and the best pair against the uniform plan."""
    w = p.workload
    targets = Targets(w.ttft_ms, w.tpot_ms)
    pairs = list(permutations(mixed.groups, 2))
    rows: list[dict[str, Any]] = []
    for k, (pre, dec) in enumerate(pairs):
        row: dict[str, Any] = {"prefill_group": pre.name, "prefill_gpu": pre.hw.gpu.name,
                               "decode_group": dec.name, "decode_gpu": dec.hw.gpu.name}
        try:
            check_weights(p.model, pre.hw, f"group {pre.name}")
            check_weights(p.model, dec.hw, f"group {dec.name}")
        except InputError as exc:
            rows.append({**row, "why": str(exc)})
            continue
        pq = replace(p, hw=pre.hw, calib=default_calibration(pre.hw.gpu.name))
        res = disagg_search(pq, opts, targets, dec.hw, deadline.fraction(1 / (len(pairs) - k)))
        if res.best is None:
            rows.append({**row, "why": "no split of the two groups meets the targets",
                         "time_limit_reached": res.timed_out})
            continue
        b = res.best
        rows.append({**row, "best": b.to_dict(), "tokens_per_s": b.tokens_per_s,
                     "tokens_per_s_per_gpu": b.tokens_per_s_per_gpu,
                     "gpus": b.total_gpus, "time_limit_reached": res.timed_out})
    found = [r for r in rows if "best" in r]
    best = max(found, key=lambda r: r["tokens_per_s_per_gpu"], default=None)
    mt = uniform["metrics"]
    a = float(mt.get("tokens_per_s_per_gpu", 0.0))
    out: dict[str, Any] = {"pairs": rows, "best": None, "uniform_tokens_per_s_per_gpu": a}
    if best is None:
        out["comparison"] = "no pair of pools meets the targets: the uniform plan stands"
        return out
    b = best["tokens_per_s_per_gpu"]
    n = int(uniform["strategy"]["num_gpus"])
    out["best"] = f"{best['prefill_group']} -> {best['decode_group']}"
    out["comparison"] = (
        f"{'pools by type win' if b > a else 'the uniform plan wins'}: {max(a, b):.1f} vs "
        f"{min(a, b):.1f} tokens/s/GPU (x{max(a, b) / max(min(a, b), 1e-30):.2f}); pools "
        f"{best['tokens_per_s']:.0f} tokens/s on {best['gpus']} GPUs (prefill on "
        f"{best['best']['prefill_gpus']} x {best['prefill_gpu']}, decode on "
        f"{best['best']['decode_gpus']} x {best['decode_gpu']}), uniform {a * n:.0f} "
        f"tokens/s on {n}")
    return out


def pools_summary(d: dict[str, Any]) -> list[str]:
    """The terminal lines of the pools-by-type comparison."""
    x = d.get("pools_by_type")
    if not x:
        return []
    lines = []
    for r in x["pairs"]:
        head = f"  prefill {r['prefill_group']} -> decode {r['decode_group']}: "
        if "best" in r:
            lines.append(head + f"{r['tokens_per_s_per_gpu']:.1f} tokens/s/GPU on "
                         f"{r['gpus']} GPUs, TTFT {r['best']['ttft_s'] * 1e3:.0f} ms, TPOT "
                         f"{r['best']['tpot_s'] * 1e3:.1f} ms")
        else:
            lines.append(head + r["why"])
    return ["pools by type (prefill on one group, decode on another):", *lines,
            x["comparison"]]
