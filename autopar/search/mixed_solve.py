"""A mixed-group solve: the mixed pipeline (`hetero.search_mixed`), data-parallel replicas
with shares by speed (`hetero_dp.search_shares`, where the framework runs uneven shares),
and the two one-type plans they are measured against, both by the existing search
(`driver.search`): (a) every GPU of the cluster treated as the slowest type, (b) the
fastest group alone. The time limit is shared: 40% for the pipeline, 20% for the shares,
the rest for the comparisons."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..cost.bundled import default_calibration
from ..cost.layer import Problem
from ..errors import AutoparError
from ..spec.groups import MIXED_SUPPORT, MixedHardware, fastest, slowest
from .deadline import Deadline
from .degrees import SearchOptions
from .driver import search
from .hetero import MixedResult, group_problem, reference_problem, search_mixed
from .hetero_dp import SharesEvaluation, search_shares


@dataclass
class MixedSolve:
    result: MixedResult
    problems: list[Problem]  # each group's own problem, in pipeline order
    compared: dict[str, Any]
    shares: SharesEvaluation | None = None  # the data-parallel shares, where searched

    @property
    def mode(self) -> str | None:
        """The faster of the two mixed forms ("pipeline" or "dp_shares"), None if neither."""
        p, d = self.result.best, self.shares
        if p is None and d is None:
            return None
        if d is None or (p is not None and p.step_time <= d.step_time):
            return "pipeline"
        return "dp_shares"

    @property
    def step_time(self) -> float:
        return (self.result.best.step_time if self.mode == "pipeline"
                else self.shares.step_time)


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
    r = search_mixed(p, mixed, opts, deadline.fraction(0.4))
    uneven = p.training and (opts.framework == "any" or MIXED_SUPPORT.get(
        opts.framework, {}).get("uneven_dp"))  # shares of a training batch
    shares = search_shares(p, mixed, opts, deadline.fraction(1 / 3)) if uneven else None
    q_slow = reference_problem(p, mixed, slow)
    q_fast = replace(p, hw=fast.hw, calib=default_calibration(fast.hw.gpu.name))
    compared = {
        "slowest_type": _one_type(q_slow, opts, deadline.fraction(0.5),
                                  f"{mixed.num_gpus} x {slow.hw.gpu.name}",
                                  "the groups share no node size"),
        "fast_only": _one_type(q_fast, opts, deadline, f"group {fast.name} alone "
                               f"({fast.count} x {fast.hw.gpu.name})", ""),
    }
    done = MixedSolve(r, [group_problem(p, r.hw, g) for g in r.hw.groups], compared, shares)
    if done.mode is not None:
        other = {"pipeline": shares, "dp_shares": r.best}[done.mode]
        compared["other_mixed_form"] = {
            "form": "dp_shares" if done.mode == "pipeline" else "pipeline",
            **({"step_time_s": other.step_time, "strategy": other.strategy.describe()}
               if other is not None else {"why": "none fits" if uneven else "not searched "
                                          "(serving, or a framework without uneven shares)"})}
        for c in compared.values():
            if c.get("step_time_s"):
                c["speedup"] = c["step_time_s"] / done.step_time
                c["margin"] = 1 - done.step_time / c["step_time_s"]
        fast_c = compared["fast_only"]
        if fast_c.get("step_time_s") and fast_c["step_time_s"] < done.step_time:
            # the mixed forms use every group; leaving the slower ones idle is faster here
            fast_c["faster_than_mixed"] = True
    return done
