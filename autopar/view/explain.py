"""Why this layout: the runner-ups the search kept (`runner_ups`), the binding constraint
(the fullest GPU's memory, the link with the most exposed time, the critical stage) and the
sensitivity of the step time to each input, by re-evaluating the chosen layout and the best
runner-up with the cost model (same stage cut and expert placement; nothing re-searched):
the step time at -10 % and +10 % of the input, and the change at which the runner-up would
win (bisection on the two re-evaluations)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..cost.layer import Problem
from ..cost.strategy import Strategy
from ..schema.gpus import decode_ids
from ..search import SearchOptions
from ..search.experts import moe_states
from ..search.runner_ups import DEGREE_KEYS
from .reeval import AGREE_REL, Rebuilt, strategy_of

GB = 1e9
STEP = 0.10  # the +/- change every input is moved by
FLIP_RANGE = 8.0  # the flip is looked for between x1/8 and x8 of each input
BISECT = 30  # halvings of the interval the flip lies in (factor to ~1e-8)


@dataclass(frozen=True)
class Knob:
    """One input the step time depends on, and how a factor is applied to it."""
    name: str
    field: str
    apply: Callable[[Problem, float], Problem]


def _hw(p: Problem, **kw) -> Problem:
    return replace(p, hw=replace(p.hw, **kw))


def _gpu(p: Problem, **kw) -> Problem:
    return _hw(p, gpu=replace(p.hw.gpu, **kw))


KNOBS = (
    Knob("intra-node link bandwidth", "hardware.intra_node.bandwidth_gbps",
         lambda p, f: _hw(p, intra=replace(p.hw.intra, bytes_per_s=p.hw.intra.bytes_per_s * f))),
    Knob("inter-node link bandwidth", "hardware.inter_node.bandwidth_gbps",
         lambda p, f: _hw(p, inter=replace(p.hw.inter, bytes_per_s=p.hw.inter.bytes_per_s * f))),
    Knob("GEMM efficiency (as the GPU's FLOP/s: every compute-bound kernel)",
         "hardware.gpu.tflops",
         lambda p, f: _gpu(p, peak_flops={k: v * f for k, v in p.hw.gpu.peak_flops.items()})),
    Knob("HBM bandwidth", "hardware.gpu.hbm_tbps",
         lambda p, f: _gpu(p, hbm_bytes_per_s=p.hw.gpu.hbm_bytes_per_s * f)),
    Knob("batch", "workload.batch",
         lambda p, f: replace(p, workload=replace(p.workload, batch=max(
             1, round(p.workload.batch * f))))),
)


def for_batch(s: Strategy, p: Problem) -> Strategy:
    """The layout's micro-batching for the problem's batch: training keeps the micro-batch
    and changes the accumulation steps (a multiple of PP when interleaved), serving keeps
    the micro-batches and grows each."""
    per = -(-p.workload.batch // s.dp)
    if not p.training:
        return replace(s, micro_batch=max(1, -(-per // s.num_micro_batches)))
    m = max(1, -(-per // s.micro_batch))
    if s.virtual_stages > 1:
        m = -(-m // s.pp) * s.pp
    return replace(s, num_micro_batches=m)


def step_at(rb: Rebuilt, knob: Knob, f: float) -> tuple[float, bool]:
    """(step time, fits in memory) of the layout with `knob` scaled by f."""
    p = knob.apply(rb.problem, f)
    s = for_batch(rb.strategy, p) if knob.field == "workload.batch" else rb.strategy
    ev = replace(rb, problem=p, strategy=s).evaluate()
    return ev.step_time, ev.feasible


def runner_up(plan: dict, rb: Rebuilt) -> tuple[Rebuilt | None, str]:
    """The best runner-up as a layout to re-evaluate, or None and why not."""
    ups = (plan.get("runner_ups") or {}).get("layouts") or []
    if not ups:
        return None, "the plan records no runner-up"
    u = ups[0]
    p = rb.problem
    s = strategy_of({"strategy": u["strategy"]}, p.hw.num_gpus)
    seed = (plan.get("solver") or {}).get("seed", 0)
    moe = moe_states(p, s, {}, SearchOptions(seed=seed))
    bounds = [a for a, _ in u["stage_layers"]] + [p.model.layers]
    other = Rebuilt(p, s, bounds, moe)
    got = other.evaluate().step_time
    if abs(got - u["step_time_s"]) > AGREE_REL * u["step_time_s"]:
        return None, (f"its re-evaluation gives {got:.6g} s, not the {u['step_time_s']:.6g} s "
                      "the plan states")
    return other, ""


def flip_factor(rb: Rebuilt, other: Rebuilt, knob: Knob) -> float | None:
    """The factor on `knob` nearest 1 at which `other` becomes at least as fast, or None
    within x1/FLIP_RANGE .. xFLIP_RANGE."""
    def wins(f: float) -> bool:  # the runner-up fits and is faster (or the winner fails)
        mine, fits = step_at(rb, knob, f)
        theirs, their_fits = step_at(other, knob, f)
        return their_fits and (theirs < mine or not fits)

    if wins(1.0):
        return 1.0
    best = None
    for up in (True, False):
        lo = 1.0
        grid = [1.1, 1.25, 1.5, 2.0, 3.0, 4.0, 6.0, FLIP_RANGE]
        for g in grid:
            f = g if up else 1.0 / g
            if wins(f):
                a, b = lo, f
                for _ in range(BISECT):
                    mid = math.sqrt(a * b)
                    a, b = (a, mid) if wins(mid) else (mid, b)
                if best is None or abs(math.log(b)) < abs(math.log(best)):
                    best = b
                break
            lo = f
    return best


def sensitivity(rb: Rebuilt, other: Rebuilt | None) -> list[dict[str, Any]]:
    base = rb.evaluate().step_time
    out = []
    for k in KNOBS:
        lo, lo_fits = step_at(rb, k, 1 - STEP)
        hi, hi_fits = step_at(rb, k, 1 + STEP)
        row = {"input": k.name, "field": k.field, "minus_10pct_s": lo, "plus_10pct_s": hi,
               "minus_10pct_rel": lo / base - 1, "plus_10pct_rel": hi / base - 1,
               "fits": {"minus_10pct": lo_fits, "plus_10pct": hi_fits}}
        if other is not None:
            row["flips_at"] = flip_factor(rb, other, k)
        out.append(row)
    return out


def binding(plan: dict) -> dict[str, Any]:
    """The fullest GPU's memory, the link with the most exposed time, the critical stage."""
    mem = max(plan["gpus"]["memory"], key=lambda x: x["memory"]["utilization"])
    mm = mem["memory"]
    terms = {k: mm.get(f"{k}_bytes", 0.0) for k in
             ("weights", "gradients", "optimizer", "activations", "kv_cache")}
    ids = sorted(decode_ids(mem["gpu_ids"], plan["strategy"]["num_gpus"])[0] or [])
    comm = plan.get("communication") or []
    link = max(comm, key=lambda c: c["exposed_s"]) if comm else None
    t = plan["timing"]
    busy = [x["per_micro_batch_s"] for x in t["per_stage"]]
    crit = t["per_stage"][t["critical_stage"]]
    return {
        "memory": {"stage": mem.get("stage"), "gpus": ids[:8], "gpu_count": len(ids),
                   "utilization": mm["utilization"], "capacity_bytes": mm["capacity_bytes"],
                   "largest": max(terms, key=terms.get), "largest_bytes": max(terms.values()),
                   "headroom_bytes": mm["headroom_bytes"],
                   "layouts_over_memory": (plan.get("solver") or {}).get("memory_infeasible")},
        "link": None if link is None else {
            k: link.get(k) for k in ("collective", "group", "link", "stage", "exposed_s",
                                     "time_per_step_s", "bytes_per_step", "formula")},
        "stage": {"stage": t["critical_stage"], "layers": crit["layers"],
                  "per_micro_batch_s": crit["per_micro_batch_s"],
                  "over_mean": max(busy) / (sum(busy) / len(busy)),
                  "dominant_term": t["dominant_term"]},
    }


def explain_plan(plan: dict, rb: Rebuilt) -> dict[str, Any]:
    """Everything `autopar explain` prints, as JSON-able data."""
    other, why = runner_up(plan, rb)
    ups = plan.get("runner_ups")
    t = plan["timing"]
    for u in ups["layouts"] if ups else []:
        k = u["loses_on"] + "_s"
        u["loses_on_s"] = u["terms"].get(k, 0.0) - t.get(k, 0.0)
    return {"plan": plan.get("name"), "layout": rb.strategy.describe(),
            "step_time_s": plan["metrics"]["step_time_s"],
            "runner_ups": ups["layouts"] if ups else [],
            "runner_ups_complete": bool(ups and ups["complete"]),
            "binding": binding(plan), "sensitivity": sensitivity(rb, other),
            "flip_against": None if other is None else other.strategy.describe(),
            "flip_note": why}


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def format_explain(d: dict[str, Any]) -> str:
    """The terminal text of `explain_plan`."""
    lines = [f"{d['plan']}: {d['layout']}", f"step {d['step_time_s']:.6g} s", "",
             "runner-ups (the best layout of each next degree choice; a solve pinned to its "
             "degrees gives the same step):"]
    for i, u in enumerate(d["runner_ups"], 1):
        deg = " ".join(f"{k.upper()}={u['degrees'][k]}" for k in DEGREE_KEYS)
        lines.append(f"  {i}. {deg}: {u['step_time_s']:.6g} s, loses {u['loses_s']:.4g} s "
                     f"({u['loses_s'] / d['step_time_s'] * 100:.1f}%), most on {u['loses_on']} "
                     f"(+{u['loses_on_s']:.4g} s)"
                     + ("" if u.get("proven", True) else "  [best found, not proven]"))
    if not d["runner_ups"]:
        lines.append("  none recorded (a serving plan, a plan from before they were kept, "
                     "or no other degree choice fits)")
    elif not d["runner_ups_complete"]:
        lines.append("  (the time limit stopped the search for more)")
    b = d["binding"]
    m = b["memory"]
    gpus = ",".join(map(str, m["gpus"])) + ("..." if m["gpu_count"] > len(m["gpus"]) else "")
    lines += ["", "binding constraints:",
              f"  memory: stage {m['stage']} GPUs {gpus} ({m['gpu_count']}) at "
              f"{m['utilization'] * 100:.1f}% of {m['capacity_bytes'] / GB:.1f} GB, largest "
              f"{m['largest']} {m['largest_bytes'] / GB:.1f} GB, headroom "
              f"{m['headroom_bytes'] / GB:.1f} GB; {m['layouts_over_memory']} layouts over "
              "memory"]
    if b["link"]:
        x = b["link"]
        lines.append(f"  link: {x['collective']} over {x['group']} on {x['link']} (stage "
                     f"{x['stage']}): {x['exposed_s']:.4g} s exposed of {x['time_per_step_s']:.4g}"
                     f" s, {x['bytes_per_step'] / GB:.3g} GB per step")
    st = b["stage"]
    lines.append(f"  stage: {st['stage']} (layers {st['layers'][0]}-{st['layers'][1]}) is the "
                 f"slowest, {st['per_micro_batch_s'] * 1e3:.4g} ms a micro-batch, "
                 f"{st['over_mean']:.3f}x the mean; dominant term {st['dominant_term']}")
    lines += ["", "sensitivity (the layout re-evaluated, cut and placement kept; flip: the "
              f"change at which {d['flip_against'] or 'the best runner-up'} wins):"]
    for r in d["sensitivity"]:
        flip = r.get("flips_at")
        ft = ("n/a" if "flips_at" not in r else f"x{flip:.4g} ({_pct(flip - 1)})" if flip
              else f"none within x1/{FLIP_RANGE:g}..x{FLIP_RANGE:g}")
        fits = "" if all(r["fits"].values()) else "  (over memory at " + ", ".join(
            k.replace("_", " ").replace("pct", "%") for k, v in r["fits"].items()
            if not v) + ")"
        lines.append(f"  {r['input']}: -10% -> {_pct(r['minus_10pct_rel'])}, +10% -> "
                     f"{_pct(r['plus_10pct_rel'])}; flips at {ft}{fits}")
    if d["flip_note"]:
        lines.append(f"  (no flip: {d['flip_note']})")
    return "\n".join(lines)
