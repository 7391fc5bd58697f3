"""Cut the layers into contiguous pipeline stages: an exact DP for the slowest stage (a
hint and a bound) and a CP-SAT model for the full step-time objective.

The step time of a cut is sum(busy) + (m - 1) max_k busy_k + max_k exposed_k + max_k opt_k
(see `evaluate.compose`). The sum does not depend on the cut; the three maxima do, and they
pull in different directions (memory-heavy stages want fewer layers, the optimizer term wants
balanced parameters), which is what the CP-SAT model trades off exactly.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from ortools.sat.python import cp_model

from ..cost.evaluate import Context, Evaluation, in_flight, stage_cost
from ..cost.layer import LayerCost, Problem
from ..cost.pipeline import chunked_pipeline, dualpipe_pipeline, pinned_bounds, pipeline_time
from ..cost.strategy import Strategy

TIME_STEPS = 10_000_000  # time resolution: the upper bound split into this many units
KIB = 1024.0


@dataclass
class StageInputs:
    """Per-layer and per-stage numbers of one layout, as the stage models read them."""

    layers: int
    stages: int
    micro_batches: int
    capacity: float
    busy: list[float]  # per layer, per micro-batch (forward + backward)
    bwd: list[float]
    dp: list[float]
    opt: list[float]
    mem: list[list[float]]  # [stage][layer]: a layer's bytes on that stage
    c_busy: list[float]  # per stage: what the stage costs with no layers
    c_bwd: list[float]
    c_dp: list[float]
    c_opt: list[float]
    c_mem: list[float]
    virtual: int = 1  # interleaved chunks per stage (evaluate.pipeline_time)
    fixed: list[int] | None = None  # Megatron's cut from pinned split flags [pipeline-split]
    dualpipe: str = ""  # [dualpipe] the schedule: m x slowest + a bubble 1F1B's do not bound
    back: list[float] | None = None  # [dualpipe] per layer: the full backward (B) ...
    wg: list[float] | None = None  # ... and its weight-gradient part (W)
    c_back: list[float] | None = None
    c_wg: list[float] | None = None

    @staticmethod
    def build(p: Problem, s: Strategy, costs: list[LayerCost], ctx: Context) -> StageInputs:
        """Per-layer pieces from single-layer stage costs minus empty-stage costs (the stage
        cost is affine in its layers). Only distinct (layer cost, in-flight count) pairs are
        costed: a model has a handful of distinct layers and a pipeline few in-flight counts."""
        flights = [in_flight(s, k, p.training) for k in range(s.pp)]
        first_of = {f: flights.index(f) for f in set(flights)}  # a stage with that count
        empty = {f: stage_cost(p, s, k, [], [], ctx) for f, k in first_of.items()}
        distinct = {id(c): c for c in costs}
        one = {(i, f): stage_cost(p, s, k, [c], [], ctx)
               for i, c in distinct.items() for f, k in first_of.items()}
        base = [stage_cost(p, s, k, [], ctx.edges(s, k), ctx) for k in range(s.pp)]
        f0 = flights[0]
        e0 = empty[f0]
        ref = [one[(id(c), f0)] for c in costs]
        mem_of = {f: {i: one[(i, f)].memory.total - empty[f].memory.total for i in distinct}
                  for f in first_of}
        return StageInputs(
            layers=len(costs), stages=s.pp, micro_batches=s.num_micro_batches,
            capacity=p.hw.gpu.memory_bytes,
            busy=[r.busy - e0.busy for r in ref],
            bwd=[r.overlap_window - e0.overlap_window for r in ref],
            dp=[r.dp_sync - e0.dp_sync for r in ref],
            opt=[r.optimizer - e0.optimizer for r in ref],
            mem=[[mem_of[f][id(c)] for c in costs] for f in flights],
            c_busy=[b.busy for b in base],
            c_bwd=[b.overlap_window for b in base],
            c_dp=[b.dp_sync for b in base],
            c_opt=[b.optimizer for b in base],
            c_mem=[b.memory.total for b in base],
            virtual=s.virtual_stages,
            fixed=(pinned_bounds(p.model.layers, s) if s.split_pinned else
                   even_bounds(p.model.layers, s.pp)
                   if s.pipeline_schedule == "dualpipe" and p.training else None),
            dualpipe=s.pipeline_schedule if s.dualpipe and p.training else "",
            back=[r.bwd - e0.bwd for r in ref], wg=[r.wgrad - e0.wgrad for r in ref],
            c_back=[b.bwd for b in base], c_wg=[b.wgrad for b in base],
        )

    def chunk_terms(self) -> list[float]:
        """[dualpipe] Per layer: busy + B - 3 W, what DualPipe's bubble scales."""
        return [f + b - 3 * w for f, b, w in zip(self.busy, self.back, self.wg, strict=True)]

    def c_chunk_terms(self) -> list[float]:
        return [f + b - 3 * w for f, b, w in zip(self.c_busy, self.c_back, self.c_wg,
                                                 strict=True)]

    def lower_bound(self, bottleneck: float) -> float:
        """No cut beats this: the sum is fixed, the slowest stage is at least the DP's
        bottleneck, and a maximum is at least the mean."""
        P = self.stages
        total_busy = sum(self.busy) + sum(self.c_busy)
        exposed = (sum(self.dp) + sum(self.c_dp) - sum(self.bwd) - sum(self.c_bwd)) / P
        opt = (sum(self.opt) + sum(self.c_opt)) / P
        pipe = pipeline_time(total_busy, bottleneck, self.micro_batches, self.virtual)
        if self.dualpipe:  # [dualpipe] a DualPipeV chunk is >= half its rank; max >= mean
            mean = (sum(self.chunk_terms()) + sum(self.c_chunk_terms())) / P
            coeff = (P - 1) / 2 if self.dualpipe == "dualpipev" else P / 2 - 1  # share 1
            pipe = self.micro_batches * bottleneck + coeff * max(0.0, mean)
        return pipe + max(0.0, exposed) + opt


def even_bounds(layers: int, pp: int) -> list[int]:
    """The even cut (DualPipe's: stage k and its mirror p - 1 - k share one rank)."""
    return [round(k * layers / pp) for k in range(pp + 1)]


def dp_partition(x: StageInputs) -> tuple[list[int] | None, float]:
    """Exact min-max cut into contiguous stages of >= 1 layer under each stage's memory."""
    L, P = x.layers, x.stages
    if P > L:
        return None, math.inf
    if x.fixed is not None:
        return _fixed_cut(x)
    pre_busy = np.concatenate([[0.0], np.cumsum(x.busy)])
    later = np.arange(L + 1)[:, None] < np.arange(L + 1)[None, :]

    def stage(k: int) -> tuple[np.ndarray, np.ndarray]:
        pre_mem = np.concatenate([[0.0], np.cumsum(x.mem[k])])
        fits = (pre_mem[None, :] - pre_mem[:, None] + x.c_mem[k] <= x.capacity) & later
        return pre_busy[None, :] - pre_busy[:, None] + x.c_busy[k], fits

    return contiguous_cut(L, (stage(k) for k in range(P)))


def contiguous_cut(L: int, stages: Iterable[tuple[np.ndarray, np.ndarray]],
                   summed: bool = False) -> tuple[list[int] | None, float]:
    """Exact DP over cuts of L layers into the stages `stages` yields in order, each an
    (L+1) x (L+1) pair: span[i, j] the stage's time on layers [i, j), fits[i, j] whether it
    may take them. Minimises the slowest stage (`summed`: the sum of the stages).

    best[k][j]: the optimum for layers [0, j) on stages 0..k-1; each stage is one vectorized
    (i, j) table, so the DP costs P numpy steps of L x L."""
    idx = np.arange(L + 1)
    prev = np.full(L + 1, np.inf)
    prev[0] = 0.0
    args = []
    for span, fits in stages:
        table = np.where(fits, prev[:, None] + span if summed
                         else np.maximum(prev[:, None], span), np.inf)
        arg = np.argmin(table, axis=0)
        prev = table[arg, idx]
        args.append(arg)
    if not np.isfinite(prev[L]):
        return None, math.inf
    bounds, j = [L], L
    for arg in reversed(args):
        j = int(arg[j])
        bounds.append(j)
    bounds = bounds[::-1]
    if bounds[0] != 0:
        return None, math.inf
    return bounds, float(prev[L])


def _fixed_cut(x: StageInputs) -> tuple[list[int] | None, float]:
    """The pinned cut if every stage fits, with its slowest stage."""
    b = x.fixed
    spans = [(b[k], b[k + 1]) for k in range(x.stages)]
    if any(sum(x.mem[k][i:j]) + x.c_mem[k] > x.capacity for k, (i, j) in enumerate(spans)):
        return None, math.inf
    return list(b), max(sum(x.busy[i:j]) + x.c_busy[k] for k, (i, j) in enumerate(spans))


def _prefix(v: list[float]) -> list[float]:
    out = [0.0]
    for a in v:
        out.append(out[-1] + a)
    return out


@dataclass
class StageSolution:
    bounds: list[int] | None
    status: str
    objective_s: float
    bound_s: float
    wall_s: float
    num_vars: int = 0
    num_constraints: int = 0


def solve_stages(x: StageInputs, hint: list[int], time_limit_s: float, seed: int,
                 workers: int, upper_s: float | None = None) -> StageSolution:
    """CP-SAT over the P-1 stage boundaries (boundaries + element on prefix sums, the
    formulation measured fastest in reference/cpsat.md), hinted with the DP cut."""
    L, P, m, v = x.layers, x.stages, x.micro_batches, x.virtual
    hint_obj = _objective(x, hint)
    unit = max(hint_obj / TIME_STEPS, 1e-12)

    def ti(v: float) -> int:
        return round(v / unit)

    model = cp_model.CpModel()
    c = [model.new_constant(0)] + [model.new_int_var(k, L - (P - k), f"b{k}")
                                   for k in range(1, P)] + [model.new_constant(L)]
    for k in range(P):
        model.add(c[k] + 1 <= c[k + 1])

    def table(vals: list[float], scale) -> list[int]:
        return [scale(v) for v in _prefix(vals)]

    busy_t, bwd_t = table(x.busy, ti), table(x.bwd, ti)
    dp_t, opt_t = table(x.dp, ti), table(x.opt, ti)
    cap = math.floor(x.capacity / KIB)

    def elem(tab: list[int], idx, name: str):
        v = model.new_int_var(min(tab), max(tab), name)
        model.add_element(idx, tab, v)
        return v

    big = ti(hint_obj) * 4 + 1
    T = model.new_int_var(0, big, "T")
    E = model.new_int_var(0, big, "E")  # the largest exposed gradient sync
    opt = model.new_int_var(0, big, "O")  # the largest optimizer step
    at = {name: [elem(tab, c[k], f"{name}{k}") if 0 < k < P else tab[0 if k == 0 else L]
                 for k in range(P + 1)]
          for name, tab in (("busy", busy_t), ("bwd", bwd_t), ("dp", dp_t), ("opt", opt_t))}
    def span(name: str, k: int) -> object:
        return at[name][k + 1] - at[name][k]

    for k in range(P):
        model.add(T >= span("busy", k) + ti(x.c_busy[k]))
        model.add(E >= span("dp", k) + ti(x.c_dp[k]) - span("bwd", k) - ti(x.c_bwd[k]))
        model.add(opt >= span("opt", k) + ti(x.c_opt[k]))
        mem_t = [math.ceil(v / KIB) for v in _prefix(x.mem[k])]
        lo = elem(mem_t, c[k], f"m{k}a") if 0 < k < P else mem_t[0]
        hi = elem(mem_t, c[k + 1], f"m{k}b") if 0 < k + 1 < P else mem_t[L]
        model.add(hi - lo + math.ceil(x.c_mem[k] / KIB) <= cap)
    if x.dualpipe:  # [dualpipe] DualPipeV, chunks at half the rank (a bound where uneven):
        # 2 x (m T + (P - 1) max_k (busy + B - 3 W)_k / 2 + E + O)
        chunk_t = table(x.chunk_terms(), ti)
        at["chunk"] = [elem(chunk_t, c[k], f"chunk{k}") if 0 < k < P else
                       chunk_t[0 if k == 0 else L] for k in range(P + 1)]
        Z = model.new_int_var(0, 2 * big, "Z")
        for k in range(P):
            model.add(Z >= span("chunk", k) + ti(x.c_chunk_terms()[k]))
        v = 2
        model.minimize(2 * m * T + (P - 1) * Z + 2 * (E + opt))
    else:
        model.minimize((v * m - 1) * T + v * (E + opt))  # v x (pipeline_time - sum / v)
    for k in range(1, P):
        model.add_hint(c[k], hint[k])
    solver = cp_model.CpSolver()
    prm = solver.parameters
    prm.max_time_in_seconds = max(time_limit_s, 0.01)
    prm.random_seed = seed
    prm.num_workers = max(1, workers)
    prm.catch_sigint_signal = False  # a signal stops the run (cli.py), not just this solve
    status = solver.solve(model)
    name = solver.status_name(status)
    const = 0.0 if x.dualpipe else (sum(x.busy) + sum(x.c_busy)) / v
    size = (len(model.proto.variables), len(model.proto.constraints))
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        bounds = [0] + [solver.value(c[k]) for k in range(1, P)] + [L]
        return StageSolution(bounds, name, _objective(x, bounds),
                             const + solver.best_objective_bound * unit / v, solver.wall_time,
                             *size)
    return StageSolution(None, name, math.inf, -math.inf, solver.wall_time, *size)


ENUM_CUTS = 4096  # cuts few enough to price one by one (uneven chunks, `best_cut`)


def best_cut(x: StageInputs) -> tuple[list[int], float] | None:
    """The exact best cut by enumeration, when there are at most `ENUM_CUTS` cuts: where
    interleaved chunks are uneven the CP-SAT model prices them at 1 / v (a bound), so small
    instances are proven this way; None when there are more cuts or none fits."""
    L, P = x.layers, x.stages
    if P > L or math.comb(L - 1, P - 1) > ENUM_CUTS:
        return None
    pre_mem = [_prefix(row) for row in x.mem]
    best = None
    for inner in itertools.combinations(range(1, L), P - 1):
        b = [0, *inner, L]
        if any(pre_mem[k][b[k + 1]] - pre_mem[k][b[k]] + x.c_mem[k] > x.capacity
               for k in range(P)):
            continue
        value = _objective(x, b)
        if best is None or value < best[1]:
            best = (b, value)
    return best


def _objective(x: StageInputs, bounds: list[int]) -> float:
    """The step time of a cut, from the same affine pieces (checked against `evaluate`)."""
    m = x.micro_batches
    busy, exposed, opt = [], [], []
    for k in range(x.stages):
        a, b = bounds[k], bounds[k + 1]
        busy.append(sum(x.busy[a:b]) + x.c_busy[k])
        exposed.append(max(0.0, sum(x.dp[a:b]) + x.c_dp[k] - sum(x.bwd[a:b]) - x.c_bwd[k]))
        opt.append(sum(x.opt[a:b]) + x.c_opt[k])
    counts = [bounds[k + 1] - bounds[k] for k in range(x.stages)]
    if x.dualpipe:  # [dualpipe] (DualPipeV: the cut is searched; DualPipe's is fixed)
        spans = [(bounds[k], bounds[k + 1]) for k in range(x.stages)]
        back = [sum(x.back[a:b]) + x.c_back[k] for k, (a, b) in enumerate(spans)]
        wg = [sum(x.wg[a:b]) + x.c_wg[k] for k, (a, b) in enumerate(spans)]
        pipe = dualpipe_pipeline(busy, back, wg, counts, m, "dualpipev")[0]
        return pipe + max(exposed) + max(opt)
    return chunked_pipeline(busy, counts, m, x.virtual)[0] + max(exposed) + max(opt)


__all__ = ["StageInputs", "dp_partition", "solve_stages", "Evaluation"]
