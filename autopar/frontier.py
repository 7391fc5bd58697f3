"""Search serving deployments: layouts x concurrency, the throughput/latency Pareto frontier,
and the best point under TTFT / TPOT targets (or the lowest latency at a given load).

Every legal layout is costed at a geometric ladder of concurrencies up to the most its KV
cache holds. Under targets, each layout's largest concurrency that meets them is found by
bisection between the ladder's last passing and first failing rung (latency grows with the
batch), since throughput per GPU grows with the batch up to that point.
"""

from __future__ import annotations

import time
from dataclasses import astuple, dataclass, field

from .cost import Problem
from .errors import InfeasibleError
from .search import SearchOptions, enumerate_strategies
from .serving import Evaluator, Layout, ServingPoint, phase_problem, point
from .strategy import StrategyError


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


def layouts(p: Problem, opts: SearchOptions) -> list[Layout]:
    """Every legal (TP, PP, DP, EP, ETP, spare slots) for serving, after pins: the training
    search's degrees plus experts TP-sharded over the rest of the stage (ETP = W / EP), which
    is how vLLM (ETP = W without EP) and SGLang (EP x ETP = W) lay MoE layers out. Spare
    expert slots are the training search's choices (`search._spare_choices`): the pinned or
    given count, else a few under a skewed load, weighed by the cost like any degree."""
    probe = phase_problem(p, "decode", 1)
    pins = {k: v for k, v in opts.pins.items()
            if k in ("tp", "pp", "dp", "ep", "etp", "spare_slots")}
    seen: dict[tuple, Layout] = {}
    for s in enumerate_strategies(probe, SearchOptions(pins=pins, max_tp=opts.max_tp)):
        lay = Layout(s.tp, s.pp, s.dp, s.ep, s.etp, s.spare_slots)
        seen.setdefault(astuple(lay), lay)
    if p.model.is_moe:
        for lay in list(seen.values()):
            W = lay.tp * lay.dp
            etp = W // lay.ep
            if etp in (lay.etp, 1) or pins.get("etp", etp) != etp:
                continue
            cand = Layout(lay.tp, lay.pp, lay.dp, lay.ep, etp, lay.spare)
            try:
                cand.strategy(p.hw.num_gpus)
            except StrategyError:
                continue
            seen.setdefault(astuple(cand), cand)
    return sorted(seen.values(), key=lambda x: (x.pp, x.tp, x.dp, x.ep, x.etp, x.spare))


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
                   evaluator: Evaluator | None = None) -> ServingResult:
    """Cost every layout over its concurrency ladder; pick the best point.

    With targets: the most tokens/s per GPU among points meeting them. Without targets and
    with `given_load` (global concurrency): the lowest request latency at that load.
    Otherwise: the most tokens/s per GPU (the most the memory holds)."""
    t0 = time.perf_counter()
    opts = opts or SearchOptions()
    targets = targets or Targets()
    ev = evaluator or Evaluator(p, opts)
    lays = layouts(p, opts)
    if not lays:
        raise InfeasibleError(f"no valid serving layout of {p.model.name} on "
                              f"{p.hw.num_gpus} GPUs", "check the pins and the GPU count")
    points: list[ServingPoint] = []
    best: ServingPoint | None = None
    objective = ("max tokens/s/GPU under targets" if targets.any else
                 "min request latency at the given load" if given_load else
                 "max tokens/s/GPU")
    for lay in lays:
        mine = _layout_points(ev, lay, targets, given_load)
        points += mine
        for pt in mine:
            if _better(pt, best, targets, given_load):
                best = pt
    return ServingResult(best, objective, points, pareto(points), targets,
                         time.perf_counter() - t0, len(lays), ev.evaluations)


def _layout_points(ev: Evaluator, lay: Layout, targets: Targets,
                   given_load: int | None) -> list[ServingPoint]:
    first = point(ev, lay, 1)
    if first is None:
        return []
    if ev.p.workload.phase == "prefill":
        return _prefill_points(ev, lay, first, targets, given_load)
    # no more sequences than a workload may state (spec: batch <= 10,000,000), so the plan's
    # echoed workload reads back; a tiny model's KV cache can hold tens of millions
    top = max(min(first.max_concurrency, MAX_CONCURRENCY) // lay.dp, 1)
    if given_load is not None:
        b = -(-given_load // lay.dp)
        pt = point(ev, lay, b) if b <= top else None
        return [first] + ([pt] if pt is not None and b > 1 else [])
    out = [first]
    last_ok, first_bad = (1 if first.meets(targets.ttft_ms, targets.tpot_ms) else 0), None
    for b in ladder(top)[1:]:
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
            mid = (lo + hi) // 2
            pt = point(ev, lay, mid)
            if pt is not None and pt.meets(targets.ttft_ms, targets.tpot_ms):
                lo = mid
                out.append(pt)
            else:
                hi = mid
    return out


def _prefill_points(ev: Evaluator, lay: Layout, first: ServingPoint, targets: Targets,
                    given_load: int | None) -> list[ServingPoint]:
    """Prompts per replica for a prefill-only deployment: doubled while they fit, meet the
    TTFT target and still raise the rate by at least 1 % (larger batches only add latency
    once the GEMMs are compute-bound)."""
    if given_load is not None:
        b = -(-given_load // lay.dp)
        pt = point(ev, lay, b) if b > 1 else None
        return [first] + ([pt] if pt is not None else [])
    out, b = [first], 1
    while True:
        b *= 2
        pt = point(ev, lay, b)
        if pt is None or not pt.meets(targets.ttft_ms, None):
            return out
        gain = pt.requests_per_s / out[-1].requests_per_s
        out.append(pt)
        if gain < 1.01:
            return out


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


__all__ = ["Targets", "ServingResult", "layouts", "ladder", "serving_search", "pareto"]
