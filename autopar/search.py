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
from dataclasses import dataclass, field, fields

from .cost import LayerCost, MoEState, Problem
from .errors import InfeasibleError
from .evaluate import (
    Context,
    Evaluation,
    evaluate,
    in_flight,
    layer_costs,
    pipeline_time,
    stage_cost,
)
from .experts import moe_states
from .stages import StageInputs, dp_partition, solve_stages
from .strategy import RECOMPUTE, Strategy, StrategyError

PIN_KEYS = ("tp", "pp", "dp", "ep", "etp", "micro_batch", "num_micro_batches", "recompute",
            "zero", "sequence_parallel", "virtual_stages", "overlap_grad_reduce",
            "overlap_tp_comm", "spare_slots")
SPARE_CHOICES = (0, 1, 2)  # redundant expert slots per GPU tried under a skewed load


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
    model_size: tuple[int, int] = (0, 0)  # CP-SAT stage model (variables, constraints)
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
    cpsat_vars: int = 0  # summed over the stage models solved
    cpsat_constraints: int = 0


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
    if pins.get("num_micro_batches", nmb) != nmb:
        return
    recomputes = RECOMPUTE if training else ("none",)
    sharded = dp > 1 or (p.model.is_moe and (tp * dp) // (ep * etp) > 1)
    zeros = (1, 2, 3) if (training and sharded) else (0,)
    # interleaved 1F1B: v chunks of equal layer counts per stage (Megatron: layers divisible
    # by pp x v, micro-batches by pp)
    chunks = p.model.layers // pp if p.model.layers % pp == 0 else 1
    vs = [v for v in _divisors(chunks) if v == 1 or (training and nmb % pp == 0)]
    if "virtual_stages" in pins:  # interleaving is a training schedule
        vs = [pins["virtual_stages"]] if training or pins["virtual_stages"] == 1 else []
    flags = {k: pins[k] for k in ("overlap_grad_reduce", "overlap_tp_comm") if k in pins}
    for spare in _spare_choices(p, ep, pins):
        _variants(G, tp, pp, dp, ep, etp, mb, nmb, recomputes, zeros, vs,
                  {**flags, "spare_slots": spare}, pins, out)


def _spare_choices(p: Problem, ep: int, pins: dict) -> tuple[int, ...]:
    """Redundant expert slots: what the user fixed, else a few when the load is skewed (the
    search weighs their memory against the balance they buy); none for a uniform load, where
    the placement already fills the slots an uneven split leaves free."""
    if not p.model.is_moe or ep == 1:
        return (0,)
    if "spare_slots" in pins:
        return (pins["spare_slots"],)
    if p.workload.spare_slots is not None:
        return (p.workload.spare_slots,)
    return SPARE_CHOICES if p.workload.expert_load != "uniform" else (0,)


def _variants(G: int, tp: int, pp: int, dp: int, ep: int, etp: int, mb: int, nmb: int,
              recomputes: tuple, zeros: tuple, vs: list, flags: dict, pins: dict,
              out: list[Strategy]) -> None:
    for rc in recomputes:
        if pins.get("recompute", rc) != rc:
            continue
        for z in ([pins["zero"]] if "zero" in pins else zeros):
            sps = (tp > 1,) if "sequence_parallel" not in pins else (pins["sequence_parallel"],)
            for sp, v in ((sp, v) for sp in sps for v in vs):
                try:
                    out.append(Strategy(G, tp, pp, dp, ep, etp, mb, nmb, rc, z, sp, v,
                                        **flags))
                except StrategyError:
                    continue


def stage_inputs(p: Problem, s: Strategy, moe: list[MoEState],
                 costs: list | None = None) -> StageInputs:
    """Per-layer vectors the stage models read; the same numbers `evaluate` sums."""
    costs = costs if costs is not None else layer_costs(p, s, moe)
    return StageInputs.build(p, s, costs, Context.of(p, s, costs))


def _even_bounds(layers: int, pp: int) -> list[int]:
    return [round(k * layers / pp) for k in range(pp + 1)]


class _CostCache:
    """Layer costs do not depend on the ZeRO stage or the micro-batch count: share them."""

    def __init__(self, p: Problem, opts: SearchOptions) -> None:
        self.p, self.opts = p, opts
        self.placements: dict = {}
        self.costs: dict[tuple, tuple] = {}

    def get(self, s: Strategy) -> tuple[list[MoEState], list]:
        moe, costs, _ = self.entry(s)
        return moe, costs

    def context(self, s: Strategy) -> Context:
        return self.entry(s)[2]

    def entry(self, s: Strategy) -> tuple[list[MoEState], list, Context]:
        return self._entry(s)[:3]

    def summary(self, s: Strategy) -> tuple[list, LayerCost, float]:
        """The layers, all of them summed into one LayerCost (stage costs are affine in their
        layers, so costing the sum equals summing the costs), and the slowest layer."""
        moe, costs, ctx, total, slowest = self._entry(s)
        return costs, total, slowest

    def _entry(self, s: Strategy) -> tuple:
        key = (s.tp, s.pp, s.dp, s.ep, s.etp, s.micro_batch, s.recompute, s.sequence_parallel,
               s.overlap_tp_comm, s.spare_slots)
        if key not in self.costs:
            moe = moe_states(self.p, s, self.placements, self.opts)
            costs = layer_costs(self.p, s, moe)
            distinct = {id(c): c for c in costs}.values()
            slowest = max(c.fwd + (c.bwd if self.p.training else 0.0) for c in distinct)
            self.costs[key] = (moe, costs, Context.of(self.p, s, costs), summed(costs), slowest)
        return self.costs[key]


def summed(costs: list[LayerCost]) -> LayerCost:
    """One LayerCost whose every numeric field is the sum over `costs`. Identical layers
    share one LayerCost object, so each distinct one is counted once, times its copies."""
    first = costs[0]
    copies: dict[int, list] = {}
    for c in costs:
        copies.setdefault(id(c), [c, 0])[1] += 1
    distinct = list(copies.values())
    values = {}
    for f in fields(first):
        v = getattr(first, f.name)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            values[f.name] = math.fsum(getattr(c, f.name) * n for c, n in distinct)
        else:
            values[f.name] = type(v)() if isinstance(v, list) else v
    return LayerCost(**values)


def quick_bound(p: Problem, s: Strategy, cache: _CostCache) -> tuple[float, float]:
    """(step-time lower bound, per-GPU memory lower bound) valid for every stage cut.

    All layers and both edges are costed as one stage: its busy time is at most the sum over
    stages, the slowest stage is at least the mean and at least the slowest layer, and the
    largest optimizer step and memory are at least their means over the stages.
    """
    ctx = cache.context(s)
    _, total, slowest_layer = cache.summary(s)
    whole = stage_cost(p, s, s.pp - 1, [total], [ctx.emb, ctx.head], ctx)
    busy = whole.busy
    bottleneck = max(busy / s.pp, slowest_layer)
    time_lb = (pipeline_time(busy, bottleneck, s.num_micro_batches, s.virtual_stages)
               + whole.optimizer / s.pp)
    return time_lb, whole.memory.total / s.pp


def search(p: Problem, opts: SearchOptions,
           progress: Callable[[str], None] | None = None) -> SearchResult:
    """Best-first over the candidates by a cheap lower bound; each popped candidate gets its
    exact stage cut (DP, then CP-SAT when the DP cut is not provably optimal for the full
    step), until the next bound cannot beat the incumbent."""
    t0 = time.perf_counter()
    deadline = t0 + opts.time_limit_s
    strategies = enumerate_strategies(p, opts)
    if not strategies:
        raise InfeasibleError(_no_layout_reason(p, opts), _layout_advice(p, opts))
    cache = _CostCache(p, opts)
    cap = p.hw.gpu.memory_bytes
    cands: list[Candidate] = []
    over_memory: list[tuple[float, Strategy]] = []
    for s in strategies:
        lb, mem_lb = quick_bound(p, s, cache)
        if mem_lb > cap:
            over_memory.append((mem_lb, s))
            continue
        cands.append(Candidate(s, cache.get(s)[0], lb, None))
    cands.sort(key=lambda c: c.lower_bound)
    incumbent: Candidate | None = None
    models = pruned = n_vars = n_cons = 0
    infeasible = len(over_memory)
    status = "OPTIMAL"
    open_bounds: list[float] = []
    for i, c in enumerate(cands):
        if incumbent is not None and c.lower_bound >= incumbent.value * (1 - 1e-9):
            pruned = len(cands) - i
            break
        if incumbent is not None and time.perf_counter() > deadline:
            status = "FEASIBLE"
            open_bounds = [x.lower_bound for x in cands[i:]]
            break
        _solve_candidate(p, c, cache, opts, deadline, incumbent)
        if c.bounds is None:
            infeasible += 1
            over_memory.append((math.inf, c.strategy))
            continue
        models += c.model_size != (0, 0)
        n_vars += c.model_size[0]
        n_cons += c.model_size[1]
        if c.status == "FEASIBLE":
            status = "FEASIBLE"
            open_bounds.append(c.lower_bound)
        if incumbent is None or c.value < incumbent.value:
            incumbent = c
        if progress:
            progress(f"candidates {i + 1}/{len(cands)}  best {incumbent.value:.6g} s  "
                     f"bound {c.lower_bound:.6g} s")
    elapsed = time.perf_counter() - t0
    if incumbent is None:
        closest = _closest(p, over_memory, cache)
        return SearchResult(None, "INFEASIBLE", math.inf, math.inf, elapsed,
                            len(strategies), 0, infeasible, models, cache.placements, closest)
    best_bound = min([incumbent.value] + open_bounds)
    return SearchResult(incumbent, status, incumbent.value, best_bound, elapsed,
                        len(strategies), pruned, infeasible, models, cache.placements,
                        cpsat_vars=n_vars, cpsat_constraints=n_cons)


def _solve_candidate(p: Problem, c: Candidate, cache: _CostCache, opts: SearchOptions,
                     deadline: float, incumbent: Candidate | None) -> None:
    """Exact stage cut of one candidate: sets bounds, value, evaluation, lower bound, status
    (OPTIMAL, CPSAT when CP-SAT proved it, FEASIBLE when CP-SAT ran out of time)."""
    moe, costs, ctx = cache.entry(c.strategy)
    inputs = StageInputs.build(p, c.strategy, costs, ctx)
    bounds, bottleneck = dp_partition(inputs)
    if bounds is None:
        c.status, c.why = "INFEASIBLE", "memory"
        return
    c.bounds = bounds
    c.lower_bound = max(c.lower_bound, inputs.lower_bound(bottleneck))
    c.evaluation = evaluate(p, c.strategy, bounds, moe, costs)
    c.value = c.evaluation.step_time
    c.status = "OPTIMAL"
    if c.strategy.pp == 1 or c.lower_bound >= c.value * (1 - 1e-9):
        return  # the DP cut meets the bound: nothing left to prove
    if incumbent is not None and c.lower_bound >= incumbent.value * (1 - 1e-9):
        return  # cannot win; its own value is still exact for the cut found
    left = max(0.05, deadline - time.perf_counter())
    res = solve_stages(inputs, bounds, left, opts.seed, opts.workers)
    c.model_size = (res.num_vars, res.num_constraints)
    c.status = "CPSAT" if res.status == "OPTIMAL" else "FEASIBLE"
    if res.bounds is not None:
        ev = evaluate(p, c.strategy, res.bounds, moe, costs)
        if ev.step_time < c.value and ev.feasible:
            c.bounds, c.evaluation, c.value = res.bounds, ev, ev.step_time
    if res.status == "OPTIMAL":
        c.lower_bound = c.value
    elif res.bounds is not None:
        c.lower_bound = max(c.lower_bound, min(res.bound_s, c.value))


def _closest(p: Problem, over: list[tuple[float, Strategy]], cache: _CostCache) -> Candidate:
    """The candidate that misses memory by the least (for the infeasibility advice)."""
    finite = [x for x in over if math.isfinite(x[0])] or over
    best = None
    for _, s in sorted(finite, key=lambda x: x[0])[:50]:
        moe, costs = cache.get(s)
        ev = evaluate(p, s, _even_bounds(p.model.layers, s.pp), moe, costs)
        if best is None or ev.max_memory < best.evaluation.max_memory:
            best = Candidate(s, moe, math.inf, None, evaluation=ev)
    return best


def fits(p: Problem, opts: SearchOptions) -> bool:
    """Does any layout fit in memory? Tries the most memory-frugal layouts first and stops
    at the first that fits (time is not looked at)."""
    strategies = enumerate_strategies(p, opts)
    strategies.sort(key=lambda s: (-s.pp, -s.zero, s.recompute != "full", s.micro_batch,
                                   -s.tp, -s.ep))
    cache = _CostCache(p, opts)
    for s in strategies:
        moe, costs, _ = cache.entry(s)
        if quick_bound(p, s, cache)[1] > p.hw.gpu.memory_bytes:
            continue
        if dp_partition(stage_inputs(p, s, moe, costs))[0] is not None:
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
