"""One layer's placement: `place_experts` runs a method and scores it by the routing rule.

CP-SAT model (no free split, so its objective IS the routing-rule load): replica counts are fixed
by water-filling (all spare slots, or a quarter of the GPUs' spare slots fewer when that packs
better), and an expert's replicas sit on d nodes of equal size with R_e / d replicas on each.
Under the routing rule every replica then carries exactly w_e / R_e. Phase 1 minimises the most
loaded GPU; phase 2 keeps that and maximises the node spread of the replicas (and puts
co-activated experts on common nodes). Large groups go hierarchical: node (or 8-GPU block)
counts, then GPUs inside each, then pairwise exchanges and CP-SAT windows across nodes. A
node-aware LPT (or the greedy baseline) polished by exchanges — the anytime placement
(anytime.py) — is the hint, the upper bound and the fallback; the result is never worse than
it, nor than greedy (else greedy is returned). Under a budget the anytime placement comes
first and CP-SAT runs only in what it left.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence

from autopar.errors import InputError

from .anytime import GOOD_ENOUGH, anytime_start
from .baselines import greedy, node_local, round_robin
from .eplb import eplb
from .hier import _solve_core
from .problem import Placement, PlacementProblem, check_placement, lower_bound, route_loads

METHODS = ("cpsat", "anytime", "greedy", "round_robin", "node_local", "eplb", "eplb_global")
MIN_CPSAT_S = 0.02  # budget left after the anytime placement below which CP-SAT is not run
BUDGET_MARGIN = 0.05  # of the budget left: building the models and scoring come on top of
# CP-SAT's own clock (1 s budgets overran by ~4 ms without it, benchmarks/expert_placement.py)


def place_experts(
    problem: PlacementProblem,
    method: str = "cpsat",
    time_limit_s: float = 1.0,
    seed: int = 0,
    workers: int = 1,
    deterministic: bool = False,
    budget_s: float | None = None,
) -> Placement:
    """Place one MoE layer's experts; every method is evaluated under the same routing rule.

    `cpsat` starts from the anytime placement (`anytime.py`; without a budget it tries every
    start candidate rather than stopping at the first good enough) and is never worse than
    it, nor than greedy: if greedy's routed max load is lower (or CP-SAT returns nothing), greedy's
    placement is returned with status FALLBACK. `budget_s` bounds the whole call, anytime
    placement included (engines rebalance online under such a budget): CP-SAT gets what the
    anytime placement left, and none when that is under MIN_CPSAT_S (budget 0: the anytime
    placement alone). Without it, CP-SAT gets `time_limit_s` on top. `deterministic` swaps
    the wall-clock limit for CP-SAT's deterministic time (reproducible with workers=1).
    """
    if method not in METHODS:
        raise ValueError(f"unknown placement method {method!r} (one of {', '.join(METHODS)})")
    if budget_s is not None:
        budget_s = check_budget(budget_s)
    t0 = time.perf_counter()
    lb = lower_bound(problem)
    if method in ("round_robin", "greedy", "node_local"):
        fn = {"round_robin": round_robin, "greedy": greedy, "node_local": node_local}[method]
        return _finish(problem, fn(problem), method, "HEURISTIC", lb, t0)
    if method in ("eplb", "eplb_global"):
        assign, policy = eplb(problem, EPLB_GROUPS if method == "eplb" else None)
        return _finish(problem, assign, method, "HEURISTIC", lb, t0, policy)
    if _filled_evenly(problem):
        return _finish(problem, round_robin(problem), "round_robin", "", lb, t0,
                       "not needed: equal loads fill every slot once, contiguous blocks meet "
                       "the bound and no replica can move a token")
    base = greedy(problem)
    hurry = method == "anytime" or budget_s is not None
    core, start, scale = anytime_start(problem, base, GOOD_ENOUGH if hurry else None)
    first = _anytime(problem, base, start, lb, t0)
    limit = time_limit_s
    if budget_s is not None:
        limit = (budget_s - (time.perf_counter() - t0)) * (1 - BUDGET_MARGIN)
    if method == "anytime" or limit < MIN_CPSAT_S:
        why = "" if method == "anytime" else f"CP-SAT not run: {budget_s:g} s budget spent"
        return dataclasses.replace(first, model_status=why or first.model_status)
    try:
        solved = _solve_core(core, limit, seed, workers, deterministic, start)
    except RuntimeError as exc:
        return _finish(problem, base, "greedy", "FALLBACK", lb, t0, model_status=str(exc))
    bound = solved.bound_units / scale if scale else 0.0
    res = _finish(problem, solved.assign, "cpsat", "", lb, t0, solved.status, bound)
    if float(route_loads(problem, base)[0].max()) < res.objective * (1 - 1e-12):
        ref = _finish(problem, base, "greedy", "", lb, t0, solved.status + ";greedy kept", bound)
        return ref if ref.status == "OPTIMAL" else dataclasses.replace(ref, status="FALLBACK")
    if first.objective < res.objective * (1 - 1e-12):  # CP-SAT's units rounded a tie away
        return dataclasses.replace(first, model_status=solved.status + ";anytime kept",
                                   model_bound=bound, solve_time_s=time.perf_counter() - t0)
    return res


EPLB_GROUPS = 8  # expert groups of EPLB's hierarchical policy: DeepSeek-V3's n_group


def check_budget(budget_s: float, source: str = "placement_budget_s") -> float:
    """The placement budget as a float, or a one-line InputError: finite seconds >= 0."""
    try:
        v = float(budget_s)
    except (TypeError, ValueError):
        raise InputError(source, "", f"must be a number of seconds, got {budget_s!r}") from None
    if not math.isfinite(v) or v < 0:
        raise InputError(source, "", f"must be a finite number of seconds >= 0, got {budget_s!r}")
    return v


def _anytime(problem, base, start, lb, t0) -> Placement:
    """The anytime placement scored by the routing rule: the start, or greedy if that routes
    lower (or no start fits the model). OPTIMAL when it meets the bound, else HEURISTIC."""
    best = base if start is None else start
    if start is not None and route_loads(problem, base)[0].max() < route_loads(
            problem, start)[0].max() * (1 - 1e-12):
        best = base
    pl = _finish(problem, best, "anytime", "", lb, t0)
    return pl if pl.status == "OPTIMAL" else dataclasses.replace(pl, status="HEURISTIC")


def _filled_evenly(problem: PlacementProblem) -> bool:
    """Equal loads and exactly one slot per expert: every GPU carries the mean whatever the
    placement, and with no replica each node keeps the same tokens local, so the contiguous
    blocks are optimal on both objectives (the common uniform-routing case, solved at once)."""
    w = problem.loads
    return (problem.num_gpus * problem.slot_cap == len(w) and problem.coactivation is None
            and max(w) == min(w))


def _finish(
    problem: PlacementProblem,
    assign: Sequence[Sequence[int]],
    method: str,
    status: str,
    lb: float,
    t0: float,
    model_status: str = "",
    model_bound: float = float("nan"),
) -> Placement:
    gpu_experts = tuple(tuple(sorted(ex)) for ex in assign)
    check_placement(problem, gpu_experts)
    loads, cross = route_loads(problem, gpu_experts)
    total = float(sum(problem.loads))
    mx = float(loads.max())
    mean = total / problem.num_gpus
    gap = (mx - lb) / mx if mx > 0 else 0.0
    if not status:
        status = "OPTIMAL" if gap <= 1e-9 else "FEASIBLE"
    return Placement(
        gpu_experts=gpu_experts,
        gpu_load=tuple(float(v) for v in loads),
        max_over_mean=mx / mean if mean > 0 else 1.0,
        cross_node_share=cross / total if total > 0 else 0.0,
        method=method,
        status=status,
        objective=mx,
        best_bound=lb,
        gap=max(gap, 0.0),
        solve_time_s=time.perf_counter() - t0,
        num_experts=problem.num_experts,
        slots_per_gpu=problem.slot_cap,
        model_status=model_status,
        model_bound=model_bound,
        coactivation_together=_together(problem, gpu_experts),
    )


def _together(problem: PlacementProblem, gpu_experts) -> float | None:
    """Share of co-activated tokens whose two experts have a replica on a common node."""
    c = problem.coactivation
    if c is None:
        return None
    nodes: list[set[int]] = [set() for _ in range(problem.num_experts)]
    for g, ex in enumerate(gpu_experts):
        for e in ex:
            nodes[e].add(problem.node_of(g))
    tot = hit = 0.0
    for i in range(problem.num_experts):
        for j in range(i + 1, problem.num_experts):
            tot += c[i][j]
            if nodes[i] & nodes[j]:
                hit += c[i][j]
    return hit / tot if tot > 0 else None
