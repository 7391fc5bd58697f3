"""The plan of a mixed-group pipeline (`search.hetero`): per stage its group, GPUs, layers,
times and memory against that group's capacity; per group what runs where; the two plans it
is measured against (every GPU as the slowest type, the fastest group alone).

A mixed plan is its own document (`"mixed_groups": 1`): `autopar check` reads it with
`check.mixed`, which rebuilds each group's spec from the echo and recomputes every stage's
memory on that group and the step from the stage times (`docs/hardware.md`)."""

from __future__ import annotations

from typing import Any

from ..cost.evaluate import StageCost
from ..cost.layer import Problem
from ..search import SearchOptions
from ..search.hetero import MixedEvaluation, MixedResult
from ..spec.groups import MixedHardware
from ..spec.workload import Workload
from ..version import __version__
from .memory import _memory
from .sections import inputs_echo

MIXED_FORMAT = 1


def mixed_metrics(w: Workload, step: float, worst: float, gpus: int,
                  bubble: float | None = None) -> dict[str, Any]:
    """A mixed plan's metrics (every form alike): the step, tokens/s in all and per GPU, the
    fullest GPU over its capacity, and for an inference step its TTFT (a prefill) or TPOT
    (a decode step): the step itself, as a one-type plan states them."""
    tokens = w.batch * w.tokens_per_sample / step
    out: dict[str, Any] = {"step_time_s": step}
    if bubble is not None:
        out["bubble_s"] = bubble
    out |= {"throughput_tokens_per_s": tokens, "tokens_per_s_per_gpu": tokens / gpus,
            "memory_max_over_capacity": worst}
    if w.kind != "training":
        out["ttft_s" if w.phase == "prefill" else "tpot_s"] = step
    return out


def _ranges(xs: list[int]) -> str:
    return f"{xs[0]}-{xs[-1]}" if len(xs) > 1 else str(xs[0])


def _stage(k: int, st: StageCost, g, cap: float, width: int) -> dict[str, Any]:
    return {
        "stage": k, "group": g.name, "gpu_type": g.hw.gpu.name,
        "gpus": [k * width, (k + 1) * width - 1], "layers": [st.first_layer, st.end_layer - 1],
        "num_layers": st.end_layer - st.first_layer,
        "fwd_s": st.fwd, "bwd_s": st.bwd, "busy_s": st.busy, "p2p_fwd_s": st.p2p_fwd,
        "p2p_bwd_s": st.p2p_bwd, "dp_sync_s": st.dp_sync, "dp_exposed_s": st.dp_exposed,
        "optimizer_s": st.optimizer, "in_flight": st.in_flight,
        "memory": _memory(st.memory, cap),
    }


def runs_where(hw: MixedHardware, ev: MixedEvaluation) -> list[dict[str, Any]]:
    """Per group: its GPUs, the stages and layers it holds, and the layout inside a stage."""
    s, w = ev.strategy, ev.strategy.stage_width
    out = []
    for i, g in enumerate(hw.groups):
        ks = [k for k, gi in enumerate(ev.groups) if gi == i]
        entry: dict[str, Any] = {"group": g.name, "gpu_type": g.hw.gpu.name,
                                 "gpus": _ranges(list(g.gpus)), "stages": ks}
        if ks:
            entry["gpus_used"] = _ranges(list(range(ks[0] * w, (ks[-1] + 1) * w)))
            entry["layers"] = f"{ev.bounds[ks[0]]}-{ev.bounds[ks[-1] + 1] - 1}"
            entry["per_stage"] = (f"TP{s.tp} CP{s.cp} DP{s.dp} EP{s.ep} ETP{s.etp}, "
                                  f"{s.num_micro_batches} micro-batches of {s.micro_batch}")
        out.append(entry)
    return out


def build_mixed_plan(p: Problem, mixed_groups: list[Problem], opts: SearchOptions,
                     r: MixedResult, compared: dict[str, Any], framework: str,
                     solve_s: float) -> dict[str, Any]:
    """The mixed plan's JSON document (`p`: the problem as the first group's; `mixed_groups`:
    each group's own problem, in the order the pipeline runs through them)."""
    ev, hw = r.best, r.hw
    s = ev.strategy
    stages = [_stage(k, st, hw.groups[g], cap, s.stage_width)
              for k, (st, g, cap) in enumerate(zip(ev.stages, ev.groups, ev.capacities,
                                                   strict=True))]
    groups = []
    for g, gp in zip(hw.groups, mixed_groups, strict=True):
        echo = inputs_echo(gp, opts)["hardware"]
        echo.update(name=g.hw.name, nodes=g.hw.nodes, num_gpus=g.count)
        groups.append({"name": g.name, "first_gpu": g.first_gpu, "count": g.count,
                       "hardware": echo})
    base = inputs_echo(p, opts)
    return {
        "mixed_groups": MIXED_FORMAT, "mode": "pipeline",
        "autopar_version": __version__,
        "framework": framework,
        "inputs": {"model": base["model"], "workload": base["workload"],
                   "options": base["options"],
                   "hardware": {"name": hw.name, "groups": groups,
                                "inter_node": {"bytes_per_s": hw.inter.bytes_per_s,
                                               "latency_s": hw.inter.latency_s}}},
        "strategy": {**s.to_dict(), "num_gpus": hw.num_gpus, "stage_width": s.stage_width,
                     "stage_layers": [[ev.bounds[k], ev.bounds[k + 1] - 1]
                                      for k in range(s.pp)],
                     "pipeline_layout": s.pp > 1},  # the cut as Megatron's layout flag
        "stages": stages,
        "runs_where": runs_where(hw, ev),
        "metrics": mixed_metrics(p.workload, ev.step_time, max(
            st.memory.total / c for st, c in zip(ev.stages, ev.capacities, strict=True)),
            hw.num_gpus, ev.bubble),
        "compared": compared,
        "solver": {"layouts": r.layouts, "evaluated": r.evaluated, "pruned_by_bound": r.pruned,
                   "time_limit_reached": r.timed_out, "solve_time_s": solve_s,
                   "status": "FEASIBLE" if r.timed_out else "BEST_FOUND",
                   "cut": "exact enumeration (small cuts) or min-max DP + capped min-sum DP + "
                          "boundary moves"},
    }


def mixed_summary(d: dict[str, Any]) -> str:
    """The terminal table of a mixed plan: per stage its group and layers, then the margins."""
    s, m = d["strategy"], d["metrics"]
    lines = [f"mixed plan ({d.get('mode', 'pipeline')}) on {d['inputs']['hardware']['name']}: "
             f"TP{s['tp']} PP{s['pp']} DP{s['dp']} CP{s.get('cp', 1)} EP{s['ep']}, step "
             f"{m['step_time_s']:.4g} s",
             *(f"  {g}: {x['replicas']} replicas x {x['micro_batches']} micro-batches "
               f"({x['samples']} samples)" for g, x in d.get("shares", {}).items()),
             f"{'stage':>5} {'group':<10} {'gpu':<16} {'layers':>9} {'busy s':>9} "
             f"{'memory GB':>10} {'of GB':>6}"]
    for st in d["stages"]:
        a, b = st["layers"]
        lines.append(f"{st['stage']:>5} {st['group']:<10} {st['gpu_type']:<16} "
                     f"{f'{a}-{b}':>9} {st['busy_s']:>9.4g} "
                     f"{st['memory']['total_bytes'] / 1e9:>10.1f} "
                     f"{st['memory']['capacity_bytes'] / 1e9:>6.0f}")
    return "\n".join(lines + summary_tail(d))


def summary_tail(d: dict[str, Any], rates: bool = True,
                 skip: tuple[str, ...] = ()) -> list[str]:
    """The lines every mixed summary ends with: each plan it was measured against (but
    `skip`) and the margin, the rates (an inference step's TTFT or TPOT; `rates=False`
    where the one-type summary printed them), and a note where the fastest group alone
    beats every form on the whole cluster (the slower groups idle: the plan says so, it
    does not hide it)."""
    out = []
    for name, c in d.get("compared", {}).items():
        if isinstance(c, dict) and name not in skip:
            val = c.get("step_time_s")
            out.append(f"vs {name}: " + (f"{val:.4g} s ({c['speedup']:.3g}x)" if val
                                         else c.get("why", "no plan")))
    mt = d.get("metrics", {})
    if rates:
        out.append(f"throughput {mt.get('throughput_tokens_per_s', 0):.4g} tokens/s "
                   f"({mt.get('tokens_per_s_per_gpu', 0):.4g} per GPU)"
                   + (f"; TPOT {mt['tpot_s'] * 1e3:.3g} ms" if "tpot_s" in mt else "")
                   + (f"; TTFT {mt['ttft_s'] * 1e3:.3g} ms" if "ttft_s" in mt else ""))
    fast = d.get("compared", {}).get("fast_only", {})
    if fast.get("faster_than_mixed"):
        out.append(f"note: {fast['hardware']} is faster than every form on the mixed "
                   "cluster: plan that group alone (its fields as a one-type file)")
    return out
