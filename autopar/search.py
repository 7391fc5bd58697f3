"""Find the layout with the lowest step time: enumerate degrees, bound, then solve exactly.

Degrees (TP, PP, DP, EP, ETP, micro-batch, recompute, ZeRO, sequence parallel) are enumerated
outside CP-SAT (reference/cpsat.md sec. 3.1). For each candidate the experts are placed on the
EP group (`placement`, CP-SAT) and a DP over contiguous layer ranges gives a feasible stage
cut and a lower bound; candidates are then taken best bound first and the stage cut is solved
exactly by CP-SAT, hinted with the DP cut, until the next bound cannot beat the incumbent.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .cost import MoEState, Problem
from .errors import InfeasibleError
from .evaluate import Context, Evaluation, evaluate, in_flight, layer_costs
from .experts import moe_states
from .stages import StageInputs, dp_partition, solve_stages
from .strategy import RECOMPUTE, Strategy, StrategyError

PIN_KEYS = ("tp", "pp", "dp", "ep", "etp", "micro_batch", "recompute", "zero",
            "sequence_parallel")


@dataclass(frozen=True)
class SearchOptions:
    pins: dict = field(default_factory=dict)  # degree or option name -> fixed value
    time_limit_s: float = 10.0
    seed: int = 0
    workers: int = 1
    max_tp: int | None = None  # default: GPUs per node (TP stays inside an NVLink island)


@dataclass
class Candidate:
    strategy: Strategy
    moe: list[MoEState]
    lower_bound: float
    bounds: list[int] | None  # DP stage cut (None: memory-infeasible)
    value: float = math.inf  # exact step time once solved
    status: str = "PENDING"
    evaluation: Evaluation | None = None
    why: str = ""


@dataclass
class SearchResult:
    best: Candidate | None
    status: str
    objective: float
    best_bound: float
    solve_time_s: float
    candidates: int
    pruned_by_bound: int
    infeasible: int
    cpsat_models: int
    placement: dict
    closest: Candidate | None = None  # the least-over-memory candidate, for infeasibility advice


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def enumerate_strategies(p: Problem, opts: SearchOptions) -> list[Strategy]:
    """Every layout the inputs allow, after pins and divisibility rules (DESIGN sec. 3)."""
    m, w, G = p.model, p.workload, p.hw.num_gpus
    pins = opts.pins
    max_tp = opts.max_tp or p.hw.gpus_per_node
    out = []
    for pp in _divisors(G):
        if pp > m.layers or pins.get("pp", pp) != pp:
            continue
        W = G // pp
        for tp in _divisors(W):
            if pins.get("tp", tp) != tp or (tp > max_tp and "tp" not in pins):
                continue
            heads_ok = m.heads % tp == 0 and (m.kv_heads % tp == 0 or tp % m.kv_heads == 0
                                              or m.mla is not None)
            if not heads_ok:
                continue
            dp = W // tp
            if pins.get("dp", dp) != dp:
                continue
            per_replica = -(-w.batch // dp)
            if w.kind == "training" and w.batch < dp:
                continue
            for ep in (_divisors(W) if m.is_moe else [1]):
                if ep > max(m.experts, 1) or pins.get("ep", ep) != ep:
                    continue
                for etp in _divisors(W // ep):
                    if pins.get("etp", etp) != etp or (etp not in (1, tp) and "etp" not in pins):
                        continue
                    for mb in _divisors(per_replica):
                        if pins.get("micro_batch", mb) != mb:
                            continue
                        _options(G, tp, pp, dp, ep, etp, mb, per_replica // mb, p, pins, out)
    return out


def _options(G: int, tp: int, pp: int, dp: int, ep: int, etp: int, mb: int, nmb: int,
             p: Problem, pins: dict, out: list[Strategy]) -> None:
    training = p.workload.kind == "training"
    recomputes = RECOMPUTE if training else ("none",)
    sharded = dp > 1 or (p.model.is_moe and (tp * dp) // (ep * etp) > 1)
    zeros = (1, 2, 3) if (training and sharded) else (0,)
    for rc in recomputes:
        if pins.get("recompute", rc) != rc:
            continue
        for z in ([pins["zero"]] if "zero" in pins else zeros):
            sps = (tp > 1,) if "sequence_parallel" not in pins else (pins["sequence_parallel"],)
            for sp in sps:
                try:
                    out.append(Strategy(G, tp, pp, dp, ep, etp, mb, nmb, rc, z, sp))
                except StrategyError:
                    continue


def stage_inputs(p: Problem, s: Strategy, moe: list[MoEState]) -> StageInputs:
    """Per-layer vectors the stage models read; the same numbers `evaluate` sums."""
    costs = layer_costs(p, s, moe)
    return StageInputs.build(p, s, costs, Context.of(p, s, costs))


def _even_bounds(layers: int, pp: int) -> list[int]:
    return [round(k * layers / pp) for k in range(pp + 1)]


def search(p: Problem, opts: SearchOptions,
           progress: Callable[[str], None] | None = None) -> SearchResult:
    t0 = time.perf_counter()
    deadline = t0 + opts.time_limit_s
    strategies = enumerate_strategies(p, opts)
    if not strategies:
        raise InfeasibleError(_no_layout_reason(p, opts), _layout_advice(p, opts))
    placements: dict = {}
    cands: list[Candidate] = []
    for s in strategies:
        moe = moe_states(p, s, placements, opts)
        inputs = stage_inputs(p, s, moe)
        bounds, bottleneck = dp_partition(inputs)
        c = Candidate(s, moe, math.inf, bounds)
        if bounds is None:
            c.status, c.why = "INFEASIBLE", "memory"
            c.evaluation = evaluate(p, s, _even_bounds(p.model.layers, s.pp), moe)
        else:
            c.lower_bound = inputs.lower_bound(bottleneck)
            c.evaluation = evaluate(p, s, bounds, moe)
            c.value = c.evaluation.step_time
        cands.append(c)
    feasible = [c for c in cands if c.bounds is not None]
    infeasible = len(cands) - len(feasible)
    if not feasible:
        closest = min(cands, key=lambda c: c.evaluation.max_memory)
        return SearchResult(None, "INFEASIBLE", math.inf, math.inf,
                            time.perf_counter() - t0, len(cands), 0, infeasible, 0,
                            placements, closest)
    feasible.sort(key=lambda c: (c.lower_bound, c.value))
    incumbent = min(feasible, key=lambda c: c.value)
    models = pruned = 0
    status = "OPTIMAL"
    open_bounds = []
    for i, c in enumerate(feasible):
        if c.lower_bound >= incumbent.value * (1 - 1e-9):
            pruned = len(feasible) - i
            break
        if time.perf_counter() > deadline:
            status = "FEASIBLE"
            open_bounds = [x.lower_bound for x in feasible[i:]]
            break
        if c.strategy.pp == 1:
            c.status = "OPTIMAL"
        else:
            inputs = stage_inputs(p, c.strategy, c.moe)
            left = max(0.05, deadline - time.perf_counter())
            res = solve_stages(inputs, c.bounds, left, opts.seed, opts.workers)
            models += 1
            c.status = res.status
            if res.bounds is not None:
                ev = evaluate(p, c.strategy, res.bounds, c.moe)
                if ev.step_time < c.value and ev.feasible:
                    c.bounds, c.evaluation, c.value = res.bounds, ev, ev.step_time
            if res.status != "OPTIMAL":
                status = "FEASIBLE"
                open_bounds.append(max(c.lower_bound, res.bound_s))
        if c.value < incumbent.value:
            incumbent = c
        if progress:
            progress(f"candidates {i + 1}/{len(feasible)}  best {incumbent.value:.6g} s  "
                     f"bound {c.lower_bound:.6g} s")
    for c in feasible:
        if c.value < incumbent.value:
            incumbent = c
    best_bound = min([incumbent.value] + open_bounds)
    return SearchResult(incumbent, status, incumbent.value, best_bound,
                        time.perf_counter() - t0, len(cands), pruned, infeasible, models,
                        placements)


def fits(p: Problem, opts: SearchOptions) -> bool:
    """Does any layout fit in memory? Tries the most memory-frugal layouts first and stops
    at the first that fits (time is not looked at)."""
    strategies = enumerate_strategies(p, opts)
    strategies.sort(key=lambda s: (-s.pp, -s.zero, s.recompute != "full", s.micro_batch,
                                   -s.tp, -s.ep))
    placements: dict = {}
    for s in strategies:
        moe = moe_states(p, s, placements, opts)
        if dp_partition(stage_inputs(p, s, moe))[0] is not None:
            return True
    return False


def _no_layout_reason(p: Problem, opts: SearchOptions) -> str:
    if opts.pins:
        pinned = ", ".join(f"{k}={v}" for k, v in sorted(opts.pins.items()))
        return f"no layout satisfies the pins ({pinned}) with {p.hw.num_gpus} GPUs"
    return f"no valid layout of {p.model.name} on {p.hw.num_gpus} GPUs"


def _layout_advice(p: Problem, opts: SearchOptions) -> str:
    m = p.model
    hints = []
    if "tp" in opts.pins:
        hints.append(f"TP must divide heads ({m.heads}) and the GPUs per stage")
    if "pp" in opts.pins:
        hints.append(f"PP must divide the GPU count ({p.hw.num_gpus}) and be <= layers "
                     f"({m.layers})")
    if "dp" in opts.pins or "tp" in opts.pins or "pp" in opts.pins:
        hints.append("tp * dp * pp must equal the GPU count")
    if "ep" in opts.pins:
        hints.append("EP * ETP must divide tp * dp")
    return "; ".join(hints) or "check the pins and the GPU count"


__all__ = ["SearchOptions", "SearchResult", "Candidate", "search", "enumerate_strategies",
           "PIN_KEYS", "in_flight"]
