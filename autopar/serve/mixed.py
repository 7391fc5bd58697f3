"""The serving search on a mixed file (several GPU groups): whole requests under TTFT / TPOT
targets, where one engine's layout must run on every GPU it spans.

Three answers, each runnable on the cluster the file describes, compared by the tokens/s
the whole cluster serves under the targets (GPUs an answer leaves idle serve nothing;
without targets the plan is the uniform one, the lowest latency at the given concurrency):
- `uniform`: the one-type serving search on the cluster paced by its slowest type and
  links (`spec.groups.paced_by_slowest`: every GPU and link does at least what it is priced
  at), so its TTFT and TPOT hold on every group; the plan document is that search's, with
  `"mode": "uniform"` and `uniform_on` as a training step's uniform form;
- `groups_apart`: every group its own deployment (the one-type serving search on that
  group, with its engines' launch arguments), the requests routed to them in proportion to
  their rates: the serving counterpart of a training step's data-parallel shares;
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
from ..errors import InfeasibleError, InputError
from ..plan.document import Plan
from ..plan.mixed_uniform import mark_uniform
from ..search import SearchOptions
from ..search.deadline import Deadline
from ..spec.groups import MixedHardware, paced_by_slowest, slowest
from .disagg import disagg_search
from .frontier import Targets
from .plan import serve


def serve_mixed(p: Problem, mixed: MixedHardware, opts: SearchOptions, frontier: bool,
                disaggregate: bool, deadline: Deadline) -> Plan:
    """The uniform serving plan on `mixed`, with the groups apart beside it and, under
    `disaggregate` (phase both: whole requests), the pools by type. Where no layout paced
    by the slowest type meets the targets, the InfeasibleError names the groups that meet
    them alone."""
    dtype = p.model.dtype
    paced = paced_by_slowest(mixed, dtype)
    if paced is None:  # the groups' node sizes tile no common node (`MixedHardware.uniform`)
        raise InputError(mixed.source or mixed.name, "groups", "no node size tiles every "
                         "group: the serving search paces every GPU by the slowest type")
    slow = slowest(mixed, dtype)
    check_weights(p.model, paced, f"{mixed.source or mixed.name}: every GPU as {slow.name}")
    q = replace(p, hw=paced, calib=default_calibration(slow.hw.gpu.name))
    pools = disaggregate and len(mixed.groups) > 1
    if disaggregate and p.workload.phase != "both":
        raise InputError("workload", "phase",
                         "disaggregated serving needs phase both (whole requests)")
    try:
        plan = serve(q, opts, frontier, False, None, deadline.fraction(1 / (2 + pools)))
    except InfeasibleError as exc:
        alone = [r for r in groups_apart(p, mixed, opts, deadline)["groups"] if "point" in r]
        if not alone:
            raise
        raise InfeasibleError(f"every GPU as {slow.hw.gpu.name}: {exc.reason}", "; ".join(
            f"group {r['group']} alone serves {r['tokens_per_s']:.0f} tokens/s under the "
            f"targets (its fields as a one-type file)" for r in alone)) from exc
    mark_uniform(plan.data, mixed, slow, {})
    if p.workload.ttft_ms is None and p.workload.tpot_ms is None:
        return plan  # the lowest latency at the given concurrency: no rates to add up
    plan.data["groups_apart"] = groups_apart(p, mixed, opts, deadline.fraction(1 / (1 + pools)))
    if pools:
        plan.data["pools_by_type"] = pools_by_type(p, mixed, opts, plan.data, deadline)
    plan.data["serving_choice"] = serving_choice(plan.data)
    return plan


def groups_apart(p: Problem, mixed: MixedHardware, opts: SearchOptions,
                 deadline: Deadline) -> dict[str, Any]:
    """Each group's own best serving point under the targets (its one-type search), and
    their sum: the requests split in proportion to each group's rate."""
    rows: list[dict[str, Any]] = []
    for k, g in enumerate(mixed.groups):
        row: dict[str, Any] = {"group": g.name, "gpu": g.hw.gpu.name, "gpus": g.count}
        try:
            check_weights(p.model, g.hw, f"group {g.name}")
            one = serve(replace(p, hw=g.hw, calib=default_calibration(g.hw.gpu.name)), opts,
                        False, False, None, deadline.fraction(1 / (len(mixed.groups) - k)))
        except (InputError, InfeasibleError) as exc:
            rows.append({**row, "why": str(exc)})
            continue
        pt = one.data["serving"]["point"]
        rows.append({**row, "strategy": one.data["strategy"], "point": pt,
                     "tokens_per_s": pt["tokens_per_s"], "requests_per_s": pt["requests_per_s"],
                     "launch": one.data.get("launch", {})})  # the group's own engines
    total = sum(r.get("tokens_per_s", 0.0) for r in rows)
    rate = sum(r.get("requests_per_s", 0.0) for r in rows)
    for r in rows:
        if "requests_per_s" in r and rate:
            r["request_share"] = r["requests_per_s"] / rate
    return {"groups": rows, "tokens_per_s": total,
            "tokens_per_s_per_gpu": total / mixed.num_gpus}


def serving_choice(d: dict[str, Any]) -> str:
    """Which answer serves the most tokens/s on the whole cluster under the targets."""
    n = int(d["strategy"]["num_gpus"])
    cands = {"uniform": float(d["metrics"].get("tokens_per_s_per_gpu", 0.0)) * n,
             "groups_apart": d["groups_apart"]["tokens_per_s"]}
    pools = d.get("pools_by_type", {})
    top = [r for r in pools.get("pairs", []) if "best" in r]
    if top:
        cands["pools_by_type"] = max(r["tokens_per_s"] for r in top)
    best = max(cands, key=cands.get)
    rest = ", ".join(f"{k} {v:.0f}" for k, v in cands.items() if k != best)
    return (f"{best} serves the most: {cands[best]:.0f} tokens/s on the {n} GPUs under the "
            f"targets ({rest})")


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
        "per GPU, " + ("the pools beat the uniform plan" if b > a else
                       "the uniform plan beats the pools") + f": {max(a, b):.1f} vs "
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
                         f"{r['gpus']} GPUs, {_latency(r['best'])}")
        else:
            lines.append(head + r["why"])
    return ["pools by type (prefill on one group, decode on another):", *lines,
            x["comparison"]]


def mixed_serving_summary(d: dict[str, Any]) -> list[str]:
    """The terminal lines a serving plan on a mixed file adds: each group apart, the pools
    by type, and which answer serves the most."""
    if "groups_apart" not in d:
        return []
    lines = ["groups apart (each group its own deployment, requests by their rates):"]
    for r in d["groups_apart"]["groups"]:
        if "point" in r:
            pt, s = r["point"], r["point"]["layout"]
            lay = f"TP{s['tp']} PP{s['pp']} DP{s['dp']} EP{s['ep']}"
            lines.append(f"  {r['group']} ({r['gpus']} x {r['gpu']}): {lay}, "
                         f"{r['tokens_per_s']:.0f} tokens/s, {_latency(pt)}, "
                         f"{r['request_share']:.0%} of the requests")
        else:
            lines.append(f"  {r['group']}: {r['why']}")
    return [*lines, *pools_summary(d), d["serving_choice"]]


def _latency(pt: dict[str, Any]) -> str:
    """A point's TTFT and TPOT, each where the phase has it."""
    return ", ".join(f"{k} {pt[key] * 1e3:.{d}f} ms" for k, key, d in (
        ("TTFT", "ttft_s", 0), ("TPOT", "tpot_s", 1)) if pt.get(key) is not None)
