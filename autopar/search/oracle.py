"""Exhaustive enumerator over small spaces: the test oracle for `search`.

It shares only the cost definition (`evaluate`) and the list of legal degrees with the
search; everything the search decides (expert placement, stage cut, bounds, pruning) is
instead enumerated by brute force here.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from ..cost.evaluate import evaluate
from ..cost.layer import MoEState, Problem
from ..cost.strategy import Strategy
from .degrees import SearchOptions, enumerate_strategies
from .experts import ep_geometry, slots_per_gpu
from .placement import PlacementProblem, route_loads

MAX_CUTS = 200_000
MAX_ASSIGNMENTS = 200_000


@dataclass
class OracleResult:
    strategy: Strategy | None
    bounds: list[int] | None
    step_time: float
    evaluated: int


def all_cuts(layers: int, stages: int):
    """Every contiguous cut of `layers` into `stages` non-empty ranges, as boundary lists."""
    for inner in itertools.combinations(range(1, layers), stages - 1):
        yield [0, *inner, layers]


def best_uniform_moe(p: Problem, s: Strategy) -> MoEState:
    """Brute-force the expert assignment (no replicas) with the smallest busiest-rank load."""
    m = p.model
    if not m.is_moe:
        return MoEState()
    if s.ep == 1:
        return MoEState(1.0, m.experts, None)
    nodes, per_node = ep_geometry(p, s)
    cap = slots_per_gpu(p, s)
    prob = PlacementProblem(loads=tuple([1.0] * m.experts), num_gpus=s.ep,
                            gpus_per_node=per_node, slots_per_gpu=cap)
    best = None
    with_replicas = cap * s.ep > m.experts
    if with_replicas and (nodes > 1 or math.comb(2 ** m.experts - 1 + s.ep - 1, s.ep)
                          > MAX_ASSIGNMENTS):
        raise ValueError("oracle: replicated placements over nodes are too many to enumerate")
    space = _subsets(m.experts, s.ep, cap) if with_replicas else _assignments(m.experts, s.ep)
    for gpu_experts in space:
        if max(len(x) for x in gpu_experts) > cap:
            continue
        loads, cross = route_loads(prob, gpu_experts)
        key = (max(loads), max(len(x) for x in gpu_experts), cross)
        if best is None or key < best[0]:
            best = (key, loads, cross)
    (mx, slots, cross), loads, _ = best
    total = m.experts  # unit load per expert
    return MoEState(mx / (sum(loads) / s.ep), slots,
                    cross / total if nodes > 1 else None)


def _subsets(experts: int, ranks: int, cap: int):
    """Every placement with replicas: each rank holds a non-empty subset of at most `cap`
    experts and every expert is somewhere. Ranks on one node are interchangeable, so
    multisets of subsets suffice."""
    subsets = [c for k in range(1, cap + 1) for c in itertools.combinations(range(experts), k)]
    for combo in itertools.combinations_with_replacement(subsets, ranks):
        if len(set().union(*combo)) == experts:
            yield [list(x) for x in combo]


def _assignments(experts: int, ranks: int):
    """Every assignment of equal-load experts to ranks up to relabelling the experts: with
    uniform loads only how many each rank holds matters, so count vectors are exhaustive."""
    n = 0
    for cuts in itertools.combinations(range(experts + ranks - 1), ranks - 1):
        counts, prev = [], -1
        for c in (*cuts, experts + ranks - 1):
            counts.append(c - prev - 1)
            prev = c
        n += 1
        if n > MAX_ASSIGNMENTS:
            raise ValueError("oracle: too many expert assignments")
        start, out = 0, []
        for k in counts:
            out.append(list(range(start, start + k)))
            start += k
        yield out


def exhaustive(p: Problem, opts: SearchOptions | None = None,
               budget_s: float = math.inf) -> OracleResult:
    """Brute force; raises TimeoutError past `budget_s` seconds (benchmarks use a budget)."""
    import time

    opts = opts or SearchOptions()
    best = OracleResult(None, None, math.inf, 0)
    t0 = time.perf_counter()
    for s in enumerate_strategies(p, opts):
        if time.perf_counter() - t0 > budget_s:
            raise TimeoutError(f"exhaustive enumeration over {budget_s:g} s after "
                               f"{best.evaluated} layouts")
        moe_state = best_uniform_moe(p, s)
        moe = [moe_state if p.model.is_moe_layer(i) else MoEState()
               for i in range(p.model.layers)]
        cuts = math.comb(p.model.layers - 1, s.pp - 1)
        if cuts > MAX_CUTS:
            raise ValueError(f"oracle: {cuts} stage cuts for {s.pp} stages of "
                             f"{p.model.layers} layers is too many to enumerate")
        for bounds in all_cuts(p.model.layers, s.pp):
            if time.perf_counter() - t0 > budget_s:
                raise TimeoutError(f"exhaustive enumeration over {budget_s:g} s after "
                                   f"{best.evaluated} layouts")
            ev = evaluate(p, s, bounds, moe)
            best.evaluated += 1
            if ev.feasible and ev.step_time < best.step_time:
                best.strategy, best.bounds, best.step_time = s, bounds, ev.step_time
    return best
