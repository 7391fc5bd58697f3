"""Search serving deployments: layouts x concurrency, the throughput/latency Pareto frontier,
and the best point under TTFT / TPOT targets (or the lowest latency at a given load).

Every legal layout is costed at a geometric ladder of concurrencies up to the most its KV
cache holds. Under targets, each layout's largest concurrency that meets them is found by
bisection between the ladder's last passing and first failing rung (latency grows with the
batch), since throughput per GPU grows with the batch up to that point.
"""

from __future__ import annotations

import time
from dataclasses import astuple, dataclass, field, replace

from ..cost.fp8 import fp4_gemms
from ..cost.layer import Problem
from ..cost.strategy import StrategyError
from ..errors import InfeasibleError
from ..model.components import head_components, model_flops_per_token
from ..search import SearchOptions, enumerate_strategies
from ..search.deadline import Deadline
from ..search.degrees import binding_rules, strategy_values
from ..spec.frameworks import load_framework
from .evaluate import Evaluator, Layout, ServingPoint, phase_problem, point


@dataclass(frozen=True)
class Targets:
    ttft_ms: float | None = None
    tpot_ms: float | None = None

    @property
    def any(self) -> bool:
        return self.ttft_ms is not None or self.tpot_ms is not None

    def describe(self) -> str:
        parts = [f"TTFT <= {self.ttft_ms:g} ms" if self.ttft_ms is not None else "",
                 f"TPOT <= {self.tpot_ms:g} ms" if self.tpot_ms is not None else ""]
        return ", ".join(x for x in parts if x) or "none"


@dataclass
class ServingResult:
    best: ServingPoint | None
    objective: str  # what `best` optimizes
    points: list[ServingPoint]
    frontier: list[ServingPoint]
    targets: Targets
    search_time_s: float
    layouts: int
    evaluations: int
    notes: list[str] = field(default_factory=list)
    timed_out: bool = False  # the time limit, not the end of the space, ended the search
    unexamined: int = 0  # layouts the time limit left without a single point

    @property
    def maximizes(self) -> bool:
        return "tokens" in self.objective


def layouts(p: Problem, opts: SearchOptions) -> list[Layout]:
    """Every legal (TP, PP, DP, EP, ETP, spare slots) for serving, after pins: the training
    search's degrees plus experts TP-sharded over the rest of the stage (ETP = W / EP), which
    is how vLLM (ETP = W without EP) and SGLang (EP x ETP = W) lay MoE layers out. Spare
    expert slots are the training search's choices (`search._spare_choices`): the pinned or
    given count, else a few under a skewed load, weighed by the cost like any degree."""
    probe = phase_problem(p, "decode", 1)
    pins = {k: v for k, v in opts.pins.items()
            if k in ("tp", "pp", "dp", "ep", "etp", "spare_slots", "moe_dispatcher", "a2a_fp8",
                     "a2a_node_limit")}
    seen: dict[tuple, Layout] = {}
    for s in enumerate_strategies(probe, SearchOptions(pins=pins, max_tp=opts.max_tp)):
        a2a = tuple((k, getattr(s, k)) for k in ("moe_dispatcher", "a2a_fp8", "a2a_node_limit")
                    if k in pins)  # [deepep] SGLang --moe-a2a-backend deepep, when pinned
        lay = Layout(s.tp, s.pp, s.dp, s.ep, s.etp, s.spare_slots, a2a)
        seen.setdefault(astuple(lay), lay)
    if p.model.is_moe:
        for lay in list(seen.values()):
            W = lay.tp * lay.dp
            etp = W // lay.ep
            if etp in (lay.etp, 1) or pins.get("etp", etp) != etp:
                continue
            cand = Layout(lay.tp, lay.pp, lay.dp, lay.ep, etp, lay.spare, lay.a2a)
            try:
                cand.strategy(p.hw.num_gpus)
            except StrategyError:
                continue
            seen.setdefault(astuple(cand), cand)
    fw = load_framework(opts.framework)
    keep = [lay for lay in seen.values()
            if fw is None or not fw.refuses(strategy_values(p, lay.strategy(p.hw.num_gpus)))]
    return sorted(keep, key=lambda x: (x.pp, x.tp, x.dp, x.ep, x.etp, x.spare))


def _no_layout(p: Problem, opts: SearchOptions) -> InfeasibleError:
    """No serving layout: the framework's binding rules when it refused them all."""
    fw = load_framework(opts.framework)
    every = layouts(p, replace(opts, framework="any")) if fw is not None else []
    if every:
        counts = {r.id: (r, sum(r.breaks(strategy_values(p, lay.strategy(p.hw.num_gpus)))
                                for lay in every)) for r in fw.rules}
        refused = sorted((x for x in counts.values() if x[1]), key=lambda x: -x[1])
        return InfeasibleError(binding_rules(fw, len(every), refused),
                               f"plan for another framework than {fw.name}")
    return InfeasibleError(f"no valid serving layout of {p.model.name} on "
                           f"{p.hw.num_gpus} GPUs", "check the pins and the GPU count")


MAX_CONCURRENCY = 10_000_000  # the largest batch a workload states (spec._read_workload_fields)


def ladder(top: int) -> list[int]:
    """1, 2, 4, ... and `top` itself."""
    out, b = [], 1
    while b < top:
        out.append(b)
        b *= 2
    return out + [top] if top >= 1 else out


def serving_search(p: Problem, opts: SearchOptions | None = None,
                   targets: Targets | None = None, given_load: int | None = None,
                   evaluator: Evaluator | None = None, deadline: Deadline | None = None,
                   grace: Deadline | None = None) -> ServingResult:
    """Cost every layout over its concurrency ladder; pick the best point.

    With targets: the most tokens/s per GPU among points meeting them. Without targets and
    with `given_load` (global concurrency): the lowest request latency at that load.
    Otherwise: the most tokens/s per GPU (the most the memory holds).

    With a `deadline` the layouts are costed one shape (TP, PP, EP, ETP) at a time, so a
    search cut short has sampled the whole space, and the search stops when it passes
    (`timed_out`); with nothing found by then, the most memory-frugal layouts are tried
    until `grace` (as the training search does; None: no grace). The best point does not
    depend on that order: ties go to the earlier layout of `layouts()`."""
    t0 = time.perf_counter()
    opts = opts or SearchOptions()
    targets = targets or Targets()
    ev = evaluator or Evaluator(p, opts)
    lays = layouts(p, opts)
    if not lays:
        raise _no_layout(p, opts)
    objective = ("max tokens/s/GPU under targets" if targets.any else
                 "min request latency at the given load" if given_load else
                 "max tokens/s/GPU")
    todo = lays if deadline is None else _spread(lays)
    hard = grace or deadline
    if deadline is not None:
        ev.share_placements(deadline, lays)
    found: dict[Layout, list[ServingPoint]] = {}
    timed_out = fallback = any_ok = False
    while todo:
        if deadline is not None and (deadline if any_ok else hard).expired():
            timed_out = True
            break
        if deadline is not None and deadline.expired() and not fallback:
            fallback = True  # nothing to choose yet: the layouts likeliest to fit first
            todo = sorted(todo, key=_frugal)
        lay, todo = todo[0], todo[1:]
        found[lay], cut = _layout_points(ev, lay, targets, given_load,
                                         None if fallback else deadline)
        any_ok = any_ok or any(_better(pt, None, targets, given_load) for pt in found[lay])
        if cut:
            timed_out = True
            break
    # the best point in the layouts' own order, whatever order they were costed in
    points = [pt for lay in lays for pt in found.get(lay, [])]
    best: ServingPoint | None = None
    for pt in points:
        if _better(pt, best, targets, given_load):
            best = pt
    return ServingResult(best, objective, points, pareto(points), targets,
                         time.perf_counter() - t0, len(lays), ev.evaluations,
                         timed_out=timed_out, unexamined=len(todo))


def _spread(lays: list[Layout]) -> list[Layout]:
    """One layout of each shape (TP, PP, EP, ETP) in turn: a search cut short has costed a
    sample of the whole space, not only its first pipeline depths."""
    groups: dict[tuple, list[Layout]] = {}
    for lay in lays:
        groups.setdefault((lay.tp, lay.pp, lay.ep, lay.etp), []).append(lay)
    rounds = max(len(g) for g in groups.values())
    return [g[r] for r in range(rounds) for g in groups.values() if r < len(g)]


def _frugal(lay: Layout) -> tuple:
    """Most memory-frugal first (deep pipelines, wide TP and EP, no spare slots)."""
    return (-lay.pp, -lay.tp, -lay.ep, lay.spare)


def serving_ceiling(p: Problem, maximize: bool) -> float:
    """A bound on the serving objective over every layout and load, from compute alone:
    each token runs at least the linear layers' FLOPs (no attention scores, no LM head) on
    GPUs working at their highest peak. Tokens/s per GPU is at most
    `peak x OSL / ((ISL + OSL - 1) x FLOPs)` (phase both; `peak / FLOPs` for one phase),
    and a request takes at least `(ISL + OSL - 1) x FLOPs / (GPUs x peak)` (docs/serving.md,
    the time limit). This is what a search cut short reports as its bound."""
    m, w = p.model, p.workload
    flops = model_flops_per_token(m, 0.0) - sum(c.flops_per_token for c in head_components(m))
    flops = max(flops, 1e-30)
    peak = p.hw.gpu.max_flops(fp4_gemms(p.model))
    isl, osl = w.input_len, w.output_len
    tokens = {"both": isl + max(osl - 1, 0), "decode": max(osl - 1, 1), "prefill": isl}
    if maximize:
        per_token = 1.0 if w.phase != "both" else osl / max(isl + osl - 1, 1)
        return peak * per_token / flops
    return tokens[w.phase] * flops / (p.hw.num_gpus * peak)


def _layout_points(ev: Evaluator, lay: Layout, targets: Targets, given_load: int | None,
                   deadline: Deadline | None = None) -> tuple[list[ServingPoint], bool]:
    """The points of one layout, and whether `deadline` cut its ladder short."""
    first = point(ev, lay, 1)
    if first is None:
        return [], False
    if ev.p.workload.phase == "prefill":
        return _prefill_points(ev, lay, first, targets, given_load, deadline)
    # no more sequences than a workload may state (spec: batch <= 10,000,000), so the plan's
    # echoed workload reads back; a tiny model's KV cache can hold tens of millions
    top = max(min(first.max_concurrency, MAX_CONCURRENCY) // lay.dp, 1)
    if given_load is not None:
        b = -(-given_load // lay.dp)
        pt = point(ev, lay, b) if b <= top else None
        return [first] + ([pt] if pt is not None and b > 1 else []), False
    out = [first]
    last_ok, first_bad = (1 if first.meets(targets.ttft_ms, targets.tpot_ms) else 0), None
    for b in ladder(top)[1:]:
        if deadline is not None and deadline.expired():
            return out, True
        pt = point(ev, lay, b)
        if pt is None:  # activations grew past memory before the KV estimate said so
            first_bad = b if first_bad is None else first_bad
            break
        out.append(pt)
        if pt.meets(targets.ttft_ms, targets.tpot_ms):
            last_ok = b
        elif first_bad is None:
            first_bad = b
    if targets.any and last_ok and first_bad is not None and first_bad > last_ok + 1:
        lo, hi = last_ok, first_bad  # lo meets the targets, hi does not (or does not fit)
        while hi - lo > 1:
            if deadline is not None and deadline.expired():
                return out, True
            mid = (lo + hi) // 2
            pt = point(ev, lay, mid)
            if pt is not None and pt.meets(targets.ttft_ms, targets.tpot_ms):
                lo = mid
                out.append(pt)
            else:
                hi = mid
    return out, False


def _prefill_points(ev: Evaluator, lay: Layout, first: ServingPoint, targets: Targets,
                    given_load: int | None, deadline: Deadline | None = None
                    ) -> tuple[list[ServingPoint], bool]:
    """Prompts per replica for a prefill-only deployment: doubled while they fit, meet the
    TTFT target and still raise the rate by at least 1 % (larger batches only add latency
    once the GEMMs are compute-bound). The flag: `deadline` cut the doubling short."""
    if given_load is not None:
        b = -(-given_load // lay.dp)
        pt = point(ev, lay, b) if b > 1 else None
        return [first] + ([pt] if pt is not None else []), False
    out, b = [first], 1
    while True:
        if deadline is not None and deadline.expired():
            return out, True
        b *= 2
        pt = point(ev, lay, b)
        if pt is None or not pt.meets(targets.ttft_ms, None):
            return out, False
        gain = pt.requests_per_s / out[-1].requests_per_s
        out.append(pt)
        if gain < 1.01:
            return out, False


def _better(pt: ServingPoint, best: ServingPoint | None, targets: Targets,
            given_load: int | None) -> bool:
    if targets.any and not pt.meets(targets.ttft_ms, targets.tpot_ms):
        return False
    if given_load is not None and not targets.any:
        if pt.concurrency < given_load:
            return False
        key = (pt.request_latency_s, -pt.tokens_per_s_per_gpu)
        return best is None or key < (best.request_latency_s, -best.tokens_per_s_per_gpu)
    key = (pt.tokens_per_s_per_gpu, pt.tokens_per_s_per_user)
    return best is None or key > (best.tokens_per_s_per_gpu, best.tokens_per_s_per_user)


def pareto(points: list[ServingPoint]) -> list[ServingPoint]:
    """Points no other point beats on both tokens/s per GPU and tokens/s per user, ordered
    from the most interactive to the highest throughput."""
    ranked = sorted(points, key=lambda x: (-x.tokens_per_s_per_user, -x.tokens_per_s_per_gpu,
                                           astuple(x.layout), x.concurrency))
    out: list[ServingPoint] = []
    for pt in ranked:
        if not out or pt.tokens_per_s_per_gpu > out[-1].tokens_per_s_per_gpu * (1 + 1e-12):
            out.append(pt)
    return out


__all__ = ["Targets", "ServingResult", "layouts", "ladder", "serving_search", "pareto",
           "serving_ceiling"]
