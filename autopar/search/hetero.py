"""Mixed GPU groups: one pipeline whose stages sit on groups of different types, each stage
on one group (a stage never spans two types), its layers chosen by the speed and memory of
the group it sits on.

Nothing here is a second cost model. A stage on group g is priced by the homogeneous cost
model on g's own problem (its GPU, links and calibration: `group_problem`): `stage_cost`
of the layers it holds, and the step is `compose` of those stages, exactly as `evaluate`
composes a one-type pipeline (`evaluate_mixed`, the one definition the search, the oracle
and the plan read). The stage cut is the exact min-max DP over per-stage rows (each stage's
row is its group's `StageInputs`), then the full step over a ladder of slowest-stage caps
(min-sum DP under each cap) and boundary moves; small cuts are enumerated outright.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace

import numpy as np

from ..cost.bundled import default_calibration
from ..cost.evaluate import Context, StageCost, compose, stage_cost
from ..cost.layer import LayerCost, Problem
from ..cost.strategy import Strategy
from ..spec.groups import GPUGroup, MixedHardware, fastest, slowest
from .bounds import _CostCache, quick_bound
from .deadline import Deadline
from .degrees import SearchOptions, enumerate_strategies
from .stages import ENUM_CUTS, StageInputs, contiguous_cut

LADDER = (0.0, 0.01, 0.02, 0.04, 0.08, 0.16)  # slowest-stage caps above the min-max cut
EXACT_CUTS = 64  # cuts few enough to price every one with `evaluate_mixed`
KEEP = 4  # else: the cuts best by the affine step that are priced exactly
# a cut whose affine step (`Rows.objective`) is this far above the incumbent is not priced:
# the affine pieces differ from `evaluate_mixed` only in the exposed gradient sync
AFFINE_SLACK = 1.1


def group_problem(p: Problem, mixed: MixedHardware, g: GPUGroup) -> Problem:
    """Group g's own problem: its GPU, nodes, links and calibration, on an id space as wide
    as the cluster so that a stage at global rank k x W reads its nodes and links as it
    sits (groups are whole nodes, so a group boundary is a node boundary)."""
    gpn = g.hw.gpus_per_node
    hw = replace(g.hw, nodes=-(-mixed.num_gpus // gpn))
    return replace(p, hw=hw, calib=default_calibration(g.hw.gpu.name))


def stage_groups(mixed: MixedHardware, s: Strategy) -> list[int] | None:
    """The group each stage sits on, or None where a stage would span two groups."""
    w = s.stage_width
    if any(g.first_gpu % w or g.count % w for g in mixed.groups):
        return None
    return [mixed.groups.index(mixed.group_of(k * w)) for k in range(s.pp)]


@dataclass
class MixedEvaluation:
    strategy: Strategy
    bounds: list[int]
    groups: list[int]  # stage -> group index in `hw.groups`
    stages: list[StageCost]
    capacities: list[float]  # per stage: its group's GPU memory
    step_time: float
    bubble: float

    @property
    def feasible(self) -> bool:
        return all(st.memory.total <= c for st, c in zip(self.stages, self.capacities,
                                                         strict=True))


@dataclass
class Tables:
    """Per group the costs of one layout: its layer costs, Context and stage rows."""

    problems: list[Problem]
    costs: list[list[LayerCost]]
    ctxs: list[Context]
    rows: list[StageInputs]


def tables(gps: list[Problem], caches: list[_CostCache], s: Strategy,
           used: set[int]) -> Tables:
    costs, ctxs, rows = [], [], []
    for i, gp in enumerate(gps):
        if i not in used:
            costs.append([])
            ctxs.append(None)
            rows.append(None)
            continue
        _, c = caches[i].get(s)  # layer costs shared; the Context is the layout's own, as
        ctx = Context.of(gp, s, c)  # evaluate builds it (ZeRO-3's lead reads the stage)
        costs.append(c)
        ctxs.append(ctx)
        rows.append(StageInputs.build(gp, s, c, ctx))
    return Tables(gps, costs, ctxs, rows)


def evaluate_mixed(t: Tables, s: Strategy, bounds: list[int], groups: list[int]
                   ) -> MixedEvaluation:
    """The step of layout `s` cut at `bounds`, stage k priced on group groups[k]."""
    stages = []
    for k in range(s.pp):
        g = groups[k]
        lc = t.costs[g][bounds[k]:bounds[k + 1]]
        stages.append(stage_cost(t.problems[g], s, k, lc, t.ctxs[g].edges(s, k), t.ctxs[g],
                                 bounds[k], bounds[k + 1]))
    p0 = t.problems[groups[0]]
    step, bubble = compose(stages, s.num_micro_batches, s.virtual_stages,
                           s.pipeline_schedule if p0.training else "1f1b")
    caps = [t.problems[g].hw.gpu.memory_bytes for g in groups]
    return MixedEvaluation(s, list(bounds), list(groups), stages, caps, step, bubble)


# --------------------------------------------------------------------------- the stage cut
@dataclass
class Rows:
    """Stage k's per-layer pieces and constants, from its group's StageInputs."""

    busy: np.ndarray  # [stage][layer]
    mem: np.ndarray
    dp: np.ndarray
    bwd: np.ndarray
    opt: np.ndarray
    c_busy: np.ndarray  # [stage]
    c_mem: np.ndarray
    c_dp: np.ndarray
    c_bwd: np.ndarray
    c_opt: np.ndarray
    cap: np.ndarray
    m: int
    v: int

    @staticmethod
    def of(t: Tables, s: Strategy, groups: list[int]) -> Rows:
        r = [t.rows[g] for g in groups]
        return Rows(np.array([x.busy for x in r]),
                    np.array([x.mem[k] for k, x in enumerate(r)]),
                    np.array([x.dp for x in r]), np.array([x.bwd for x in r]),
                    np.array([x.opt for x in r]),
                    *(np.array([getattr(x, f)[k] for k, x in enumerate(r)])
                      for f in ("c_busy", "c_mem", "c_dp", "c_bwd", "c_opt")),
                    np.array([x.capacity for x in r]), s.num_micro_batches, s.virtual_stages)

    @property
    def shape(self) -> tuple[int, int]:
        return self.busy.shape

    def objective(self, b: list[int]) -> float:
        """The step of a cut from the affine pieces (the 1F1B pipeline with equal chunks:
        `evaluate_mixed` prices uneven chunks exactly afterwards)."""
        P = self.shape[0]
        busy = [self.busy[k, b[k]:b[k + 1]].sum() + self.c_busy[k] for k in range(P)]
        exposed = [max(0.0, self.dp[k, b[k]:b[k + 1]].sum() + self.c_dp[k]
                       - self.bwd[k, b[k]:b[k + 1]].sum() - self.c_bwd[k]) for k in range(P)]
        opt = [self.opt[k, b[k]:b[k + 1]].sum() + self.c_opt[k] for k in range(P)]
        return sum(busy) / self.v + (self.m - 1 / self.v) * max(busy) + max(exposed) + max(opt)

    def fits(self, b: list[int]) -> bool:
        return all(self.mem[k, b[k]:b[k + 1]].sum() + self.c_mem[k] <= self.cap[k]
                   for k in range(self.shape[0]))

    def _spans(self, k: int):
        pre_b = np.concatenate([[0.0], np.cumsum(self.busy[k])])
        pre_m = np.concatenate([[0.0], np.cumsum(self.mem[k])])
        idx = np.arange(len(pre_b))
        later = idx[:, None] < idx[None, :]
        fits = (pre_m[None, :] - pre_m[:, None] + self.c_mem[k] <= self.cap[k]) & later
        return pre_b[None, :] - pre_b[:, None] + self.c_busy[k], fits

    def dp_cut(self, cap: float | None = None) -> tuple[list[int] | None, float]:
        """Exact: with `cap` None, the cut with the smallest slowest stage; else the one with
        the smallest busy sum whose every stage is under `cap` (both under memory)."""
        P, L = self.shape
        if P > L:
            return None, math.inf

        def stage(k: int):
            span, fits = self._spans(k)
            return span, (fits & (span <= cap * (1 + 1e-12)) if cap is not None else fits)

        return contiguous_cut(L, (stage(k) for k in range(P)), summed=cap is not None)

    def candidates(self, keep: int = KEEP) -> list[list[int]]:
        """The cuts worth pricing exactly, best first by the affine step: every fitting cut
        when there are at most EXACT_CUTS, the `keep` best when at most ENUM_CUTS, else the
        min-max DP cut, the min-sum cuts under a ladder of caps above it and the best of
        them after single-layer boundary moves."""
        P, L = self.shape
        if P > L:
            return []
        n = math.comb(L - 1, P - 1)
        if n <= ENUM_CUTS:
            cuts = [c for c in ([0, *inner, L] for inner in itertools.combinations(
                range(1, L), P - 1)) if self.fits(c)]
            cuts.sort(key=self.objective)
            return cuts if n <= EXACT_CUTS else cuts[:keep]
        b0, top = self.dp_cut()
        if b0 is None:
            return []
        cands = [b0] + [b for b in (self.dp_cut(top * (1 + d))[0] for d in LADDER) if b]
        cands = sorted({tuple(c): c for c in cands}.values(), key=self.objective)
        return [self._improve(cands[0]), *cands][:keep]

    def _improve(self, b: list[int]) -> list[int]:
        val, better = self.objective(b), True
        while better:
            better = False
            for k in range(1, len(b) - 1):
                for d in (-1, 1):
                    c = list(b)
                    c[k] += d
                    if c[k - 1] < c[k] < c[k + 1] and self.fits(c):
                        cv = self.objective(c)
                        if cv < val - 1e-15:
                            b, val, better = c, cv, True
        return b


def fluid_bound(gps: list[Problem], caches: list[_CostCache], s: Strategy,
                groups: list[int]) -> float:
    """A step no cut of layout `s` beats, where each group's layers all cost the same (a
    dense model): stage k's busy time is at least its layers' (forward + backward) u_g
    each, so a slowest stage of T holds at most T / u_g layers on group g, and the layers
    fit only if sum_k T / u_g(k) >= L; the pipeline is at least m T. 0 (no bound) where a
    group's layers differ, since a group could then take the cheaper ones."""
    u = []
    for g in groups:
        costs = caches[g].get(s)[1]
        if len({id(c) for c in costs}) != 1:
            return 0.0
        c = costs[0]
        u.append(c.fwd + (c.bwd if gps[g].training else 0.0))
    if min(u) <= 0:
        return 0.0
    layers = len(caches[groups[0]].get(s)[1])
    return s.num_micro_batches * layers / sum(1 / x for x in u)


# --------------------------------------------------------------------------- the search
@dataclass
class MixedResult:
    hw: MixedHardware  # in the order the pipeline runs through the groups
    best: MixedEvaluation | None
    layouts: int  # layouts with their stages on whole groups
    evaluated: int  # of those, costed (the others pruned by the bound)
    pruned: int
    timed_out: bool = False
    why: str = ""
    notes: list[str] = field(default_factory=list)


def reference_problem(p: Problem, mixed: MixedHardware, which: GPUGroup) -> Problem | None:
    """The cluster as one type (`which`'s): what enumerates the layouts, and what the slowest-
    type comparison solves."""
    hw = mixed.uniform(which)
    if hw is None:
        return None
    return replace(p, hw=hw, calib=default_calibration(which.hw.gpu.name))


def search_mixed(p: Problem, mixed: MixedHardware, opts: SearchOptions,
                 deadline: Deadline | None = None) -> MixedResult:
    """The fastest one-pipeline layout over every group, every order of the groups (which
    holds the first stage) tried; layouts are taken in the order of their bound on a cluster
    of the fastest type (a lower bound where that type is at least as fast and as large as
    every other), and the search stops once no remaining bound beats the incumbent."""
    dl = deadline or Deadline.after(opts.time_limit_s)
    dtype = p.model.dtype
    slow, fast = slowest(mixed, dtype), fastest(mixed, dtype)
    ref = reference_problem(p, mixed, slow)
    lower = reference_problem(p, mixed, fast)
    if ref is None or lower is None:
        return MixedResult(mixed, None, 0, 0, 0, why="the groups share no node size")
    # the cut is searched freely (Megatron states it with --pipeline-model-parallel-layout),
    # so layouts that differ only in Megatron's split flags are one layout here
    layouts = list(dict.fromkeys(
        replace(s, first_stage_layers=0, last_stage_layers=0, embedding_in_split=False,
                loss_in_split=False) for s in enumerate_strategies(ref, opts)
        if not s.dualpipe))
    orders = list(itertools.permutations(range(len(mixed.groups))))[:6]
    lb_cache = _CostCache(lower, opts)
    bounded, too_big = [], 0
    fp8, ref_cache = p.workload.precision == "fp8", _CostCache(ref, opts)
    room = max(g.hw.gpu.memory_bytes for g in mixed.groups)
    for s in layouts:
        if dl.expired():
            break
        time_lb, mem_lb = quick_bound(lower, s, lb_cache)
        if fp8:  # a GPU without fp8 tensor cores keeps no fp8 weight copies: less memory
            mem_lb = min(mem_lb, quick_bound(ref, s, ref_cache)[1])
        if mem_lb > room:  # the stages' mean memory fits no group's GPU
            too_big += 1
            continue
        bounded.append((time_lb, len(bounded), s))
    bounded.sort(key=lambda x: (x[0], x[1]))
    best: MixedEvaluation | None = None
    best_hw = mixed
    per_order = []
    for order in orders:
        hw = mixed.reordered(order)
        gps = [group_problem(p, hw, g) for g in hw.groups]
        per_order.append((hw, gps, [_CostCache(gp, opts) for gp in gps]))
    items = []  # (bound, tie, order index, layout, stage groups): best bound first
    for lb, _, s in bounded:
        for oi, (hw, gps, caches) in enumerate(per_order):
            groups = stage_groups(hw, s)
            if groups is not None and len(set(groups)) > 1:
                items.append((max(lb, fluid_bound(gps, caches, s, groups)), len(items), oi,
                              s, groups))
    items.sort(key=lambda x: (x[0], x[1]))
    evaluated = pruned = 0
    timed_out = False
    for n, (bound, _, oi, s, groups) in enumerate(items):
        if best is not None and bound >= best.step_time:
            pruned = len(items) - n
            break
        if dl.expired():
            timed_out = True
            break
        hw, gps, caches = per_order[oi]
        t = tables(gps, caches, s, set(groups))
        evaluated += 1
        rows = Rows.of(t, s, groups)
        for b in rows.candidates():
            if best is not None and rows.objective(b) > AFFINE_SLACK * best.step_time:
                continue  # the affine step is within a few % of the priced one
            ev = evaluate_mixed(t, s, b, groups)
            if ev.feasible and (best is None or ev.step_time < best.step_time):
                best, best_hw = ev, hw
    n_layouts = len(items)
    why = "" if best else (f"no layout with every stage on one group fits the memory "
                           f"({too_big} layouts need more per GPU on average than any "
                           f"group's GPU holds, {evaluated} more cut and priced)"
                           if n_layouts or too_big else
                           "no layout puts whole stages on every group")
    return MixedResult(best_hw, best, n_layouts, evaluated, pruned, timed_out, why)
