"""Data-parallel replicas on groups of different speed, each taking a share of the batch by
its speed: every replica a whole pipeline of one layout shape (TP, CP, PP, EP, ...) on one
group, group g holding d_g replicas that run m_g micro-batches each, the gradient sync and
ZeRO's shards over all D = sum d_g replicas.

Priced by the one-type cost model on each group's problem (`evaluate` with DP = D, so the
sync spans every replica, and the group's micro-batch count): the step is the slowest
group's. The stage cut is common (ZeRO shards each stage's parameters over all replicas):
the exact min-max DP cut of each group's rows, the better one kept. Shares: the pipeline is
affine in m (sum + (m - 1) x slowest + sync + optimizer), so each group's time is fitted at
two counts, the counts chosen by bisection on the slowest time, then priced exactly.

Pipeline stages still sit on one group each: a replica never spans two types. The stage p2p
sends are priced on the stage layout of the whole DP width (Megatron's rank order), so a
replica whose pipeline fits in one node is priced on the NIC: conservative."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..cost.bundled import default_calibration
from ..cost.evaluate import Context, Evaluation, evaluate
from ..cost.layer import Problem
from ..cost.strategy import Strategy
from ..spec.groups import GPUGroup, MixedHardware, fastest, slowest
from .bounds import _CostCache, quick_bound
from .deadline import Deadline
from .degrees import SearchOptions, enumerate_strategies
from .hetero import reference_problem
from .stages import StageInputs, dp_partition

KEEP_SHAPES = 300  # shapes (best bound first) priced; the rest are not searched


@dataclass
class SharesEvaluation:
    strategy: Strategy  # the shape, with DP = D (all replicas)
    replicas: list[int]  # per group (file order)
    micro_batches: list[int]  # per replica of each group
    bounds: list[int]
    evaluations: list[Evaluation]
    step_time: float

    @property
    def feasible(self) -> bool:
        return all(e.feasible for e in self.evaluations)


def shares_problem(p: Problem, g: GPUGroup, s: Strategy) -> Problem:
    hw = replace(g.hw, nodes=-(-s.num_gpus // g.hw.gpus_per_node))
    return replace(p, hw=hw, calib=default_calibration(g.hw.gpu.name))


def replicas(mixed: MixedHardware, s: Strategy) -> list[int] | None:
    """Replicas per group, or None where a group is not a whole number of them or an
    expert group (EP x ETP consecutive ranks of a stage) would span two groups: its
    all-to-all would wait for the slower type every layer, whatever the shares."""
    size = s.tp * s.cp * s.pp
    if any(g.count % size for g in mixed.groups):
        return None
    reps = [g.count // size for g in mixed.groups]
    if any(r * s.tp * s.cp % (s.ep * s.etp) for r in reps):
        return None
    return reps


def choose_shares(batch: int, mb: int, reps: list[int], a: list[float], c: list[float]
                  ) -> list[int]:
    """Micro-batches per replica of each group, each >= 1, covering the batch, minimising
    max_g a_g + m_g c_g: bisection on that time T, each group taking floor((T - a_g) / c_g)."""
    def counts(t: float) -> list[int]:
        return [max(1, int((t - ag) / cg)) if cg > 0 else 10**9 for ag, cg in zip(a, c,
                                                                                   strict=True)]

    def covers(m: list[int]) -> bool:
        return sum(r * mb * x for r, x in zip(reps, m, strict=True)) >= batch

    lo, hi = 0.0, max(ag + cg * -(-batch // (mb * sum(reps))) * sum(reps)
                      for ag, cg in zip(a, c, strict=True))
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if covers(counts(mid)) else (mid, hi)
    m = counts(hi)
    while covers(m):  # trim what the bisection's slack over-covers, slowest finish first
        k = max((i for i in range(len(m)) if m[i] > 1), key=lambda i: a[i] + m[i] * c[i],
                default=None)
        if k is None:
            break
        m[k] -= 1
        if not covers(m):
            m[k] += 1
            break
    return m


def price(p: Problem, mixed: MixedHardware, s: Strategy, reps: list[int],
          caches: dict) -> SharesEvaluation | None:
    """The best shares and common cut of shape `s` on `mixed` (None: no cut fits)."""
    probs = [shares_problem(p, g, s) for g in mixed.groups]
    costs = []
    for i, gp in enumerate(probs):
        key = (i, s.num_gpus)
        if key not in caches:
            caches[key] = _CostCache(gp, SearchOptions())
        costs.append(caches[key].get(s))
    cuts = []
    for gp, (_, c) in zip(probs, costs, strict=True):
        b, _ = dp_partition(StageInputs.build(gp, s, c, Context.of(gp, s, c)))
        if b is not None and b not in cuts:
            cuts.append(b)
    best = None
    for b in cuts:
        a, slope = [], []
        for gp, (moe, c) in zip(probs, costs, strict=True):
            one = evaluate(gp, replace(s, num_micro_batches=1), b, moe, c).step_time
            two = evaluate(gp, replace(s, num_micro_batches=2), b, moe, c).step_time
            a.append(2 * one - two)
            slope.append(two - one)
        m = choose_shares(p.workload.batch, s.micro_batch, reps, a, slope)
        evs = [evaluate(gp, replace(s, num_micro_batches=k), b, moe, c)
               for gp, (moe, c), k in zip(probs, costs, m, strict=True)]
        out = SharesEvaluation(s, reps, m, b, evs, max(e.step_time for e in evs))
        if out.feasible and (best is None or out.step_time < best.step_time):
            best = out
    return best


def search_shares(p: Problem, mixed: MixedHardware, opts: SearchOptions,
                  deadline: Deadline | None = None) -> SharesEvaluation | None:
    """The fastest shape with replicas on every group and shares by speed, over the
    `KEEP_SHAPES` shapes of lowest bound on a cluster of the fastest type."""
    dl = deadline or Deadline.after(opts.time_limit_s)
    dtype = p.model.dtype
    ref = reference_problem(p, mixed, slowest(mixed, dtype))
    lower = reference_problem(p, mixed, fastest(mixed, dtype))
    if ref is None or lower is None:
        return None
    shapes = {}
    for s in enumerate_strategies(ref, opts):
        if s.dualpipe or s.split_pinned or s.virtual_stages > 1:  # interleaving needs m a
            continue  # multiple of PP in every group: not searched here
        reps = replicas(mixed, s)
        if reps is not None and min(reps) >= 1:
            shapes.setdefault(replace(s, num_micro_batches=1), (s, reps))
    lb_cache = _CostCache(lower, opts)
    ranked = sorted(((quick_bound(lower, s, lb_cache)[0], i, s, reps)
                     for i, (s, reps) in enumerate(shapes.values())), key=lambda x: x[:2])
    best, caches = None, {}
    for lb, _, s, reps in ranked[:KEEP_SHAPES]:
        if dl.expired() or (best is not None and lb >= best.step_time):
            break
        ev = price(p, mixed, s, reps, caches)
        if ev is not None and (best is None or ev.step_time < best.step_time):
            best = ev
    return best
