"""The plan's `runner_ups` section: the best layout of each of the next degree choices the
search proved (`search.runner_ups`), with its step time, by how much it loses to the plan's
layout and on which timing term, so `autopar explain` needs no re-search."""

from __future__ import annotations

from typing import Any

from ..cost.layer import Problem
from ..search.runner_ups import DEGREE_KEYS
from .timing import CP_PHASE, PHASES, _timing


def runner_ups_section(p: Problem, result, timing: dict[str, Any]) -> dict[str, Any] | None:
    """None when the search kept none (serving, or nothing else fits)."""
    ups = result.runner_ups
    if ups is None:
        return None
    best = result.best.value
    terms = PHASES + (CP_PHASE,)
    layouts = []
    for i, c in enumerate(ups.found):
        s, ev = c.strategy, c.evaluation
        t = _timing(p, s, ev)
        mine = {k: t.get(k, 0.0) for k in terms if t.get(k, 0.0) or timing.get(k, 0.0)}
        delta = {k: v - timing.get(k, 0.0) for k, v in mine.items()}
        layouts.append({
            "degrees": {k: getattr(s, k) for k in DEGREE_KEYS},
            "strategy": s.to_dict(),  # every option: what explain re-evaluates
            "stage_layers": [[x.first_layer, x.end_layer - 1] for x in ev.stages],
            "step_time_s": c.value,
            "loses_s": c.value - best,
            "loses_on": max(delta, key=delta.get).removesuffix("_s") if delta else "step",
            "terms": mine,
            "memory_max_over_capacity": ev.max_memory / p.hw.gpu.memory_bytes,
            "status": c.status,
            # the optimum of its degrees, what a pinned solve gives; FEASIBLE: a DP cut that
            # a stage model might improve on
            "proven": i < ups.proven and c.status != "FEASIBLE",
        })
    return {"by": list(DEGREE_KEYS), "complete": ups.complete, "layouts": layouts}
