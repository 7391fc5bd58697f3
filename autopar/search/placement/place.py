"""One layer's placement: `place_experts` runs a method and scores it by the routing rule.

CP-SAT model (no free split, so its objective IS the routing-rule load): replica counts are fixed
by water-filling (all spare slots, or a quarter of the GPUs' spare slots fewer when that packs
better), and an expert's replicas sit on d nodes of equal size with R_e / d replicas on each.
Under the routing rule every replica then carries exactly w_e / R_e. Phase 1 minimises the most
loaded GPU; phase 2 keeps that and maximises the node spread of the replicas (and puts
co-activated experts on common nodes). Large groups go hierarchical: node (or 8-GPU block)
counts, then GPUs inside each, then pairwise exchanges and CP-SAT windows across nodes. A
node-aware LPT (or the greedy baseline) polished by exchanges is the hint, the upper bound and
the fallback; the result is never worse than it, nor than greedy (else greedy is returned).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from .baselines import _lpt, greedy, node_local, round_robin
from .core import _Core, _make_core, _pattern_ok, _peak
from .hier import _solve_core
from .improve import _swap_descent
from .problem import Placement, PlacementProblem, check_placement, lower_bound, route_loads

METHODS = ("cpsat", "greedy", "round_robin", "node_local")


def place_experts(
    problem: PlacementProblem,
    method: str = "cpsat",
    time_limit_s: float = 1.0,
    seed: int = 0,
    workers: int = 1,
    deterministic: bool = False,
) -> Placement:
    """Place one MoE layer's experts; every method is evaluated under the same routing rule.

    `deterministic` swaps the wall-clock limit for CP-SAT's deterministic time (reproducible
    with workers=1). The CP-SAT result is never worse than greedy: if greedy's routed max load
    is lower (or CP-SAT returns nothing), greedy's placement is returned with status FALLBACK.
    """
    if method not in METHODS:
        raise ValueError(f"unknown placement method {method!r} (one of {', '.join(METHODS)})")
    t0 = time.perf_counter()
    lb = lower_bound(problem)
    if method == "round_robin":
        return _finish(problem, round_robin(problem), method, "HEURISTIC", lb, t0)
    if method == "greedy":
        return _finish(problem, greedy(problem), method, "HEURISTIC", lb, t0)
    if method == "node_local":
        return _finish(problem, node_local(problem), method, "HEURISTIC", lb, t0)
    if _filled_evenly(problem):
        return _finish(problem, round_robin(problem), "round_robin", "", lb, t0,
                       "not needed: equal loads fill every slot once, contiguous blocks meet "
                       "the bound and no replica can move a token")
    base = greedy(problem)
    core, start, scale = _start(problem, base)
    try:
        solved = _solve_core(core, time_limit_s, seed, workers, deterministic, start)
    except RuntimeError as exc:
        return _finish(problem, base, "greedy", "FALLBACK", lb, t0, model_status=str(exc))
    bound = solved.bound_units / scale if scale else 0.0
    res = _finish(problem, solved.assign, "cpsat", "", lb, t0, solved.status, bound)
    if float(route_loads(problem, base)[0].max()) < res.objective * (1 - 1e-12):
        ref = _finish(problem, base, "greedy", "", lb, t0, solved.status + ";greedy kept", bound)
        return ref if ref.status == "OPTIMAL" else dataclasses.replace(ref, status="FALLBACK")
    return res


def _filled_evenly(problem: PlacementProblem) -> bool:
    """Equal loads and exactly one slot per expert: every GPU carries the mean whatever the
    placement, and with no replica each node keeps the same tokens local, so the contiguous
    blocks are optimal on both objectives (the common uniform-routing case, solved at once)."""
    w = problem.loads
    return (problem.num_gpus * problem.slot_cap == len(w) and problem.coactivation is None
            and max(w) == min(w))


def _start(
    problem: PlacementProblem, base: list[list[int]]
) -> tuple[_Core, list[list[int]] | None, float]:
    """Pick the replica budget: all spare slots, or a quarter of the GPUs' spare slots fewer.

    With every slot used, each GPU must hold exactly `cap` items, which can leave no good
    packing (many replicas just under half a GPU); a little slack often packs far better.
    Each candidate is scored by LPT plus pairwise polish (milliseconds); ties keep more replicas.
    The greedy baseline `base` is a candidate too when it fits the model (same counts, spans).
    """
    full = problem.num_gpus * problem.slot_cap - problem.num_experts
    budgets = [full]
    if problem.spare_slots is not None and full > 0:
        budgets.append(max(0, full - -(-problem.num_gpus // 4)))
    best = None
    for budget in budgets:
        core, scale = _make_core(problem, budget)
        for hint in (_lpt(core), [list(ex) for ex in base]):
            if hint is None or not _pattern_ok(core, hint):
                continue
            _swap_descent(core, hint, list(core.node_of))
            score = _peak(core, hint)
            if best is None or score < best[0]:
                best = (score, core, hint, scale)
    if best is None:
        core, scale = _make_core(problem, full)
        return core, None, scale
    return best[1], best[2], best[3]


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
