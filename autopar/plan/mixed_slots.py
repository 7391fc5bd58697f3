"""The plan of the `ep_slots` form of a mixed solve (`search.mixed_ep`): one layout over
every GPU whose EP groups hold ranks of every type, the experts of each MoE layer apportioned
by speed and memory (`expert_slots`: per group, the experts on each of its ranks and its
ranks in each EP group). Each stage states its paced times and, per group, that type's own
memory against its own GPU. `check.mixed_slots` recomputes the slots, the memory by term on
each type, each type's FLOP floor and the step."""

from __future__ import annotations

from typing import Any

from ..cost.layer import Problem
from ..search import SearchOptions
from ..search.mixed_ep import SlotsEvaluation, type_problem
from ..spec.groups import MixedHardware
from ..version import __version__
from .memory import _memory
from .mixed import MIXED_FORMAT, _ranges, mixed_metrics, summary_tail
from .sections import inputs_echo


def build_slots_plan(q: Problem, mixed: MixedHardware, opts: SearchOptions,
                     ev: SlotsEvaluation, compared: dict[str, Any], framework: str,
                     solve_s: float) -> dict[str, Any]:
    """`q`: the cluster paced by its slowest links (each type's problem is q with its own
    GPU, `type_problem`)."""
    s, b = ev.strategy, ev.bounds
    names = [g.name for g in mixed.groups]
    stages = []
    for k, st in enumerate(ev.stages):
        stages.append({
            "stage": k, "layers": [b[k], b[k + 1] - 1], "num_layers": b[k + 1] - b[k],
            "fwd_s": st.fwd, "bwd_s": st.bwd, "busy_s": st.busy, "p2p_fwd_s": st.p2p_fwd,
            "p2p_bwd_s": st.p2p_bwd, "dp_sync_s": st.dp_sync, "dp_exposed_s": st.dp_exposed,
            "optimizer_s": st.optimizer, "in_flight": st.in_flight,
            "memory": {n: _memory(ms[k], c) for n, ms, c in zip(names, ev.memories,
                                                                  ev.capacities, strict=True)}})
    groups = []
    for g in mixed.groups:
        echo = inputs_echo(type_problem(q, g), opts)["hardware"]
        groups.append({"name": g.name, "first_gpu": g.first_gpu, "count": g.count,
                       "hardware": echo})
    base = inputs_echo(q, opts)
    E = q.model.experts
    spare = max(ev.slots) - -(-E // s.ep)
    worst = max(m.total / c for ms, c in zip(ev.memories, ev.capacities, strict=True)
                for m in ms)
    w = q.workload
    return {
        "mixed_groups": MIXED_FORMAT, "mode": "ep_slots",
        "autopar_version": __version__, "framework": framework,
        "inputs": {"model": base["model"], "workload": base["workload"],
                   "options": base["options"],
                   "hardware": {"name": mixed.name, "groups": groups, "paced": base["hardware"],
                                "inter_node": {"bytes_per_s": mixed.inter.bytes_per_s,
                                               "latency_s": mixed.inter.latency_s}}},
        "strategy": {**s.to_dict(), "spare_slots": spare, "num_gpus": mixed.num_gpus,
                     "stage_width": s.stage_width,
                     "stage_layers": [[b[k], b[k + 1] - 1] for k in range(s.pp)]},
        "expert_slots": {n: {"experts_per_rank": x, "ranks_per_ep_group": r}
                         for n, x, r in zip(names, ev.slots, ev.members, strict=True)},
        **({"sequence_shares": {n: {"replicas": r, "sequences_per_replica": b}
                                for n, r, b in zip(names, ev.replicas, ev.seqs, strict=True)}}
           if ev.seqs else {}),
        "stages": stages,
        "runs_where": [{"group": g.name, "gpu_type": g.hw.gpu.name,
                        "gpus": _ranges(list(g.gpus)), "stages": list(range(s.pp)),
                        "per_stage": f"{r} of every EP group's {s.ep} ranks, {x} experts of "
                                     f"each MoE layer on each (of {E}); TP{s.tp} ETP{s.etp}"
                                     + (f"; {ev.seqs[i]} sequences on each of its "
                                        f"{ev.replicas[i]} attention-DP replicas"
                                        if ev.seqs else "")}
                       for i, (g, x, r) in enumerate(zip(mixed.groups, ev.slots, ev.members,
                                                         strict=True))],
        "metrics": mixed_metrics(w, ev.step_time, worst, mixed.num_gpus, ev.bubble),
        "compared": compared,
        "solver": {"time_limit_reached": False, "solve_time_s": solve_s, "status": "BEST_FOUND",
                   "slots": "greedy by each type's priced expert time, under its memory"},
    }


def slots_summary(d: dict[str, Any]) -> str:
    """The terminal table of an ep_slots plan: the slots per type, per stage each type's
    memory, then the margins."""
    s, m = d["strategy"], d["metrics"]
    lines = [f"mixed plan (ep_slots) on {d['inputs']['hardware']['name']}: TP{s['tp']} "
             f"PP{s['pp']} DP{s['dp']} EP{s['ep']} ETP{s['etp']}, step "
             f"{m['step_time_s']:.4g} s; EP groups across the types, experts per rank:",
             *(f"  {g}: {x['experts_per_rank']} experts on each of its {x['ranks_per_ep_group']}"
               f" ranks of every EP group" for g, x in d["expert_slots"].items()),
             *(f"  {g}: {x['sequences_per_replica']} sequences on each of its "
               f"{x['replicas']} attention-DP replicas"
               for g, x in d.get("sequence_shares", {}).items())]
    for st in d["stages"]:
        a, b = st["layers"]
        mem = ", ".join(f"{g} {x['total_bytes'] / 1e9:.1f}/{x['capacity_bytes'] / 1e9:.0f} GB"
                        for g, x in st["memory"].items())
        lines.append(f"  stage {st['stage']} layers {a}-{b}: busy {st['busy_s']:.4g} s; {mem}")
    return "\n".join(lines + summary_tail(d))
