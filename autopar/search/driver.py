"""Find the layout with the lowest step time: enumerate degrees, bound, then solve exactly.

Degrees (TP, PP, DP, EP, ETP, micro-batch, recompute, ZeRO, sequence parallel) are enumerated
outside CP-SAT (reference/cpsat.md sec. 3.1). For each candidate the experts are placed on the
EP group (`placement`, CP-SAT) and a DP over contiguous layer ranges gives a feasible stage
cut and a lower bound; candidates are then taken best bound first and the stage cut is solved
exactly by CP-SAT, hinted with the DP cut, until the next bound cannot beat the incumbent.

The time limit bounds the whole search (`Deadline`): bounding, placements and stage models
share it, and a search cut short reports the best layout found, its bound and status FEASIBLE.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from ..cost.evaluate import (
    Context,
    Evaluation,
    evaluate,
    in_flight,
    layer_costs,
    pipeline_time,
    stage_cost,
)
from ..cost.layer import LayerCost, MoEState, Problem
from ..cost.strategy import RECOMPUTE, Strategy, StrategyError
from ..errors import InfeasibleError
from ..model.components import head_components, model_flops_per_token
from .deadline import Deadline
from .experts import moe_states, placement_key
from .stages import StageInputs, dp_partition, solve_stages

PIN_KEYS = ("tp", "pp", "dp", "ep", "etp", "micro_batch", "num_micro_batches", "recompute",
            "zero", "sequence_parallel", "virtual_stages", "overlap_grad_reduce",
            "overlap_tp_comm", "spare_slots")
SPARE_CHOICES = (0, 1, 2)  # redundant expert slots per GPU tried under a skewed load
BOUND_SHARE = 0.5  # of the search time left: bounding layouts before stage cuts are solved
PLACEMENT_SHARE = 0.3  # of the search time: the expert placements the bounds need
MIN_CPSAT_S = 0.02  # a stage model with less time than this is not built (the DP cut stands)
FALLBACK_GRACE_S = 0.5  # past the limit, at most this (or a tenth of the limit) to find any


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
    unbounded: int = 0  # layouts the time limit left without a bound (best_bound covers them)
    timed_out: bool = False  # the time limit, not the bounds, ended the search


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
    """Layer costs do not depend on the ZeRO stage or the micro-batch count: share them.

    `placing` is the part of the time limit for expert placements, split evenly over the
    `keys` distinct placement problems not yet placed (None: each gets its usual cap)."""

    def __init__(self, p: Problem, opts: SearchOptions, placing: Deadline | None = None,
                 keys: int = 0) -> None:
        self.p, self.opts = p, opts
        self.placements: dict = {}
        self.costs: dict[tuple, tuple] = {}
        self.placing, self.keys_left = placing, keys

    def _placement_deadline(self, s: Strategy) -> Deadline | None:
        key = placement_key(self.p, s)
        if self.placing is None or key is None or key in self.placements:
            return None
        share = max(0.0, self.placing.left()) / max(1, self.keys_left)
        self.keys_left -= 1
        return Deadline.after(share)

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
            moe = moe_states(self.p, s, self.placements, self.opts, self._placement_deadline(s))
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


def _silent(msg: str) -> None:
    return None


def search(p: Problem, opts: SearchOptions, progress: Callable[[str], None] | None = None,
           deadline: Deadline | None = None) -> SearchResult:
    """Best-first over the candidates by a cheap lower bound; each popped candidate gets its
    exact stage cut (DP, then CP-SAT when the DP cut is not provably optimal for the full
    step), until the next bound cannot beat the incumbent.

    Everything runs against `deadline` (default: `opts.time_limit_s` from now). Bounding gets
    half the time left, then the candidates are solved; layouts still unbounded are bounded
    in the next round if time remains. When time is up the incumbent is returned as
    FEASIBLE, with a bound covering every layout not solved (the compute floor for those
    never bounded). With no incumbent by then, candidates keep getting their cheap DP cut
    for a short grace; if none fits, InfeasibleError says that time ran out."""
    dl = deadline or Deadline.after(opts.time_limit_s)
    say = progress or _silent
    t0 = time.perf_counter()
    strategies = enumerate_strategies(p, opts)
    if not strategies:
        raise InfeasibleError(_no_layout_reason(p, opts), _layout_advice(p, opts))
    shapes = {(s.tp, s.pp, s.dp, s.ep, s.etp, s.spare_slots): s for s in strategies}
    keys = {placement_key(p, s) for s in shapes.values()} - {None}
    cache = _CostCache(p, opts, dl.fraction(PLACEMENT_SHARE), len(keys))
    cap = p.hw.gpu.memory_bytes
    todo = _spread(strategies)
    rank = {id(s): i for i, s in enumerate(strategies)}  # ties: the enumeration's order
    hard = Deadline(dl.start, dl.end + max(FALLBACK_GRACE_S, 0.1 * dl.limit_s))
    pending: list[Candidate] = []  # bounded, not solved
    over_memory: list[tuple[float, Strategy]] = []
    incumbent: Candidate | None = None
    models = n_vars = n_cons = solved = 0
    proven = True  # every solved candidate's value is its proven optimum
    open_bounds: list[float] = []  # lower bounds of candidates solved but not proven
    timed_out = False
    fallback = False
    while True:
        if incumbent is None and dl.expired() and not fallback:
            fallback = True  # nothing feasible in time: the most frugal layouts first
            todo.sort(key=_frugal)
        # bound until half the time left is used (in the fallback, a short batch at a time)
        until = (Deadline.after(max(0.0, min(0.1, hard.left()))) if fallback
                 else dl.fraction(BOUND_SHARE))
        n = 0
        while n < len(todo) and (n == 0 or not until.expired()):
            if n % 256 == 0:
                say(f"bounding layouts {len(strategies) - len(todo) + n}/{len(strategies)}")
            st = todo[n]
            n += 1
            lb, mem_lb = quick_bound(p, st, cache)
            if mem_lb > cap:
                over_memory.append((mem_lb, st))
            else:
                pending.append(Candidate(st, cache.get(st)[0], lb, None))
        todo = todo[n:]
        pending.sort(key=lambda c: (c.lower_bound, rank[id(c.strategy)]))
        # solve best bound first until the bounds prune or time is up
        while pending:
            c = pending[0]
            if incumbent is not None and c.lower_bound >= incumbent.value * (1 - 1e-9):
                break  # pruned: so is every later one (sorted), and the incumbent only improves
            if (dl if incumbent is not None else hard).expired():
                timed_out = True
                break
            pending.pop(0)
            _solve_candidate(p, c, cache, opts, dl, incumbent)
            if c.bounds is None:
                over_memory.append((math.inf, c.strategy))
                continue
            models += c.model_size != (0, 0)
            n_vars += c.model_size[0]
            n_cons += c.model_size[1]
            if c.status == "FEASIBLE":
                proven = False
                open_bounds.append(c.lower_bound)
            if incumbent is None or c.value < incumbent.value:
                incumbent = c
            solved += 1
            say(f"candidates {solved} solved, {len(strategies) - len(todo)}/{len(strategies)} "
                f"bounded  best {incumbent.value:.6g} s  bound {c.lower_bound:.6g} s")
        if timed_out or not todo or (incumbent is None and hard.expired()):
            timed_out = timed_out or bool(todo)
            break
        if incumbent is not None and dl.expired():
            timed_out = True
            break
    elapsed = time.perf_counter() - t0
    infeasible = len(over_memory)
    if incumbent is None:
        if todo or pending:
            raise InfeasibleError(
                f"no layout was found within the time limit of {dl.limit_s:g} s "
                f"({len(strategies) - len(todo)} of {len(strategies)} layouts bounded, "
                f"{infeasible} of them over memory)",
                "raise the time limit (--time-limit) or pin some degrees (--tp, --pp, ...)")
        closest = _closest(p, over_memory, cache)
        return SearchResult(None, "INFEASIBLE", math.inf, math.inf, elapsed,
                            len(strategies), 0, infeasible, models, cache.placements, closest)
    unsolved = [c.lower_bound for c in pending]
    pruned = sum(b >= incumbent.value * (1 - 1e-9) for b in unsolved)
    floor = [compute_floor(p)] if todo else []
    best_bound = min([incumbent.value] + open_bounds + unsolved + floor)
    best_bound = min(best_bound, incumbent.value)
    exact = proven and not todo and pruned == len(pending)
    return SearchResult(incumbent, "OPTIMAL" if exact else "FEASIBLE", incumbent.value,
                        incumbent.value if exact else best_bound, elapsed,
                        len(strategies), pruned, infeasible, models, cache.placements,
                        cpsat_vars=n_vars, cpsat_constraints=n_cons, unbounded=len(todo),
                        timed_out=timed_out)


def _frugal(s: Strategy) -> tuple:
    """Most memory-frugal first (deep pipelines, full sharding and recompute, small
    micro-batches, wide TP and EP): the order in which a layout that fits is found soonest."""
    return (-s.pp, -s.zero, s.recompute != "full", s.micro_batch, -s.tp, -s.ep)


def _spread(strategies: list[Strategy]) -> list[Strategy]:
    """The bounding order: one layout of each shape (TP, PP, EP, ETP) in turn, so a search
    cut short has bounded a sample of the whole space, not only its first pipeline depths."""
    groups: dict[tuple, list[Strategy]] = {}
    for s in strategies:
        groups.setdefault((s.tp, s.pp, s.ep, s.etp), []).append(s)
    out = []
    rounds = max(len(g) for g in groups.values())
    for r in range(rounds):
        out.extend(g[r] for g in groups.values() if r < len(g))
    return out


def compute_floor(p: Problem) -> float:
    """A step-time lower bound valid for every layout: the model's FLOPs (the head left out)
    spread over all GPUs at the highest peak the GPU has. Every GPU's stage is busy at least
    as long as its compute at peak, so this is MFU <= 1 stated as a bound."""
    w, m = p.workload, p.model
    per_token = model_flops_per_token(m, w.context_len, w.causal, w.decoding)
    per_token -= sum(c.flops_per_token for c in head_components(m))
    flops = max(0.0, per_token) * w.batch * w.tokens_per_sample * (3 if p.training else 1)
    peak = max(p.hw.gpu.peak_flops.values()) * p.hw.num_gpus
    return flops / peak


def _solve_candidate(p: Problem, c: Candidate, cache: _CostCache, opts: SearchOptions,
                     deadline: Deadline, incumbent: Candidate | None) -> None:
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
    left = deadline.left()
    if left < MIN_CPSAT_S:
        c.status = "FEASIBLE"  # the DP cut, not proven for the full step
        return
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


def fits(p: Problem, opts: SearchOptions, deadline: Deadline | None = None) -> bool | None:
    """Does any layout fit in memory? Tries the most memory-frugal layouts first and stops
    at the first that fits; None if `deadline` passes before the answer is known."""
    strategies = enumerate_strategies(p, opts)
    strategies.sort(key=_frugal)
    cache = _CostCache(p, opts, deadline, len(strategies))
    for s in strategies:
        if deadline is not None and deadline.expired():
            return None
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
