"""The plan of data-parallel replicas with shares by speed on mixed groups
(`search.hetero_dp`): per group its replicas, their micro-batch count and the stages every
replica of it runs (the common cut), with each stage's times and memory on that group; the
step is the slowest group's. `check.mixed` reads it like the pipeline plan (`"mode":
"dp_shares"`)."""

from __future__ import annotations

from typing import Any

from ..cost.layer import Problem
from ..search import SearchOptions
from ..search.hetero_dp import SharesEvaluation, shares_problem
from ..spec.groups import MixedHardware
from ..version import __version__
from .mixed import MIXED_FORMAT, _ranges, _stage, mixed_metrics
from .sections import inputs_echo


def build_shares_plan(p: Problem, hw: MixedHardware, opts: SearchOptions,
                      sh: SharesEvaluation, compared: dict[str, Any], framework: str,
                      solve_s: float) -> dict[str, Any]:
    s, b = sh.strategy, sh.bounds
    stages, where, groups = [], [], []
    for i, (g, ev) in enumerate(zip(hw.groups, sh.evaluations, strict=True)):
        gp = shares_problem(p, g, s)
        for st in ev.stages:
            entry = _stage(st.index, st, g, ev.capacity, 0)
            entry.update(gpus=[g.first_gpu, g.first_gpu + g.count - 1],
                         replicas=sh.replicas[i], micro_batches=sh.micro_batches[i],
                         group_step_s=ev.step_time)
            stages.append(entry)
        where.append({"group": g.name, "gpu_type": g.hw.gpu.name,
                      "gpus": _ranges(list(g.gpus)), "stages": list(range(s.pp)),
                      "gpus_used": _ranges(list(g.gpus)), "layers": f"0-{p.model.layers - 1}",
                      "per_stage": f"{sh.replicas[i]} replicas of TP{s.tp} CP{s.cp} PP{s.pp} "
                                   f"EP{s.ep} ETP{s.etp}, {sh.micro_batches[i]} micro-batches "
                                   f"of {s.micro_batch} each"})
        echo = inputs_echo(gp, opts)["hardware"]
        echo.update(name=g.hw.name, nodes=g.hw.nodes, num_gpus=g.count)
        groups.append({"name": g.name, "first_gpu": g.first_gpu, "count": g.count,
                       "hardware": echo})
    base = inputs_echo(p, opts)
    w = p.workload
    worst = max(st.memory.total / ev.capacity for ev in sh.evaluations for st in ev.stages)
    return {
        "mixed_groups": MIXED_FORMAT, "mode": "dp_shares",
        "autopar_version": __version__, "framework": framework,
        "inputs": {"model": base["model"], "workload": base["workload"],
                   "options": base["options"],
                   "hardware": {"name": hw.name, "groups": groups,
                                "inter_node": {"bytes_per_s": hw.inter.bytes_per_s,
                                               "latency_s": hw.inter.latency_s}}},
        "strategy": {**s.to_dict(), "num_micro_batches": max(sh.micro_batches),
                     "num_gpus": hw.num_gpus, "stage_width": s.stage_width,
                     "stage_layers": [[b[k], b[k + 1] - 1] for k in range(s.pp)],
                     "pipeline_layout": s.pp > 1},  # the cut as Megatron's layout flag
        "shares": {g.name: {"replicas": r, "micro_batches": m, "samples": r * m * s.micro_batch}
                   for g, r, m in zip(hw.groups, sh.replicas, sh.micro_batches, strict=True)},
        "stages": stages,
        "runs_where": where,
        "metrics": mixed_metrics(w, sh.step_time, worst, hw.num_gpus),
        "compared": compared,
        "solver": {"time_limit_reached": False, "solve_time_s": solve_s, "status": "BEST_FOUND",
                   "shares": "affine fit in the micro-batch count, bisection, priced exactly"},
    }
