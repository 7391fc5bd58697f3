"""Find the layout with the lowest step time: bound every layout, then solve exactly.

The layouts come from `degrees` (enumerated outside CP-SAT, reference/cpsat.md sec. 3.1) and
their cheap bounds from `bounds`. For each candidate the experts are placed on the EP group
(`placement`, CP-SAT) and a DP over contiguous layer ranges gives a feasible stage cut and a
lower bound; candidates are then taken best bound first and the stage cut is solved exactly
by CP-SAT, hinted with the DP cut, until the next bound cannot beat the incumbent.

The time limit bounds the whole search (`Deadline`): bounding, placements and stage models
share it, and a search cut short reports the best layout found, its bound and status FEASIBLE.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..cost.evaluate import Evaluation, evaluate
from ..cost.layer import MoEState, Problem
from ..cost.pipeline import even_chunks, pinned_bounds
from ..cost.strategy import Strategy
from ..errors import InfeasibleError
from ..spec.frameworks import load_framework
from .bounds import _CostCache, compute_floor, quick_bound, stage_inputs
from .deadline import Deadline
from .degrees import SearchOptions, binding_rules, enumerate_strategies, framework_refusals
from .experts import placement_key
from .runner_ups import RunnerUps, runner_ups
from .stages import StageInputs, best_cut, dp_partition, even_bounds, solve_stages

BOUND_SHARE = 0.5  # of the search time left: bounding layouts before stage cuts are solved
PLACEMENT_SHARE = 0.3  # of the search time: the expert placements the bounds need
MIN_CPSAT_S = 0.02  # a stage model with less time than this is not built (the DP cut stands)
RUNNER_UP_SHARE = 0.5  # of the time limit at most (a safety: `runner_ups` bounds the work)
# runner-ups get CP-SAT stage models up to this many layers x stages (larger ones keep the DP
# cut, `proven` false where it is not provably optimal): GPT-3's 96 x 8 take 3 s a model
RUNNER_UP_CPSAT_SIZE = 256


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
    runner_ups: RunnerUps | None = None  # the next degree choices (`runner_ups`)

def _even_bounds(layers: int, pp: int) -> list[int]:
    return even_bounds(layers, pp)


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
    enumerated_from = time.monotonic()
    strategies = enumerate_strategies(p, opts)
    if not strategies:
        raise InfeasibleError(_no_layout_reason(p, opts), _layout_advice(p, opts))
    shapes = {(s.tp, s.pp, s.dp, s.ep, s.etp, s.spare_slots, s.cp): s for s in strategies}
    keys = {placement_key(p, s) for s in shapes.values()} - {None}
    cache = _CostCache(p, opts, dl.fraction(PLACEMENT_SHARE), len(keys))
    cap = p.hw.gpu.memory_bytes
    todo = _spread(strategies)
    rank = {id(s): i for i, s in enumerate(strategies)}  # ties: the enumeration's order
    # the grace for finding any answer is not spent enumerating: what of it the enumeration
    # used is given back, so a limit the enumeration alone outlasts still gets its fallback
    grace = dl.graced()
    lost = max(0.0, min(time.monotonic(), grace.end) - max(enumerated_from, dl.end))
    hard = Deadline(dl.start, grace.end + lost)
    pending: list[Candidate] = []  # bounded, not solved
    over_memory: list[tuple[float, Strategy]] = []
    incumbent: Candidate | None = None
    done: list[Candidate] = []  # solved, for the runner-ups
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
            done.append(c)
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
    ups_dl = Deadline.after(max(0.0, min(dl.left(), RUNNER_UP_SHARE * dl.limit_s)))
    ups = runner_ups(incumbent, done, pending, lambda c, top: _solve_candidate(
        p, c, cache, opts, Deadline.after(min(ups_dl.left(), ups_dl.limit_s / 4)), top,
        cpsat=p.model.layers * c.strategy.pp <= RUNNER_UP_CPSAT_SIZE), ups_dl)
    ups.complete = ups.complete and not todo
    return SearchResult(incumbent, "OPTIMAL" if exact else "FEASIBLE", incumbent.value,
                        incumbent.value if exact else best_bound, elapsed,
                        len(strategies), pruned, infeasible, models, cache.placements,
                        cpsat_vars=n_vars, cpsat_constraints=n_cons, unbounded=len(todo),
                        timed_out=timed_out, runner_ups=ups)


def _frugal(s: Strategy) -> tuple:
    """Most memory-frugal first (deep pipelines, full sharding and recompute, small
    micro-batches, no interleaving, wide TP and EP): the order in which a layout that fits is
    found soonest (interleaving holds more micro-batches' activations in flight; DualPipe
    more on every rank, and two copies of the weights: after every 1F1B layout)."""
    return (s.dualpipe, -s.pp, -s.zero, s.recompute != "full", s.micro_batch,
            s.virtual_stages, -s.tp, -s.ep)


def _spread(strategies: list[Strategy]) -> list[Strategy]:
    """The bounding order: one layout of each shape (TP, PP, EP, ETP) in turn, so a search
    cut short has bounded a sample of the whole space, not only its first pipeline depths."""
    groups: dict[tuple, list[Strategy]] = {}
    for s in strategies:
        groups.setdefault((s.tp, s.pp, s.ep, s.etp, s.cp), []).append(s)
    out = []
    rounds = max(len(g) for g in groups.values())
    for r in range(rounds):
        out.extend(g[r] for g in groups.values() if r < len(g))
    return out


def _solve_candidate(p: Problem, c: Candidate, cache: _CostCache, opts: SearchOptions,
                     deadline: Deadline, incumbent: Candidate | None, cpsat: bool = True) -> None:
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
    if inputs.dualpipe and not c.evaluation.feasible:  # [dualpipe] two stages on a rank
        c.status, c.why, c.bounds, c.evaluation, c.value = "INFEASIBLE", "memory", None, \
            None, math.inf
        return
    if inputs.fixed is not None:  # Megatron's pinned cut: its value is exact, nothing to cut
        c.lower_bound = c.value
        return
    if c.strategy.pp == 1 or c.lower_bound >= c.value * (1 - 1e-9):
        return  # the DP cut meets the bound: nothing left to prove
    if incumbent is not None and c.lower_bound >= incumbent.value * (1 - 1e-9):
        return  # cannot win; its own value is still exact for the cut found
    left = deadline.left()
    if left < MIN_CPSAT_S or not cpsat:
        c.status = "FEASIBLE"  # the DP cut, not proven for the full step
        return
    res = solve_stages(inputs, bounds, left, opts.seed, opts.workers)
    c.model_size = (res.num_vars, res.num_constraints)
    c.status = "CPSAT" if res.status == "OPTIMAL" else "FEASIBLE"
    if res.bounds is not None:
        ev = evaluate(p, c.strategy, res.bounds, moe, costs)
        if ev.step_time < c.value and ev.feasible:
            c.bounds, c.evaluation, c.value = res.bounds, ev, ev.step_time
    b = res.bounds
    v = 2 if inputs.dualpipe else c.strategy.virtual_stages  # [dualpipe] DualPipeV's V
    if res.status == "OPTIMAL" and b is not None and even_chunks(
            [b[k + 1] - b[k] for k in range(len(b) - 1)], v):
        c.lower_bound = c.value  # the model prices chunks at 1 / v: exact at its optimum
    elif res.bounds is not None:  # uneven chunks: CP-SAT's optimum is a bound, not the value
        c.lower_bound = max(c.lower_bound, min(res.bound_s, c.value))
        if c.lower_bound < c.value * (1 - 1e-9):
            _enumerate_cuts(p, c, inputs, moe, costs)


def _enumerate_cuts(p: Problem, c: Candidate, inputs: StageInputs, moe, costs) -> None:
    """Prove a cut with uneven chunks by pricing every cut, where they are few; else the
    candidate stays FEASIBLE with CP-SAT's bound (`stages.best_cut`)."""
    found = best_cut(inputs)
    if found is None:
        c.status = "FEASIBLE"
        return
    ev = evaluate(p, c.strategy, found[0], moe, costs)
    if ev.step_time < c.value:
        c.bounds, c.evaluation, c.value = found[0], ev, ev.step_time
    c.lower_bound = c.value


def _closest(p: Problem, over: list[tuple[float, Strategy]], cache: _CostCache) -> Candidate:
    """The candidate that misses memory by the least (for the infeasibility advice)."""
    finite = [x for x in over if math.isfinite(x[0])] or over
    best = None
    for _, s in sorted(finite, key=lambda x: x[0])[:50]:
        moe, costs = cache.get(s)
        cut = (pinned_bounds(p.model.layers, s) if s.split_pinned
               else _even_bounds(p.model.layers, s.pp))
        ev = evaluate(p, s, cut, moe, costs)
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


def fewest_gpus(p: Problem, static_bytes: float, fits_on: Callable[[Problem], bool | None],
                max_factor: int = 64) -> tuple[int | None, int, bool]:
    """(the fewest GPUs, in whole nodes a multiple of today's, on which `fits_on` holds, or
    None; the most GPUs known not to be enough; whether the count was cut short, i.e.
    `fits_on` answered None). Starts where `static_bytes` alone fill every GPU, so only a
    few sizes are tried, and gives up past `max_factor` times today's nodes."""
    start = max(2, math.ceil(static_bytes / (p.hw.usable_bytes * p.hw.num_gpus)))
    tried = p.hw.num_gpus
    for k in range(start, max_factor + 1):
        sub = replace(p, hw=replace(p.hw, nodes=p.hw.nodes * k))
        ok = fits_on(sub)
        if ok is None:
            return None, tried, True
        if ok:
            return sub.hw.num_gpus, tried, False
        tried = sub.hw.num_gpus
    return None, tried, False


def _no_layout_reason(p: Problem, opts: SearchOptions) -> str:
    fw = load_framework(opts.framework)
    if fw is not None:
        total, refused = framework_refusals(p, opts, fw)
        if total:
            return binding_rules(fw, total, refused)
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
    if "cp" in opts.pins:
        hints.append("CP must divide the GPUs per stage")
    if "dp" in opts.pins or "tp" in opts.pins or "pp" in opts.pins:
        hints.append(f"tp * {'cp * ' if 'cp' in opts.pins else ''}dp * pp must equal the GPU "
                     "count")
    if "ep" in opts.pins:
        hints.append("EP * ETP must divide tp * dp")
    if opts.framework != "any":
        hints.append(f"or plan for another framework than {opts.framework}")
    return "; ".join(hints) or "check the pins and the GPU count"

