"""A mixed-group solve: the mixed pipeline (`hetero.search_mixed`) and the two one-type plans
it is measured against, both by the existing search (`driver.search`): (a) every GPU of the
cluster treated as the slowest type, (b) the fastest group alone. The time limit is shared:
half for the mixed search, a quarter for each comparison."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..cost.bundled import default_calibration
from ..cost.layer import Problem
from ..errors import AutoparError
from ..spec.groups import MixedHardware, fastest, slowest
from .deadline import Deadline
from .degrees import SearchOptions
from .driver import search
from .hetero import MixedResult, group_problem, reference_problem, search_mixed


@dataclass
class MixedSolve:
    result: MixedResult
    problems: list[Problem]  # each group's own problem, in pipeline order
    compared: dict[str, Any]


def _one_type(q: Problem | None, opts: SearchOptions, dl: Deadline, label: str,
              why_none: str) -> dict[str, Any]:
    """The existing search's best plan on a one-type problem, summarised."""
    if q is None:
        return {"hardware": label, "why": why_none}
    try:
        r = search(q, replace(opts, time_limit_s=max(dl.left(), 0.05)), None, dl)
    except AutoparError as exc:
        return {"hardware": label, "why": str(exc)}
    if r.best is None:
        return {"hardware": label, "gpus": q.hw.num_gpus,
                "why": f"no layout fits {q.hw.num_gpus} x {q.hw.gpu.name}"}
    return {"hardware": label, "gpus": q.hw.num_gpus, "gpu_type": q.hw.gpu.name,
            "step_time_s": r.objective, "status": r.status,
            "strategy": r.best.strategy.describe()}


def solve_mixed(p: Problem, mixed: MixedHardware, opts: SearchOptions,
                deadline: Deadline) -> MixedSolve:
    dtype = p.model.dtype
    slow, fast = slowest(mixed, dtype), fastest(mixed, dtype)
    r = search_mixed(p, mixed, opts, deadline.fraction(0.5))
    q_slow = reference_problem(p, mixed, slow)
    q_fast = replace(p, hw=fast.hw, calib=default_calibration(fast.hw.gpu.name))
    compared = {
        "slowest_type": _one_type(q_slow, opts, deadline.fraction(0.5),
                                  f"{mixed.num_gpus} x {slow.hw.gpu.name}",
                                  "the groups share no node size"),
        "fast_only": _one_type(q_fast, opts, deadline, f"group {fast.name} alone "
                               f"({fast.count} x {fast.hw.gpu.name})", ""),
    }
    if r.best is not None:
        for c in compared.values():
            if c.get("step_time_s"):
                c["speedup"] = c["step_time_s"] / r.best.step_time
                c["margin"] = 1 - r.best.step_time / c["step_time_s"]
    problems = [group_problem(p, r.hw, g) for g in r.hw.groups]
    return MixedSolve(r, problems, compared)
