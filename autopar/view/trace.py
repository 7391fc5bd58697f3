"""The modeled step as Chrome trace events (chrome://tracing, ui.perfetto.dev).

One process per pipeline stage: every GPU of a stage runs the same schedule (TP, DP, EP and
CP ranks differ in which shard they hold, not in when they run it), so 2,048 GPUs read as
`pp` processes, each naming its GPUs. Threads: `compute` (the stream the model serializes:
each micro-batch's forward, recompute and backward with one child per component, the
exposed communication the compute waits for, the bubbles, the exposed gradient sync and the
optimizer step) and one per communication stream (TP, EP all-to-all, CP, PP send/recv, DP),
holding each collective for its whole time on the link, so what the model hides shows as an
event beside compute and what it exposes as a `wait` child of the compute block.

Times come from re-evaluating the plan's layout (`reeval.rebuild`): the critical stage
(`timing.critical_stage`) runs its m micro-batches back to back and waits, in the fill and
drain, for one chunk of every other stage (`cost.pipeline.chunked_pipeline`); the other
stages are drawn at its cadence, each micro-batch arriving just in time. Interleaved chunks
are drawn merged per micro-batch; DualPipe's forward-and-backward pairs as one block each.
Events on the critical path carry `args.critical = true`; their durations add up to the
plan's step time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..cost.evaluate import Evaluation, StageCost
from ..cost.pipeline import chunk_share
from .reeval import Rebuilt

US = 1e6  # trace timestamps are microseconds
COMPUTE, TP, EP, CP, PP, DP = 1, 2, 3, 4, 5, 6
THREADS = {COMPUTE: "compute", TP: "TP collectives", EP: "EP all-to-all",
           CP: "CP exchange", PP: "PP send/recv", DP: "DP gradient sync"}


@dataclass
class Ev:
    """One complete event ("X"): times in seconds until written."""
    name: str
    pid: int
    tid: int
    t0: float
    dur: float
    cat: str
    args: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ph": "X", "pid": self.pid, "tid": self.tid,
                "ts": self.t0 * US, "dur": self.dur * US, "cat": self.cat, "args": self.args}


def _components(costs, kind: str) -> list[tuple[str, float, float]]:
    """(component, seconds, forward FLOPs) per micro-batch, summed over a stage's layers in
    first-seen order; kind: forward, backward or recompute."""
    out: dict[str, list[float]] = {}
    for lc in costs:
        for c in lc.components:
            t = {"forward": c.time_s, "backward": c.bwd_s,
                 "recompute": c.again * (c.time_s - c.ew_s) + c.again_ew * c.ew_s}[kind]
            row = out.setdefault(c.name, [0.0, 0.0])
            row[0] += t
            row[1] += c.flops
    return [(k, v[0], v[1]) for k, v in out.items() if v[0] > 0]


def _block(name: str, pid: int, t0: float, dur: float, parts: list[tuple[str, float, dict]],
           args: dict) -> list[Ev]:
    """A parent event and its children laid end to end; what the parts do not cover is one
    last child (`other`), so children always fill the parent exactly."""
    out = [Ev(name, pid, COMPUTE, t0, dur, "compute", args)]
    t, scale = t0, 1.0
    total = sum(d for _, d, _ in parts)
    if total > dur > 0:
        scale = dur / total  # rounding: never past the parent
    for pname, d, pargs in parts:
        d *= scale
        if d > 0:
            out.append(Ev(pname, pid, COMPUTE, t, d, pargs.pop("cat", "compute"), pargs))
            t += d
    if t0 + dur - t > 1e-12:
        out.append(Ev("other (casts, parameter gathers)", pid, COMPUTE, t, t0 + dur - t,
                      "compute", {}))
    return out


def _passes(rb: Rebuilt, st: StageCost) -> dict[str, tuple[float, list]]:
    """Forward and backward (recompute first) of one micro-batch on a stage: duration and
    children, the exposed waits last."""
    costs = st.layer_costs + st.edges
    tp_f = sum(c.tp_fwd for c in costs)
    ep_f = sum(c.ep_fwd for c in costs)
    cp_f = sum(c.cp_fwd for c in costs)
    fwd = [(n, t, {"flops": f, "formula": "roofline", "component": n})
           for n, t, f in _components(costs, "forward")]
    fwd += [(f"wait: {k} exposed", v, {"cat": "exposed-comm", "formula": fm})
            for k, v, fm in (("TP", tp_f, "tp-comm"), ("EP all-to-all", ep_f, "ep-comm"),
                             ("CP", cp_f, "cp-attention"), ("PP send", st.p2p_fwd, "p2p"))
            if v > 0]
    out = {"forward": (st.fwd, fwd)}
    if rb.problem.training:
        bwd = [(f"recompute {n}", t, {"flops": f, "formula": "recompute", "component": n})
               for n, t, f in _components(costs, "recompute")]
        bwd += [(n, t, {"flops": 2 * f, "formula": "roofline", "component": n})
                for n, t, f in _components(costs, "backward")]
        bwd += [(f"wait: {k} exposed", v, {"cat": "exposed-comm", "formula": fm})
                for k, v, fm in (("TP", sum(c.tp_bwd for c in costs), "tp-comm"),
                                 ("EP all-to-all", sum(c.ep_bwd for c in costs), "ep-comm"),
                                 ("CP", sum(c.cp_bwd for c in costs), "cp-attention"),
                                 ("PP send", st.p2p_bwd, "p2p")) if v > 0]
        out["backward"] = (st.bwd, bwd)
    return out


def _order(m: int, warmup: int, training: bool) -> list[tuple[str, int]]:
    """A stage's 1F1B order: `warmup` forwards, then one forward and one backward in turn,
    then the remaining backwards (forwards only when serving)."""
    if not training:
        return [("forward", j) for j in range(m)]
    w = min(m, warmup)
    seq = [("forward", j) for j in range(w)]
    for j in range(m - w):
        seq += [("forward", w + j), ("backward", j)]
    return seq + [("backward", j) for j in range(m - w, m)]


def _schedule(rb: Rebuilt, ev: Evaluation) -> tuple[dict[int, list], float, int]:
    """(stage -> [(pass, micro-batch, start)], pipeline end, critical stage)."""
    s, stages = rb.strategy, ev.stages
    p_, m, v = s.pp, s.num_micro_batches, s.virtual_stages
    c = max(range(p_), key=lambda k: stages[k].busy)
    F = [x.fwd for x in stages]
    B = [x.bwd for x in stages]
    dual = s.dualpipe and rb.problem.training
    r = [chunk_share(x.end_layer - x.first_layer, 2 if s.pipeline_schedule == "dualpipev"
                     else v) for x in stages]
    if dual:  # F&B pairs at the slowest rank's cadence, the bubble split over fill and drain
        fill = ev.bubble / 2
        return ({k: [("forward+backward", j, fill + j * stages[c].busy) for j in range(m)]
                 for k in range(p_)}, fill + m * stages[c].busy + ev.bubble / 2, c)
    before = sum(r[k] * F[k] for k in range(c))
    after = sum(r[k] * (F[k] + B[k]) for k in range(c + 1, p_))
    drain = sum(r[k] * B[k] for k in range(c))
    t, crit = before, {}
    for kind, j in _order(m, p_ - c - 1, rb.problem.training):
        if kind == "backward" and j == 0:
            t += after  # the first gradient comes back through the later stages
        crit[(kind, j)] = t
        t += F[c] if kind == "forward" else B[c]
    end = t + drain
    sched = {c: [(k, j, t0) for (k, j), t0 in crit.items()]}
    for k in range(p_):
        if k == c:
            continue
        ops = []
        for kind, j in _order(m, p_ - k - 1, rb.problem.training):
            tc = crit[(kind, j)]  # just in time for (forward) / from (backward) stage c
            if k < c and kind == "forward":
                t0 = tc - sum(r[i] * F[i] for i in range(k, c))
            elif k < c:
                t0 = tc + B[c] + sum(r[i] * B[i] for i in range(k, c)) - B[k]
            elif kind == "forward":
                t0 = tc + r[c] * F[c] + sum(r[i] * F[i] for i in range(c + 1, k))
            else:
                t0 = tc - sum(r[i] * B[i] for i in range(c + 1, k + 1))
            ops.append((kind, j, max(0.0, t0)))
        ops.sort(key=lambda x: x[2])
        dur = {"forward": F[k], "backward": B[k]}
        t_free = 0.0
        for i, (kind, j, t0) in enumerate(ops):  # a stream runs one pass at a time
            ops[i] = (kind, j, max(t0, t_free))
            t_free = ops[i][2] + dur[kind]
        sched[k] = ops
    return sched, end, c


def step_events(rb: Rebuilt, ev: Evaluation) -> list[Ev]:
    """Every event of the modeled step (see the module docstring)."""
    s = rb.strategy
    sched, end, c = _schedule(rb, ev)
    events: list[Ev] = []
    d_max = max(x.dp_exposed for x in ev.stages)
    k_dp = max(range(s.pp), key=lambda k: ev.stages[k].dp_exposed)
    k_opt = max(range(s.pp), key=lambda k: ev.stages[k].optimizer)
    for k, st in enumerate(ev.stages):
        passes = _passes(rb, st)
        if "backward" in passes:
            passes["forward+backward"] = (st.busy, passes["forward"][1] + passes["backward"][1])
        last = 0.0
        for kind, j, t0 in sched[k]:
            dur, parts = passes[kind]
            args = {"micro_batch": j, "stage": k, "layers": [st.first_layer, st.end_layer - 1]}
            if k == c:
                args["critical"] = True
            if t0 - last > 1e-12:
                events.append(Ev("bubble", k, COMPUTE, last, t0 - last, "bubble",
                                 {"critical": True} if k == c else {}))
            events += _block(f"{kind} mb{j}", k, t0, dur, [(a, b, dict(d)) for a, b, d in parts],
                             args)
            events += _comm(rb, st, k, kind, t0, dur)
            last = t0 + dur
        if k == c and end - last > 1e-12:
            events.append(Ev("bubble", k, COMPUTE, last, end - last, "bubble",
                             {"critical": True}))
        tail = max(end, last)
        if st.dp_sync > 0:
            kind = "reduce-scatter + all-gather" if s.zero else "all-reduce"
            t0 = max(0.0, tail + st.dp_exposed - st.dp_sync)  # behind the last backwards
            events.append(Ev(f"gradient sync ({kind})", k, DP, t0, st.dp_sync,
                             "comm", {"formula": "dp-comm", "exposed_s": st.dp_exposed}))
        if st.dp_exposed > 0 or (k == k_dp and d_max > 0):
            events.append(Ev("wait: DP gradient sync exposed", k, COMPUTE, tail, st.dp_exposed,
                             "exposed-comm", {"formula": "dp-comm", **(
                                 {"critical": True} if k == k_dp else {})}))
        if st.optimizer > 0:
            events.append(Ev("optimizer step", k, COMPUTE, max(tail, end + d_max), st.optimizer,
                             "optimizer", {"formula": "1f1b", **(
                                 {"critical": True} if k == k_opt else {})}))
    return events


def _comm(rb: Rebuilt, st: StageCost, k: int, kind: str, t0: float, dur: float) -> list[Ev]:
    """The collectives of one pass on their own streams, each for its time on the link,
    from the start of the pass (what the compute does not hide is its `wait` child)."""
    costs = st.layer_costs + st.edges
    s, out = rb.strategy, []
    fwd, bwd = kind != "backward", kind != "forward" and rb.problem.training
    n = fwd + bwd
    rows = [(TP, "TP " + ("reduce-scatter + all-gather" if s.sequence_parallel
                          else "all-reduce"), sum(c.tp_link for c in costs) * n,
             costs[0].tp_bytes if costs else 0.0, "tp-comm"),
            (EP, "EP dispatch + combine", sum(c.ep_link for c in costs) * n,
             max((c.ep_bytes for c in costs), default=0.0), "ep-comm"),
            (CP, "CP KV exchange", sum(c.cp_link for c in costs) / (1 + rb.problem.training)
             * n, costs[0].cp_bytes if costs else 0.0, "cp-attention")]
    for tid, name, t, nbytes, formula in rows:
        if t > 0:
            out.append(Ev(name, k, tid, t0, min(t, dur), "comm",
                          {"bytes_per_call": nbytes, "link_s": t, "formula": formula}))
    p2p = (st.p2p_fwd if fwd else 0.0) + (st.p2p_bwd if bwd else 0.0)
    if p2p > 0:
        out.append(Ev("PP send/recv", k, PP, t0 + dur - p2p, p2p, "comm", {"formula": "p2p"}))
    return out


def _gpu_ranges(ids: list[int]) -> str:
    ids = sorted(ids)
    parts, lo = [], ids[0]
    for a, b in zip(ids, ids[1:] + [None], strict=True):
        if b != a + 1:
            parts.append(f"{lo}" if lo == a else f"{lo}-{a}")
            lo = b
    return ",".join(parts)


def trace_document(plan: dict[str, Any], rb: Rebuilt) -> dict[str, Any]:
    """The Chrome trace of a plan: {"traceEvents": [...], "displayTimeUnit": "ms", ...}."""
    ev = rb.evaluate()
    events = step_events(rb, ev)
    s = rb.strategy
    meta: list[dict[str, Any]] = []
    serving = not rb.problem.training
    step = "decode step" if serving and rb.problem.workload.phase != "prefill" else "step"
    for k, st in enumerate(ev.stages):
        ids = [g for g in range(s.num_gpus) if s.stage_of(g) == k]
        meta.append({"name": "process_name", "ph": "M", "pid": k, "tid": 0, "args": {
            "name": f"stage {k} ({step}; layers {st.first_layer}-{st.end_layer - 1}; "
                    f"{len(ids)} GPUs: {_gpu_ranges(ids)})"}})
        meta.append({"name": "process_sort_index", "ph": "M", "pid": k, "tid": 0,
                     "args": {"sort_index": k}})
        used = {e.tid for e in events if e.pid == k}
        for tid in sorted(used):
            meta.append({"name": "thread_name", "ph": "M", "pid": k, "tid": tid,
                         "args": {"name": THREADS[tid]}})
    out = [e.to_json() for e in events]
    point = (plan.get("serving") or {}).get("point") or {}
    if serving and point.get("prefill_s"):  # [serving] one prefill of the served load
        pid = s.pp
        meta.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                     "args": {"name": "prefill step (all stages, serving.point.prefill_s)"}})
        meta.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": COMPUTE,
                     "args": {"name": THREADS[COMPUTE]}})
        out.append(Ev("prefill", pid, COMPUTE, ev.step_time, point["prefill_s"], "compute",
                      {"formula": "serving-chunked", "tokens": point.get("per_replica")}
                      ).to_json())
    t = plan.get("timing", {})
    return {"traceEvents": meta + out, "displayTimeUnit": "ms",
            "otherData": {"plan": plan.get("name"), "step_time_s": ev.step_time,
                          "schedule": t.get("schedule"), "critical_stage": t.get(
                              "critical_stage"), "layout": s.describe(),
                          "note": "one process per pipeline stage: its GPUs run the same "
                                  "schedule; args.critical marks the critical path"}}
