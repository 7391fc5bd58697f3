"""Many layers: `place_layers` solves layers that are identical up to a relabelling of experts
once and the distinct ones concurrently, within the run's deadline.

Why: a model has tens of MoE layers and the whole run has one time limit; `out_of_time` gives
a layer the greedy placement when its share of the time is too small for CP-SAT.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from autopar.search.deadline import Deadline

from .baselines import greedy
from .place import _filled_evenly, _finish, check_budget, place_experts
from .problem import Placement, PlacementProblem, lower_bound

MIN_SOLVE_S = 0.02  # below this share of the time limit a layer gets the greedy placement


def place_layers(
    problems: Sequence[PlacementProblem],
    method: str = "cpsat",
    time_limit_s: float = 1.0,
    seed: int = 0,
    workers: int = 1,
    deterministic: bool = False,
    deadline: Deadline | None = None,
    budget_s: float | None = None,
) -> list[Placement]:
    """Place many layers: identical problems (up to expert relabelling) are solved once, the
    distinct ones concurrently on `workers` threads (CP-SAT releases the GIL while it solves).

    `time_limit_s` caps each distinct layer; with a `deadline` each also gets at most its
    share of the time left before it, and the greedy placement when that share is below
    MIN_SOLVE_S (the run's time limit bounds all layers together, not each). `budget_s`
    (place_experts) replaces `time_limit_s` as the cap: each distinct layer gets the anytime
    placement, then CP-SAT in what is left of min(budget, its share), so a short share gives
    the anytime placement rather than greedy's.
    """
    keys = [_canonical_problem(p, method) for p in problems]
    distinct = list(dict.fromkeys(k[0] for k in keys))
    cap = time_limit_s if budget_s is None else check_budget(budget_s)

    def run(cp: PlacementProblem, limit: float = cap) -> Placement:
        if budget_s is not None:
            return place_experts(cp, method, seed=seed, deterministic=deterministic,
                                 budget_s=max(0.0, limit))
        if method == "cpsat" and limit < MIN_SOLVE_S and not _filled_evenly(cp):
            return out_of_time(cp)
        return place_experts(cp, method, limit, seed, 1, deterministic)

    def share(rounds: int) -> float:
        return cap if deadline is None else min(cap, deadline.left() / max(1, rounds))

    if workers > 1 and len(distinct) > 1:
        limit = share(-(-len(distinct) // workers))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            solved = dict(zip(distinct, pool.map(lambda cp: run(cp, limit), distinct),
                              strict=True))
    else:
        solved = {cp: run(cp, share(len(distinct) - i)) for i, cp in enumerate(distinct)}
    return [_relabel(solved[cp], perm) for cp, perm in keys]


def out_of_time(problem: PlacementProblem) -> Placement:
    """The greedy placement, for when the time limit leaves no time for CP-SAT: OPTIMAL if it
    meets the bound anyway, else FALLBACK with the reason in model_status."""
    t0 = time.perf_counter()
    lb = lower_bound(problem)
    pl = _finish(problem, greedy(problem), "greedy", "", lb, t0,
                 "CP-SAT not run: the time limit was spent")
    return pl if pl.status == "OPTIMAL" else dataclasses.replace(pl, status="FALLBACK")


def _canonical_problem(
    p: PlacementProblem, method: str
) -> tuple[PlacementProblem, tuple[int, ...]]:
    """Sort experts by load (ties by index) so layers that differ by a relabelling coincide.

    Round-robin depends on expert ids, and co-activation ties ids together, so those keep ids.
    """
    e = p.num_experts
    if p.coactivation is not None or method == "round_robin":
        return p, tuple(range(e))
    perm = tuple(sorted(range(e), key=lambda i: (-p.loads[i], i)))  # canonical i -> original
    loads = tuple(p.loads[i] for i in perm)
    return PlacementProblem(
        loads, p.num_gpus, p.gpus_per_node, p.slots_per_gpu, p.spare_slots
    ), perm


def _relabel(pl: Placement, perm: tuple[int, ...]) -> Placement:
    if list(perm) == list(range(len(perm))):
        return pl
    experts = tuple(tuple(sorted(perm[e] for e in ex)) for ex in pl.gpu_experts)
    return dataclasses.replace(pl, gpu_experts=experts)
