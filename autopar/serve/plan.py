"""Turn a serving search into a deployment plan: the usual plan body (GPUs, memory, timing,
communication) for the chosen layout at the chosen concurrency, plus a `serving` section
(TTFT, TPOT, throughput, max concurrency, the frontier, the disaggregated comparison) and a
`launch` section for vLLM and SGLang.

The body is built by `plan.build_plan` for one decode step (prefill for a prefill-only
workload) with `batch` = the chosen concurrency, so `autopar check` can recompute it from
`inputs` like any other plan; the request as given (phase, targets) is echoed in
`serving.workload`.
"""

from __future__ import annotations

from typing import Any

from ..cost.layer import Problem
from ..errors import InfeasibleError, InputError
from ..export.engines import launch_section
from ..model.components import weight_bytes
from ..plan import Plan, build_plan
from ..search import Candidate, SearchOptions, SearchResult, fewest_gpus
from ..search.deadline import Deadline
from ..search.experts import placements_for
from ..spec import GB, HardwareSpec, Workload
from .disagg import DisaggResult, disagg_search
from .evaluate import Evaluator, Layout, ServingPoint, peak_memory, phase_problem, point
from .frontier import ServingResult, Targets, layouts, serving_ceiling, serving_search


def wants_serving(w: Workload) -> bool:
    """`Workload.wants_serving`: whether the workload is a serving search."""
    return w.wants_serving


def serve(p: Problem, opts: SearchOptions, frontier: bool = False, disaggregate: bool = False,
          decode_hw: HardwareSpec | None = None, deadline: Deadline | None = None) -> Plan:
    """Serving search and plan: the most tokens/s per GPU under the workload's TTFT / TPOT
    targets, or without targets the lowest request latency at its concurrency (`batch`).

    `deadline` bounds the whole of it (default: `opts.time_limit_s` from now): the searches
    (the aggregated one, the frontier's ladder, the disaggregated pools) take turns at what
    is left, and a search cut short gives its best point as FEASIBLE, with a bound from
    compute alone (`frontier.serving_ceiling`)."""
    w = p.workload
    if w.kind != "inference":
        raise InputError("workload", "kind", "serving needs an inference workload")
    if (disaggregate or decode_hw is not None) and w.phase != "both":
        raise InputError("workload", "phase",
                         "disaggregated serving needs phase both (whole requests)")
    dl = deadline or Deadline.after(opts.time_limit_s)
    targets = Targets(w.ttft_ms, w.tpot_ms)
    ev = Evaluator(p, opts)
    given = None if targets.any else w.batch
    turns = 1 + (frontier and given is not None) + bool(disaggregate or decode_hw)
    res = serving_search(p, opts, targets, given, ev, dl.fraction(1 / turns), dl.graced())
    if frontier and given is not None:  # the frontier spans every load, not only this one
        turns -= 1
        ladder = serving_search(p, opts, targets, None, ev, dl.fraction(1 / turns))
        res.frontier, res.points = ladder.frontier, res.points + ladder.points
        res.search_time_s += ladder.search_time_s
        res.timed_out |= ladder.timed_out
    if res.best is None:
        raise InfeasibleError(*why_not_served(p, opts, res, targets, given, dl))
    dis = disagg_search(p, opts, targets, decode_hw, dl) if (disaggregate or decode_hw) \
        else None
    return build_serving_plan(p, opts, res, ev, frontier, dis)


def why_not_served(p: Problem, opts: SearchOptions, res: ServingResult, targets: Targets,
                   given: int | None, deadline: Deadline | None = None) -> tuple[str, str]:
    """(reason, what would make it fit) when a serving search found no point to choose;
    `solve` and `frontier` both raise InfeasibleError with it. A search that the time limit
    ended says so (the layouts it did not reach might have served)."""
    if res.timed_out:
        limit = f" of {deadline.limit_s:g} s" if deadline is not None else ""
        return (f"no serving point was found within the time limit{limit} "
                f"({res.layouts - res.unexamined} of {res.layouts} layouts costed, "
                f"{len(res.points)} points, none "
                + ("meeting the targets" if targets.any else "to choose") + ")",
                "raise the time limit (--time-limit) or pin some degrees (--tp, --pp, ...)")
    if not res.points:
        return _why_nothing_fits(p, opts, deadline)
    if given is not None:
        top = max(pt.max_concurrency for pt in res.points)
        return (f"no layout holds {given} concurrent sequences of "
                f"{p.workload.input_len + p.workload.output_len} tokens (at most {top})",
                f"a batch of at most {top}, or more GPUs")
    parts, missed = [], False
    ttfts = [pt.ttft_s for pt in res.points if pt.ttft_s is not None]
    tpots = [pt.tpot_s for pt in res.points if pt.tpot_s is not None]
    if targets.ttft_ms is not None and ttfts:
        parts.append(f"lowest TTFT {min(ttfts) * 1e3:.1f} ms (target {targets.ttft_ms:g})")
        missed |= min(ttfts) * 1e3 > targets.ttft_ms
    if targets.tpot_ms is not None and tpots:
        parts.append(f"lowest TPOT {min(tpots) * 1e3:.2f} ms (target {targets.tpot_ms:g})")
        missed |= min(tpots) * 1e3 > targets.tpot_ms
    both = "" if missed or len(parts) < 2 else " (each is met alone, never both at once)"
    return ("no layout meets the latency targets: " + ", ".join(parts) + both,
            "looser targets, or more / faster GPUs")


def _why_nothing_fits(p: Problem, opts: SearchOptions,
                      deadline: Deadline | None = None) -> tuple[str, str]:
    """No layout holds one sequence: the closest layout and its memory, then the fewest whole
    nodes on which one would fit (or the memory per GPU that would). Under a `deadline` both
    stop at its grace."""
    cap = p.hw.gpu.memory_bytes
    reason = (f"no layout of {p.model.name} on {p.hw.num_gpus} GPUs holds the weights and "
              "the KV cache of one sequence")
    stop = (deadline or Deadline.after(opts.time_limit_s)).graced()
    closest = _closest(p, opts, stop)
    fixes = []
    if closest is not None:
        lay, mem = closest
        reason += (f"; the closest ({lay.describe()}) needs {mem / GB:.1f} GB per GPU of "
                   f"{cap / GB:.1f} GB, {(mem - cap) / GB:.1f} GB short")
    need, tried, ended = _gpus_needed(p, opts, stop)
    gpn = p.hw.gpus_per_node
    fixes.append(f"{need} GPUs ({need // gpn} nodes of {gpn})" if need
                 else "more GPUs (the time limit ended the count)" if ended
                 else f"more than {tried} GPUs")
    if closest is not None:
        fixes.append(f"or GPUs with at least {(closest[1] + 0.5 * GB) / GB:.0f} GB each")
    if opts.pins:
        fixes.append("or fewer pinned options")
    return reason, "would fit with " + " ".join(fixes)


def _closest(p: Problem, opts: SearchOptions,
             deadline: Deadline | None = None) -> tuple[Layout, float] | None:
    """The layout whose fullest GPU needs the least memory for one sequence (even stage
    cut; prefill workspace included when both phases share the GPUs), among those costed
    before `deadline`."""
    ev = Evaluator(p, opts)
    if deadline is not None:
        ev.share_placements(deadline, [])
    phase = "prefill" if p.workload.phase == "prefill" else "decode"
    best: tuple[Layout, float] | None = None
    for lay in layouts(p, opts):
        if deadline is not None and deadline.expired() and best is not None:
            break
        L = p.model.layers
        bounds = [round(k * L / lay.pp) for k in range(lay.pp + 1)]
        pc = ev.phase(lay, phase, 1, bounds)
        if pc is None:
            continue
        pre = ev.prefill(lay, bounds) if p.workload.phase == "both" else None
        mem = peak_memory(pc, pre)
        if best is None or mem < best[1]:
            best = (lay, mem)
    return best


def _gpus_needed(p: Problem, opts: SearchOptions,
                 deadline: Deadline) -> tuple[int | None, int, bool]:
    """`search.fewest_gpus` for serving: some layout serves one sequence, the most
    memory-frugal layouts tried first; `deadline` ends the count."""
    def fits_on(sub: Problem) -> bool | None:
        ev = Evaluator(sub, opts)
        ev.share_placements(deadline, [])
        try:
            lays = layouts(sub, opts)
        except InfeasibleError:
            lays = []
        for lay in sorted(lays, key=lambda x: (-x.pp, -x.tp, -x.ep, x.spare)):
            if deadline.expired():
                return None
            if point(ev, lay, 1) is not None:
                return True
        return False

    return fewest_gpus(p, weight_bytes(p.model), fits_on)


def _mark_replicas(launch: dict[str, Any], lay: Layout, experts: int) -> None:
    """The launch arguments place each expert once; a plan with replicas of hot experts in
    spare slots says so (rather than silently launching a slower, unbalanced layout)."""
    slots = lay.ep * (-(-experts // lay.ep) + lay.spare)
    why = (f"the plan replicates hot experts in {lay.spare} spare slot(s) per GPU "
           f"({slots} expert slots for {experts} experts per EP group of {lay.ep}); give the "
           "engine the plan's experts.layers[*].phy2log as its expert placement, with "
           f"{slots - experts} redundant experts")
    for entry in launch.values():
        entry["exact"] = False
        entry["why"] = f"{entry['why']}; {why}" if entry["why"] else why


def _scheduler(best: ServingPoint) -> tuple[int | None, bool]:
    """The token budget and two-batch overlap the chosen point was priced with."""
    it = best.iteration or {}
    return it.get("token_budget"), bool(it.get("two_batch_overlap"))


def frontier_rows(points: list) -> list[dict[str, Any]]:
    return [pt.to_dict() for pt in points]


def serving_section(p: Problem, res: ServingResult, frontier: bool,
                    disagg: DisaggResult | None) -> dict[str, Any]:
    best = res.best
    out: dict[str, Any] = {
        "mode": "aggregated",
        "workload": p.workload.echo(),
        "objective": res.objective,
        "targets": {"ttft_ms": res.targets.ttft_ms, "tpot_ms": res.targets.tpot_ms},
        "point": best.to_dict(),
        "max_concurrency": best.max_concurrency,
        "search": {"layouts": res.layouts, "evaluations": res.evaluations,
                   "points": len(res.points), "search_time_s": res.search_time_s,
                   "method": "every layout x a doubling ladder of concurrencies up to what "
                             "the KV cache holds; under targets, bisection to the largest "
                             "concurrency that meets them"},
        "formulas": ["serving-decode", *_formulas(best), "serving-kv", "serving-little"],
    }
    if frontier:
        out["frontier"] = frontier_rows(res.frontier)
    if disagg is not None:
        out["disaggregated"] = disagg_section(best, disagg)
    return out


def _formulas(best: ServingPoint) -> list[str]:
    it = best.iteration
    if it is None:
        return []
    return (["serving-chunked", "serving-queue"] if it["token_budget"]
            else ["serving-aggregated"]) + (["serving-tbo"] if it["two_batch_overlap"] else [])


def disagg_section(agg: ServingPoint | None, d: DisaggResult) -> dict[str, Any]:
    """The best disaggregated deployment and which mode wins, by how much (tokens/s/GPU at
    the same targets)."""
    out: dict[str, Any] = {"best": d.best.to_dict() if d.best else None,
                           "splits": d.splits, "search_time_s": d.search_time_s,
                           "time_limit_reached": d.timed_out,
                           "frontier": [x.to_dict() for x in d.frontier],
                           "formulas": ["serving-disagg", "serving-kv-transfer"]}
    a = agg.tokens_per_s_per_gpu if agg else 0.0
    b = d.best.tokens_per_s_per_gpu if d.best else 0.0
    if a == b == 0.0:
        out["winner"], out["ratio"] = None, None
    else:
        out["winner"] = "disaggregated" if b > a else "aggregated"
        out["ratio"] = max(a, b) / max(min(a, b), 1e-30)
    return out


def build_serving_plan(p: Problem, opts: SearchOptions, res: ServingResult, ev: Evaluator,
                       frontier: bool = False, disagg: DisaggResult | None = None) -> Plan:
    best = res.best
    lay = best.layout
    body_phase = "prefill" if p.workload.phase == "prefill" else "decode"
    pc = ev.phase(lay, body_phase, best.per_replica, best.bounds)
    s, e = pc.evaluation.strategy, pc.evaluation
    body = phase_problem(p, body_phase, best.per_replica * lay.dp)
    moe = ev.moe(lay, s)
    status = "FEASIBLE" if res.timed_out else "OPTIMAL"
    cand = Candidate(s, moe, e.step_time, pc.bounds, e.step_time, status, evaluation=e)
    result = SearchResult(cand, status, e.step_time, e.step_time, res.search_time_s,
                          len(res.points), 0, 0, 0, ev._placements,
                          unbounded=res.unexamined, timed_out=res.timed_out)
    placed = placements_for(body, s, ev._placements, opts.seed, opts.workers,
                            budget_s=opts.placement_budget_s)
    plan = build_plan(body, opts, result, placed)
    d = plan.data
    d["serving"] = serving_section(p, res, frontier, disagg)
    fullest = max((x["memory"] for x in d["gpus"]["memory"]), key=lambda x: x["total_bytes"])
    static = fullest["weights_bytes"] + fullest["kv_cache_bytes"]
    d["launch"] = launch_section(lay.to_dict(), p.model.is_moe, best.per_replica,
                                 best.memory_bytes, static, best.capacity_bytes,
                                 p.workload.input_len + p.workload.output_len,
                                 -(-p.hw.num_gpus // p.hw.gpus_per_node),
                                 *_scheduler(best))
    if lay.spare and lay.ep > 1:
        _mark_replicas(d["launch"], lay, p.model.experts)
    mt = d["metrics"]
    mt.update({"tokens_per_s_per_gpu": best.tokens_per_s_per_gpu,
               "tokens_per_s_per_user": best.tokens_per_s_per_user,
               "request_latency_s": best.request_latency_s,
               "requests_per_s": best.requests_per_s,
               "concurrency": best.concurrency, "max_concurrency": best.max_concurrency})
    for key in ("ttft_s", "tpot_s"):
        v = getattr(best, key)
        if v is None:
            mt.pop(key, None)
        else:
            mt[key] = v
    d["solver"].update(serving_solver(p, res, best))
    return plan


def serving_solver(p: Problem, res: ServingResult, best: ServingPoint) -> dict[str, Any]:
    """The solver section of a serving plan: the objective and, for a search the time limit
    cut short, a bound from compute alone over every layout (`serving_ceiling`) with its gap
    (never false, often wide)."""
    up = res.maximizes
    obj = best.tokens_per_s_per_gpu if up else best.request_latency_s
    bound = obj
    if res.timed_out:
        ceiling = serving_ceiling(p, up)
        bound = max(obj, ceiling) if up else min(obj, ceiling)
    gap = 0.0 if bound == obj else abs(bound - obj) / max(abs(bound if up else obj), 1e-30)
    return {
        "status": "FEASIBLE" if res.timed_out else "OPTIMAL",
        "objective": obj,
        "objective_name": "tokens_per_s_per_gpu" if up else "request_latency_s",
        "best_bound": bound, "gap": gap, "solve_time_s": res.search_time_s,
        "candidates": len(res.points), "time_limit_reached": res.timed_out,
        "unbounded": res.unexamined,
        "method": "serving: every layout, concurrency by doubling ladder and bisection; "
                  "exact DP stage cut; CP-SAT expert placement",
    }


__all__ = ["build_serving_plan", "serving_section", "disagg_section", "frontier_rows",
           "why_not_served", "wants_serving", "serve", "serving_solver"]
