"""A mixed-group solve: the mixed pipeline (`hetero.search_mixed`), data-parallel replicas
with shares by speed (`hetero_dp.search_shares`, where the framework runs uneven shares),
and the two one-type plans they are measured against, both by the existing search
(`driver.search`): (a) every GPU of the cluster treated as the slowest type, (b) the
fastest group alone. (a) is itself a plan on the mixed cluster (`spec.groups.
paced_by_slowest`: every GPU and link at least as good as priced), so it is a third form,
`uniform`, the plan where it is the fastest; a fourth, `ep_slots` (`mixed_ep`), takes
that form's shape with EP groups across the types and expert slots by speed and memory,
where the framework runs uneven slots. The time limit is shared: 40% for the
pipeline, 20% for the shares, the rest for the comparisons."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..cost.bundled import default_calibration
from ..cost.layer import Problem
from ..errors import AutoparError
from ..spec.groups import MIXED_SUPPORT, MixedHardware, fastest, paced_by_slowest, slowest
from .bounds import _CostCache, quick_bound
from .deadline import Deadline
from .degrees import SearchOptions, enumerate_strategies
from .driver import SearchResult, search
from .hetero import MixedResult, group_problem, search_mixed
from .hetero_dp import SharesEvaluation, search_shares
from .mixed_ep import MAX_PRICED, SlotsEvaluation, search_slots, type_problem


@dataclass
class MixedSolve:
    result: MixedResult
    problems: list[Problem]  # each group's own problem, in pipeline order
    compared: dict[str, Any]
    shares: SharesEvaluation | None = None  # the data-parallel shares, where searched
    # (a): one layout over every GPU paced by the slowest type and links, and its problem
    uniform: tuple[Problem, SearchResult] | None = None
    slots: SlotsEvaluation | None = None  # EP across the types, slots by speed and memory

    def times(self) -> dict[str, float]:
        """Each form that has a plan, and its step (or decode step) time."""
        out = {}
        if self.result.best is not None:
            out["pipeline"] = self.result.best.step_time
        if self.shares is not None:
            out["dp_shares"] = self.shares.step_time
        if self.uniform is not None and self.uniform[1].best is not None:
            out["uniform"] = self.uniform[1].objective
        if self.slots is not None:
            out["ep_slots"] = self.slots.step_time
        return out

    @property
    def mode(self) -> str | None:
        """The fastest form ("pipeline", "dp_shares", "uniform" or "ep_slots"; ties to the
        first, in that order), None if none fits."""
        t = self.times()
        return min(t, key=t.get) if t else None

    @property
    def step_time(self) -> float:
        return self.times()[self.mode]


def _one_type(q: Problem | None, opts: SearchOptions, dl: Deadline, label: str,
              why_none: str) -> tuple[dict[str, Any], SearchResult | None]:
    """The existing search's best plan on a one-type problem, summarised, and the search."""
    if q is None:
        return {"hardware": label, "why": why_none}, None
    try:
        r = search(q, replace(opts, time_limit_s=max(dl.left(), 0.05)), None, dl)
    except AutoparError as exc:
        return {"hardware": label, "why": str(exc)}, None
    if r.best is None:
        return {"hardware": label, "gpus": q.hw.num_gpus,
                "why": f"no layout fits {q.hw.num_gpus} x {q.hw.gpu.name}"}, r
    return {"hardware": label, "gpus": q.hw.num_gpus, "gpu_type": q.hw.gpu.name,
            "step_time_s": r.objective, "status": r.status,
            "strategy": r.best.strategy.describe()}, r


def solve_mixed(p: Problem, mixed: MixedHardware, opts: SearchOptions,
                deadline: Deadline) -> MixedSolve:
    dtype = p.model.dtype
    slow, fast = slowest(mixed, dtype), fastest(mixed, dtype)
    r = search_mixed(p, mixed, opts, deadline.fraction(0.4))
    uneven = p.training and (opts.framework == "any" or MIXED_SUPPORT.get(
        opts.framework, {}).get("uneven_dp"))  # shares of a training batch
    shares = search_shares(p, mixed, opts, deadline.fraction(1 / 3)) if uneven else None
    paced = paced_by_slowest(mixed, dtype)
    q_slow = None if paced is None else replace(
        p, hw=paced, calib=default_calibration(slow.hw.gpu.name))
    q_fast = replace(p, hw=fast.hw, calib=default_calibration(fast.hw.gpu.name))
    slow_c, slow_r = _one_type(q_slow, opts, deadline.fraction(0.5),
                               f"{mixed.num_gpus} x {slow.hw.gpu.name}",
                               "the groups share no node size")
    compared = {"slowest_type": slow_c,
                "fast_only": _one_type(q_fast, opts, deadline, f"group {fast.name} alone "
                                       f"({fast.count} x {fast.hw.gpu.name})", "")[0]}
    done = MixedSolve(r, [group_problem(p, r.hw, g) for g in r.hw.groups], compared, shares,
                      None if slow_r is None else (q_slow, slow_r))
    if q_slow is not None and p.model.is_moe and len(mixed.groups) > 1:
        done.slots = search_ep_slots(q_slow, mixed, fast, opts, deadline.fraction(0.5), min(
            done.times().values(), default=float("inf")))
    if done.mode is not None:
        if done.mode not in ("uniform", "ep_slots"):
            other = {"pipeline": shares, "dp_shares": r.best}[done.mode]
            compared["other_mixed_form"] = {
                "form": "dp_shares" if done.mode == "pipeline" else "pipeline",
                **({"step_time_s": other.step_time, "strategy": other.strategy.describe()}
                   if other is not None else {"why": "none fits" if uneven else "not "
                                              "searched (serving, or a framework without "
                                              "uneven shares)"})}
        else:  # each mixed form's own time: what the one-layout form beat
            for form, ev in (("pipeline", r.best), ("dp_shares", shares)):
                compared[f"mixed_{form}"] = (
                    {"form": form, "step_time_s": ev.step_time,
                     "strategy": ev.strategy.describe()} if ev is not None else
                    {"form": form, "why": r.why or "none fits" if form == "pipeline" else
                     "none fits" if uneven else "not searched"})
        for c in compared.values():
            if c.get("step_time_s"):
                c["speedup"] = c["step_time_s"] / done.step_time
                c["margin"] = 1 - done.step_time / c["step_time_s"]
        fast_c = compared["fast_only"]
        if fast_c.get("step_time_s") and fast_c["step_time_s"] < done.step_time:
            # the mixed forms use every group; leaving the slower ones idle is faster here
            fast_c["faster_than_mixed"] = True
    return done


def search_ep_slots(q: Problem, mixed: MixedHardware, fast, opts: SearchOptions,
                    deadline: Deadline, beat: float, most: int = MAX_PRICED
                    ) -> SlotsEvaluation | None:
    """The `ep_slots` form: the layouts of the paced cluster, bounded by the fastest type."""
    lower = type_problem(q, fast)
    lc, qc = _CostCache(lower, opts), _CostCache(q, opts)
    layouts = [s for s in enumerate_strategies(q, opts) if s.ep > 1]
    best, _ = search_slots(q, mixed, layouts, lambda s: qc.get(s)[0],
                           lambda s: quick_bound(lower, s, lc), opts.framework, deadline,
                           beat, most)
    return best
