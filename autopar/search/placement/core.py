"""The integer assignment instance that the CP-SAT models and the heuristics share.

Why: with replica counts fixed by water-filling and integer per-replica weights (the mean GPU
load is UNITS_PER_GPU units), a model's objective is the routing-rule load itself. Here too:
the solver parameters every model uses, and the canonical relabelling and pattern check that
make a heuristic assignment a valid hint under the models' symmetry cuts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from .problem import PlacementProblem, _auto_stop, _water_fill

UNITS_PER_GPU = 1_000_000  # integer resolution: the mean GPU load is this many units
MAX_COACT_PAIRS = 256  # co-activated pairs the phase-2 model looks at (the heaviest)


@dataclass
class _Core:
    """Assignment instance: `counts[e]` replicas of weight `a[e]` onto GPUs with `cap` slots."""

    a: list[int]
    counts: list[int]
    node_of: list[int]  # per GPU
    sizes: list[int]  # per node
    cap: int
    node_aware: bool  # real nodes: patterns + cross-node phase
    gain: list[float] = field(default_factory=list)  # per expert: tokens kept local per node p
    pairs: list[tuple[int, int, int]] = field(default_factory=list)  # (i, j, weight)
    _spans: dict[int, list[int]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def full(self) -> int:
        """Size of the nodes that patterns may span (the common, full size)."""
        return max(self.sizes)

    def spans(self, r: int) -> list[int]:
        """Node counts d an expert with r replicas may span (r / d replicas on each)."""
        if not self.node_aware:
            return [1]
        if r not in self._spans:  # memo: the LPT and the pattern check ask once per expert
            full = self.full
            n_full = sum(1 for s in self.sizes if s == full)
            out = [1] if r <= full else []
            out += [d for d in range(2, min(r, n_full) + 1) if r % d == 0 and r // d <= full]
            self._spans[r] = out
        return self._spans[r]


@dataclass
class _Solved:
    assign: list[list[int]]  # per GPU, experts (core indices)
    status: str
    bound_units: float


def _make_core(problem: PlacementProblem, budget: int) -> tuple[_Core, float]:
    """Integer instance: water-filled replica counts within `budget` spare slots."""
    w, g_total = problem.loads, problem.num_gpus
    total = sum(w)
    scale = UNITS_PER_GPU * g_total / total if total > 0 else 0.0
    sizes = list(problem.node_sizes)
    aware = len(sizes) > 1
    probe = _Core([], [], [], sizes, problem.slot_cap, aware)

    def realizable(r: int) -> bool:
        return r <= g_total and bool(probe.spans(r))

    counts = _water_fill(w, budget, realizable, _auto_stop(problem))
    a = [round(x / r * scale) for x, r in zip(w, counts, strict=True)]
    gain = [x * scale / g_total for x in w]  # tokens kept local per GPU of a covered node
    pairs: list[tuple[int, int, int]] = []
    if problem.coactivation is not None and aware:
        c = problem.coactivation
        cand = sorted(
            ((c[i][j], i, j) for i in range(len(w)) for j in range(i + 1, len(w)) if c[i][j] > 0),
            reverse=True,
        )[:MAX_COACT_PAIRS]
        pairs = [(i, j, max(1, round(v * scale))) for v, i, j in cand]
    return _Core(
        a,
        counts,
        [problem.node_of(g) for g in range(g_total)],
        sizes,
        problem.slot_cap,
        aware,
        gain,
        pairs,
    ), scale


def _params(
    solver: cp_model.CpSolver,
    limit: float,
    seed: int,
    workers: int,
    deterministic: bool,
    gap: float = 1e-4,
) -> None:
    p = solver.parameters
    p.num_workers = max(1, workers)
    p.random_seed = seed
    p.catch_sigint_signal = False  # a signal stops the run (cli.py), not just this solve
    p.relative_gap_limit = gap
    limit = max(limit, 0.01)
    if deterministic:
        p.max_deterministic_time = limit
        p.max_time_in_seconds = 20 * limit
    else:
        p.max_time_in_seconds = limit


def _order(core: _Core) -> list[int]:
    return sorted(range(len(core.a)), key=lambda e: (-core.a[e], e))


def _canonical(core: _Core, assign: list[list[int]]) -> list[list[int]]:
    """Relabel equal nodes and GPUs inside nodes by first expert: matches the symmetry cuts."""
    rank = {e: i for i, e in enumerate(_order(core))}
    first = [min((rank[e] for e in experts), default=len(rank)) for experts in assign]
    n_nodes = len(core.sizes)
    gpus = [[g for g in range(len(assign)) if core.node_of[g] == n] for n in range(n_nodes)]
    node_first = [min(first[g] for g in gs) for gs in gpus]
    full = [n for n in range(n_nodes) if core.sizes[n] == core.full]
    perm = dict(zip(full, sorted(full, key=lambda n: (node_first[n], n)), strict=True))
    out: list[list[int]] = [[] for _ in assign]
    for n in range(n_nodes):
        src = sorted(gpus[perm.get(n, n)], key=lambda g: (first[g], g))
        for dst, g in zip(gpus[n], src, strict=True):
            out[dst] = list(assign[g])
    return out


def _pattern_ok(core: _Core, assign: list[list[int]]) -> bool:
    cnt: dict[int, dict[int, int]] = {}
    for g, experts in enumerate(assign):
        if len(experts) > core.cap or len(set(experts)) != len(experts):
            return False
        for e in experts:
            per = cnt.setdefault(e, {})
            per[core.node_of[g]] = per.get(core.node_of[g], 0) + 1
    for e, r in enumerate(core.counts):
        per = cnt.get(e, {})
        if sum(per.values()) != r:
            return False
        if r and core.node_aware:
            d, vals = len(per), set(per.values())
            if d not in core.spans(r) or len(vals) != 1:
                return False
            if d > 1 and any(core.sizes[n] != core.full for n in per):
                return False
    return True


def _peak(core: _Core, assign: list[list[int]]) -> int:
    return max(sum(core.a[e] for e in ex) for ex in assign)
