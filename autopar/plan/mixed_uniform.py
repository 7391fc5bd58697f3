"""The plan of the `uniform` form of a mixed solve (`search.mixed_solve`): one layout over
every GPU of the mixed cluster, priced as if every GPU were the slowest type on the slowest
links (`spec.groups.paced_by_slowest`). It is a one-type plan document (the one-type
`autopar check` reads it from its own echo) with `"mode": "uniform"` and `uniform_on`, the
mixed cluster it runs on: each group and its GPUs, and the type that paces it. Checked
against the mixed file (`autopar check --hw`), `check.uniform` rebuilds the paced spec."""

from __future__ import annotations

from typing import Any

from ..cost.layer import Problem
from ..search import SearchOptions
from ..search.deadline import Deadline
from ..search.driver import SearchResult
from ..search.experts import placements_for
from ..spec.groups import GPUGroup, MixedHardware, slowest
from .build import build_plan
from .document import Plan
from .mixed import summary_tail

UNIFORM_NOTE = ("every GPU does equal work and the slowest paces it: the faster GPUs idle "
                "for part of each step; every GPU and link of the mixed cluster does at "
                "least what the plan's hardware was priced at (check --hw verifies it)")


def build_uniform_plan(q: Problem, mixed: MixedHardware, opts: SearchOptions,
                       r: SearchResult, compared: dict[str, Any], deadline: Deadline) -> Plan:
    """The one-type plan of `q` (the cluster paced by its slowest type), annotated with the
    mixed cluster it runs on and the mixed forms it beat."""
    placed = placements_for(q, r.best.strategy, r.placement, opts.seed, opts.workers,
                            deadline=deadline, budget_s=opts.placement_budget_s)
    plan = build_plan(q, opts, r, placed)
    mark_uniform(plan.data, mixed, slowest(mixed, q.model.dtype), compared)
    return plan


def mark_uniform(data: dict[str, Any], mixed: MixedHardware, slow: GPUGroup,
                 compared: dict[str, Any]) -> None:
    """Make a one-type plan document (a training step's or a serving search's, solved on
    the cluster paced by `slow`) the uniform plan on `mixed`: `"mode": "uniform"`,
    `uniform_on` (the groups, the type that paces them) and what it was measured against."""
    data["mode"] = "uniform"
    data["uniform_on"] = {
        "hardware": mixed.name, "source": mixed.source, "paced_by": slow.hw.gpu.name,
        "groups": [{"name": g.name, "gpu_type": g.hw.gpu.name, "first_gpu": g.first_gpu,
                    "count": g.count} for g in mixed.groups],
        "note": UNIFORM_NOTE}
    data["compared"] = compared


def uniform_summary(d: dict[str, Any]) -> str:
    """The lines a uniform plan adds to the one-type summary: where it runs, what paces it,
    the mixed forms it beat."""
    u = d["uniform_on"]
    lines = [f"uniform plan on the mixed cluster {u['hardware']} (" + ", ".join(
        f"{g['name']}: {g['count']} x {g['gpu_type']}" for g in u["groups"]) +
        f"), paced by {u['paced_by']}: {u['note']}"]
    # it is the slowest-type plan itself: not measured against itself
    return "\n".join(lines + summary_tail(d, rates=False, skip=("slowest_type",)))
