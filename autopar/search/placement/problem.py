"""Expert placement for one MoE layer over an EP group, and a driver for many layers.

Why: an MoE layer waits for its most loaded GPU, and tokens whose expert lives on another node
cross the slow inter-node links. Placement decides both.

Routing rule (evaluates every placement, whatever produced it): tokens originate evenly on the
G GPUs, so node n sends the share s_n / G of each expert's load. A token goes to a replica of
its expert on its own node when there is one (split evenly among that node's replicas), else it
is split evenly over all replicas of the expert. A slot of expert e on node n therefore carries
w_e * (p_n / c_en + U_e / R_e), with p_n = s_n / G, c_en the replicas of e on n, R_e all of
them and U_e the origin share of the nodes without one; U_e * w_e tokens cross nodes.

CP-SAT model (no free split, so its objective IS the routing-rule load): replica counts are fixed
by water-filling (all spare slots, or a quarter of the GPUs' spare slots fewer when that packs
better), and an expert's replicas sit on d nodes of equal size with R_e / d replicas on each.
Under the routing rule every replica then carries exactly w_e / R_e. Phase 1 minimises the most
loaded GPU; phase 2 keeps that and maximises the node spread of the replicas (and puts
co-activated experts on common nodes). Large groups go hierarchical: node (or 8-GPU block)
counts, then GPUs inside each, then pairwise exchanges and CP-SAT windows across nodes. A
node-aware LPT (or the greedy baseline) polished by exchanges is the hint, the upper bound and
the fallback; the result is never worse than it, nor than greedy (else greedy is returned).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from ortools.sat.python import cp_model

from autopar.errors import InfeasibleError
from autopar.search.deadline import Deadline

METHODS = ("cpsat", "greedy", "round_robin", "node_local")
FLAT_MAX_BOOLS = 6000  # above this the model goes hierarchical (cpsat.md: keep models small)
LNS_WINDOW = 4  # GPUs re-solved together when repairing a hierarchical placement
WINDOW_TIME_S = 0.01  # per LNS window: an improving swap is found fast, proofs are not needed
BLOCK_GPUS = 8  # block size when one big node is split for the hierarchical model
UNITS_PER_GPU = 1_000_000  # integer resolution: the mean GPU load is this many units
MAX_COACT_PAIRS = 256  # co-activated pairs the phase-2 model looks at (the heaviest)
MIN_SOLVE_S = 0.02  # below this share of the time limit a layer gets the greedy placement


@dataclass(frozen=True)
class PlacementProblem:
    """One MoE layer over an EP group of `num_gpus` ranks (rank g on node g // gpus_per_node)."""

    loads: tuple[float, ...]  # tokens routed to each logical expert
    num_gpus: int
    gpus_per_node: int
    slots_per_gpu: int  # max expert copies per GPU (memory bound)
    spare_slots: int | None = None  # per GPU beyond ceil(E/G); None: solver picks within memory
    coactivation: tuple[tuple[float, ...], ...] | None = None  # tokens routed to both i and j

    def __post_init__(self) -> None:
        e, g = len(self.loads), self.num_gpus
        if e < 1 or g < 1 or self.gpus_per_node < 1:
            raise ValueError("need >= 1 expert, >= 1 GPU and >= 1 GPU per node")
        if any(not math.isfinite(v) or v < 0 for v in self.loads):
            raise ValueError("expert loads must be finite and >= 0")
        if self.spare_slots is not None and self.spare_slots < 0:
            raise ValueError("spare_slots must be >= 0")
        need = -(-e // g)
        if self.slots_per_gpu < need:
            raise InfeasibleError(
                f"{e} experts need {need} slots per GPU on {g} GPUs, memory holds "
                f"{self.slots_per_gpu}",
                "use more EP ranks or free memory",
            )
        if self.slot_cap > self.slots_per_gpu:
            raise InfeasibleError(
                f"{need} + {self.spare_slots} spare expert slots per GPU exceed the "
                f"{self.slots_per_gpu} that fit in memory",
                f"use at most {self.slots_per_gpu - need} spare slots",
            )
        if self.coactivation is not None and (
            len(self.coactivation) != e or any(len(r) != e for r in self.coactivation)
        ):
            raise ValueError("coactivation must be an E x E matrix")

    @property
    def num_experts(self) -> int:
        return len(self.loads)

    @property
    def slot_cap(self) -> int:
        """Expert copies allowed per GPU."""
        if self.spare_slots is None:
            return self.slots_per_gpu
        return -(-self.num_experts // self.num_gpus) + self.spare_slots

    @property
    def node_sizes(self) -> tuple[int, ...]:
        g, k = self.num_gpus, self.gpus_per_node
        return tuple(min(k, g - n * k) for n in range(-(-g // k)))

    def node_of(self, gpu: int) -> int:
        return gpu // self.gpus_per_node


@dataclass(frozen=True)
class Placement:
    """Experts on GPUs plus the routing-rule metrics; `objective` is the max GPU load."""

    gpu_experts: tuple[tuple[int, ...], ...]
    gpu_load: tuple[float, ...]
    max_over_mean: float
    cross_node_share: float
    method: str
    status: str  # OPTIMAL (meets the bound) | FEASIBLE | FALLBACK (greedy kept) | HEURISTIC
    objective: float
    best_bound: float  # valid lower bound on the max GPU load of any placement with these slots
    gap: float  # (objective - best_bound) / objective
    solve_time_s: float
    num_experts: int
    slots_per_gpu: int
    model_status: str = ""  # raw CP-SAT status(es) of the restricted model
    model_bound: float = float("nan")  # CP-SAT's bound for its restricted model (counts fixed)
    coactivation_together: float | None = None  # co-activated token share on a common node

    @property
    def replicas(self) -> tuple[int, ...]:
        """GPUs holding each logical expert."""
        cnt = [0] * self.num_experts
        for experts in self.gpu_experts:
            for e in experts:
                cnt[e] += 1
        return tuple(cnt)

    @property
    def phy2log(self) -> tuple[int, ...]:
        """Physical slot g * slots_per_gpu + j -> logical expert, every slot filled.

        Engines expect a full table. A free slot repeats a single-copy expert already on that
        GPU: all its tokens come to this GPU anyway, so the routed loads do not change.
        Only a GPU with no single-copy expert keeps -1 (empty) in a free slot.
        """
        reps = self.replicas
        out = []
        for experts in self.gpu_experts:
            solo = [e for e in experts if reps[e] == 1]
            free = self.slots_per_gpu - len(experts)
            out.extend(experts)
            out.extend(solo[i % len(solo)] if solo else -1 for i in range(free))
        return tuple(out)

    @property
    def logcnt(self) -> tuple[int, ...]:
        """Physical slots per logical expert (matches phy2log and log2phy)."""
        return tuple(len(s) for s in self.log2phy)

    @property
    def log2phy(self) -> tuple[tuple[int, ...], ...]:
        """Logical expert -> its physical slots."""
        slots: list[list[int]] = [[] for _ in range(self.num_experts)]
        for s, e in enumerate(self.phy2log):
            if e >= 0:
                slots[e].append(s)
        return tuple(tuple(s) for s in slots)

    @property
    def max_load(self) -> float:
        return max(self.gpu_load)

    @property
    def mean_load(self) -> float:
        return sum(self.gpu_load) / len(self.gpu_load)


# ---------------------------------------------------------------------------------------------
# routing-rule evaluation


def route_loads(
    problem: PlacementProblem, gpu_experts: Sequence[Sequence[int]]
) -> tuple[np.ndarray, float]:
    """GPU loads and cross-node tokens of a placement under the routing rule (module doc)."""
    w = np.asarray(problem.loads, dtype=float)
    g_total, sizes = problem.num_gpus, problem.node_sizes
    p = np.asarray(sizes, dtype=float) / g_total
    cnt = np.zeros((len(w), len(sizes)))
    for g, experts in enumerate(gpu_experts):
        for e in experts:
            cnt[e, problem.node_of(g)] += 1
    reps = cnt.sum(axis=1)
    uncovered = ((cnt == 0) * p).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_slot = w[:, None] * (p[None, :] / cnt + (uncovered / reps)[:, None])
    loads = np.zeros(g_total)
    for g, experts in enumerate(gpu_experts):
        n = problem.node_of(g)
        for e in experts:
            loads[g] += per_slot[e, n]
    return loads, float((w * uncovered).sum())


def check_placement(problem: PlacementProblem, gpu_experts: Sequence[Sequence[int]]) -> None:
    """Raise ValueError unless every expert is placed and every GPU is within its slots."""
    if len(gpu_experts) != problem.num_gpus:
        raise ValueError(f"{len(gpu_experts)} GPUs in placement, problem has {problem.num_gpus}")
    seen = set()
    for g, experts in enumerate(gpu_experts):
        if len(experts) > problem.slot_cap:
            raise ValueError(f"GPU {g} holds {len(experts)} experts > {problem.slot_cap} slots")
        for e in experts:
            if not 0 <= e < problem.num_experts:
                raise ValueError(f"GPU {g} holds unknown expert {e}")
            seen.add(e)
    if len(seen) != problem.num_experts:
        missing = sorted(set(range(problem.num_experts)) - seen)
        raise ValueError(f"experts not placed: {missing[:8]}")


def lower_bound(problem: PlacementProblem) -> float:
    """max(total / G, smallest achievable hottest replica): valid for any placement.

    Any placement's replicas of e carry w_e in total, so its hottest replica carries at least
    w_e / R_e; water-filling the spare slots minimises max_e w_e / R_e (with R_e <= G).
    """
    w = problem.loads
    budget = problem.num_gpus * problem.slot_cap - len(w)
    counts = _water_fill(w, budget, lambda r: r <= problem.num_gpus)
    item = max(x / r for x, r in zip(w, counts, strict=True))
    if budget == 0:  # every slot holds one distinct expert: the hottest has cap - 1 neighbours
        rest = sorted(w)
        rest.remove(max(w))
        item = max(w) + sum(rest[: problem.slot_cap - 1])
    return max(sum(w) / problem.num_gpus, item)


def _water_fill(w: Sequence[float], budget: int, realizable, stop_below: float = -1.0) -> list[int]:
    """Replica counts: each spare slot goes to the expert with the highest load per replica.

    `realizable(r)` says which counts the node layout allows; an expert jumps to its next
    realizable count if the budget covers it. Stops once the hottest replica <= `stop_below`.
    """
    counts = [1] * len(w)
    heap = [(-x, e) for e, x in enumerate(w) if x > 0]
    heapq.heapify(heap)
    while heap and budget > 0:
        neg, e = heapq.heappop(heap)
        if -neg <= stop_below:
            break
        r = counts[e] + 1
        while r <= counts[e] + budget and not realizable(r):
            r += 1
        if r > counts[e] + budget:
            continue
        budget -= r - counts[e]
        counts[e] = r
        heapq.heappush(heap, (-w[e] / r, e))
    return counts


def _auto_stop(problem: PlacementProblem) -> float:
    """With spare_slots=None, replicate only while the hottest replica exceeds half a GPU's mean."""
    return sum(problem.loads) / problem.num_gpus / 2 if problem.spare_slots is None else -1.0


# ---------------------------------------------------------------------------------------------
# baselines


def round_robin(problem: PlacementProblem) -> list[list[int]]:
    """Contiguous blocks of experts per GPU, no replicas (the frameworks' default)."""
    e, g = problem.num_experts, problem.num_gpus
    base, extra = divmod(e, g)
    out, start = [], 0
    for k in range(g):
        size = base + (1 if k < extra else 0)
        out.append(list(range(start, start + size)))
        start += size
    return out


def greedy(problem: PlacementProblem) -> list[list[int]]:
    """Public-balancer style: water-fill replicas, then LPT into the least loaded GPU with room.

    Node-unaware. A GPU never gets two copies of one expert unless no other GPU has room.
    """
    w, g_total, cap = problem.loads, problem.num_gpus, problem.slot_cap
    budget = g_total * cap - len(w)
    counts = _water_fill(w, budget, lambda r: r <= g_total, _auto_stop(problem))
    items = sorted(
        ((w[e] / counts[e], e) for e in range(len(w)) for _ in range(counts[e])),
        key=lambda t: (-t[0], t[1]),
    )
    return _pack(items, list(range(g_total)), cap, [[] for _ in range(g_total)], [0.0] * g_total)


def _pack(items, gpus, cap, out, load) -> list[list[int]]:
    for a, e in items:
        room = [g for g in gpus if len(out[g]) < cap]
        fresh = [g for g in room if e not in out[g]]
        g = min(fresh or room, key=lambda k: (load[k], k))
        out[g].append(e)
        load[g] += a
    return out


def node_local(problem: PlacementProblem) -> list[list[int]]:
    """Public-balancer hierarchical style: experts to nodes, replicas only inside the node."""
    w, cap, sizes = problem.loads, problem.slot_cap, problem.node_sizes
    e_total, g_total = len(w), problem.num_gpus
    quota = [e_total * s // g_total for s in sizes]
    for n in sorted(range(len(sizes)), key=lambda n: -sizes[n])[: e_total - sum(quota)]:
        quota[n] += 1
    node_load = [0.0] * len(sizes)
    members: list[list[int]] = [[] for _ in sizes]
    for e in sorted(range(e_total), key=lambda e: (-w[e], e)):
        free = [n for n in range(len(sizes)) if len(members[n]) < quota[n]]
        n = min(free, key=lambda n: (node_load[n] / sizes[n], n))
        members[n].append(e)
        node_load[n] += w[e]
    out: list[list[int]] = [[] for _ in range(g_total)]
    load = [0.0] * g_total
    k = problem.gpus_per_node
    for n, mem in enumerate(members):
        gpus = list(range(n * k, n * k + sizes[n]))
        sub = [w[e] for e in mem]
        stop = _auto_stop(problem)
        counts = _water_fill(sub, cap * sizes[n] - len(mem), lambda r, s=sizes[n]: r <= s, stop)
        items = sorted(
            ((sub[i] / counts[i], e) for i, e in enumerate(mem) for _ in range(counts[i])),
            key=lambda t: (-t[0], t[1]),
        )
        _pack(items, gpus, cap, out, load)
    return out


# ---------------------------------------------------------------------------------------------
# the CP-SAT core: fixed replica counts, integer per-replica weights


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

    @property
    def full(self) -> int:
        """Size of the nodes that patterns may span (the common, full size)."""
        return max(self.sizes)

    def spans(self, r: int) -> list[int]:
        """Node counts d an expert with r replicas may span (r / d replicas on each)."""
        if not self.node_aware:
            return [1]
        n_full = sum(1 for s in self.sizes if s == self.full)
        out = [1] if r <= self.full else []
        out += [d for d in range(2, min(r, n_full) + 1) if r % d == 0 and r // d <= self.full]
        return out


@dataclass
class _Solved:
    assign: list[list[int]]  # per GPU, experts (core indices)
    status: str
    bound_units: float


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


def _lpt(core: _Core) -> list[list[int]] | None:
    """Node-aware LPT that respects the span patterns: the hint and the fallback.

    Replicas of multi-copy experts stay on their nodes in later repairs, so it also avoids
    giving a node more big replicas (see _big_threshold) than it has GPUs.
    """
    g_total = len(core.node_of)
    nodes = [[g for g in range(g_total) if core.node_of[g] == n] for n in range(len(core.sizes))]
    load = [0] * g_total
    out: list[list[int]] = [[] for _ in range(g_total)]
    node_load = [0] * len(core.sizes)
    pinned_big = [0] * len(core.sizes)
    theta = _big_threshold(core)

    def is_big(e: int) -> bool:
        return core.node_aware and core.counts[e] > 1 and core.a[e] > theta

    # big multi-copy experts first, least flexible (most replicas) first, then plain LPT
    order = sorted(_order(core), key=lambda e: (not is_big(e), -core.counts[e] * is_big(e)))
    for e in order:
        r = core.counts[e]
        if r == 0:
            continue
        big = is_big(e)
        choice = None
        for strict in (True, False) if big else (False,):
            options = []  # (resulting max load, -d, k, picked): lowest max, then widest span
            for d in core.spans(r):
                k = r // d
                cands = []
                for n, gpus in enumerate(nodes):
                    if d > 1 and core.sizes[n] != core.full:
                        continue
                    if strict and pinned_big[n] + k > core.sizes[n]:
                        continue
                    room = sorted(
                        (g for g in gpus if len(out[g]) < core.cap), key=lambda g: load[g]
                    )
                    if len(room) >= k:
                        # GPU-level LPT: the node whose k coolest free GPUs are coolest
                        key = (load[room[k - 1]], node_load[n] / core.sizes[n])
                        cands.append((key, n, room[:k]))
                if len(cands) >= d:
                    picked = sorted(cands)[:d]
                    peak = max(load[g] for _, _, gs in picked for g in gs) + core.a[e]
                    options.append((peak, -d, k, picked))
            if options:
                _, _, k, picked = min(options, key=lambda o: o[:2])
                choice = (k, picked)
                break
        if choice is None:
            return None
        k, picked = choice
        for _, n, gpus in picked:
            for g in gpus:
                out[g].append(e)
                load[g] += core.a[e]
            node_load[n] += core.a[e] * k
            pinned_big[n] += k if big else 0
    return out


def _big_threshold(core: _Core) -> float:
    """Items above this cannot share a GPU if the max is to stay within 0.2% of the mean
    (counting the smallest items that fill the other slots when every slot must be used)."""
    live = [e for e, r in enumerate(core.counts) if r]
    if not live:
        return math.inf
    g_total = len(core.node_of)
    total = sum(core.a[e] * core.counts[e] for e in live)
    n_items = sum(core.counts[e] for e in live)
    forced = core.cap - 2 if n_items == g_total * core.cap and core.cap >= 2 else 0
    return (math.ceil(total / g_total) * 1.002 - forced * min(core.a[e] for e in live)) / 2


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


def _solve_core(
    core: _Core,
    limit: float,
    seed: int,
    workers: int,
    deterministic: bool,
    hint: list[list[int]] | None = None,
) -> _Solved:
    """Flat model when small, else hierarchical; always returns a feasible assignment that is
    no worse than the hint (LPT when none is given)."""
    if hint is None:
        hint = _lpt(core)
    n_bools = sum(1 for r in core.counts if r) * len(core.node_of)
    if n_bools > FLAT_MAX_BOOLS and len(core.node_of) > BLOCK_GPUS:
        solved = _solve_hier(core, hint, limit, seed, workers, deterministic)
    else:
        solved = _solve_flat(core, hint, limit, seed, workers, deterministic)
    if hint is not None and _peak(core, hint) < _peak(core, solved.assign):
        return _Solved(hint, solved.status + "->start", solved.bound_units)
    return solved


def _peak(core: _Core, assign: list[list[int]]) -> int:
    return max(sum(core.a[e] for e in ex) for ex in assign)


def _start(
    problem: PlacementProblem, base: list[list[int]]
) -> tuple[_Core, list[list[int]] | None, float]:
    """Pick the replica budget: all spare slots, or a quarter of the GPUs' spare slots fewer.

    With every slot used, each GPU must hold exactly `cap` items, which can leave no good
    packing (many replicas just under half a GPU); a little slack often packs far better.
    Each candidate is scored by LPT plus pairwise polish (milliseconds); ties keep more replicas.
    The greedy baseline `base` is a candidate too when it fits the model (same counts, spans).
    """
    full = problem.num_gpus * problem.slot_cap - problem.num_experts
    budgets = [full]
    if problem.spare_slots is not None and full > 0:
        budgets.append(max(0, full - -(-problem.num_gpus // 4)))
    best = None
    for budget in budgets:
        core, scale = _make_core(problem, budget)
        for hint in (_lpt(core), [list(ex) for ex in base]):
            if hint is None or not _pattern_ok(core, hint):
                continue
            _swap_descent(core, hint, list(core.node_of))
            score = _peak(core, hint)
            if best is None or score < best[0]:
                best = (score, core, hint, scale)
    if best is None:
        core, scale = _make_core(problem, full)
        return core, None, scale
    return best[1], best[2], best[3]


def _solve_flat(core, hint, limit, seed, workers, deterministic) -> _Solved:
    t0 = time.perf_counter()
    g_total, n_nodes = len(core.node_of), len(core.sizes)
    order = _order(core)
    if hint is not None:
        hint = _canonical(core, hint)
        if not _pattern_ok(core, hint):
            hint = None
    m = cp_model.CpModel()
    x: dict[tuple[int, int], cp_model.IntVar] = {}
    local = [0] * g_total
    seen = [0] * n_nodes
    for g in range(g_total):
        local[g] = seen[core.node_of[g]]
        seen[core.node_of[g]] += 1
    full_rank = {}
    for n in range(n_nodes):
        if core.sizes[n] == core.full:
            full_rank[n] = len(full_rank)
    cum_r = cum_d = 0
    for e in order:
        r = core.counts[e]
        if r == 0:
            continue
        cum_r += r
        cum_d += max(core.spans(r)) if core.node_aware else 1
        for g in range(g_total):
            n = core.node_of[g]
            if local[g] >= cum_r or full_rank.get(n, -1) >= cum_d:
                continue  # symmetry cut (valid for identical GPUs / equal nodes, see _canonical)
            x[e, g] = m.new_bool_var(f"x{e}_{g}")
    items = [e for e in order if core.counts[e]]
    for e in items:
        m.add(sum(x[e, g] for g in range(g_total) if (e, g) in x) == core.counts[e])
    total = sum(core.a[e] * core.counts[e] for e in items)
    lb_t = max([-(-total // g_total)] + [core.a[e] for e in items])
    ub_t = max(lb_t, total)
    if hint is not None:
        ub_t = max(lb_t, max(sum(core.a[e] for e in ex) for ex in hint))
    t = m.new_int_var(lb_t, ub_t, "T")
    for g in range(g_total):
        col = [(e, x[e, g]) for e in items if (e, g) in x]
        if col:
            m.add(sum(v for _, v in col) <= core.cap)
            m.add(sum(core.a[e] * v for e, v in col) <= t)
    u, q = _patterns(m, core, x, items)
    m.minimize(t)
    if hint is not None:
        _hint(m, core, x, u, q, hint)
        m.add_hint(t, ub_t)
    solver = cp_model.CpSolver()
    _params(solver, 0.6 * limit, seed, workers, deterministic)
    st = solver.solve(m)
    status = solver.status_name(st)
    if st not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        if hint is None:
            raise RuntimeError(f"CP-SAT {status} and no heuristic placement")
        return _Solved(hint, f"{status}->hint", float(lb_t))
    bound = solver.best_objective_bound
    assign = _read(solver, x, g_total)
    terms = _spread_objective(m, core, u, x, items) if core.node_aware else []
    if terms:
        t_star = int(solver.objective_value)
        m.add(t <= t_star)
        m.clear_hints()
        _hint(m, core, x, u, q, assign)
        m.add_hint(t, t_star)
        m.maximize(sum(terms))
        solver2 = cp_model.CpSolver()
        rest = 0.4 * limit if deterministic else limit - (time.perf_counter() - t0)
        _params(solver2, max(rest, 0.1 * limit), seed, workers, deterministic)
        st2 = solver2.solve(m)
        if st2 in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            assign = _read(solver2, x, g_total)
            status += "+" + solver2.status_name(st2)
    return _Solved(assign, status, bound)


def _read(solver, x, g_total) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(g_total)]
    for (e, g), v in x.items():
        if solver.boolean_value(v):
            out[g].append(e)
    return out


def _patterns(m: cp_model.CpModel, core: _Core, x, items) -> tuple[dict, dict]:
    """Span patterns: replicas of e on d equal nodes, r / d on each (so each gets w / r)."""
    if not core.node_aware:
        return {}, {}

    def copies_on(e: int, n: int):
        return sum(x[e, g] for g in range(len(core.node_of)) if core.node_of[g] == n
                   and (e, g) in x)

    return _span_model(m, core, items, copies_on)


def _span_model(m: cp_model.CpModel, core: _Core, items, copies_on) -> tuple[dict, dict]:
    """u[e, n]: expert e has copies on node n; q[e, d]: its copies span d nodes, r / d on
    each. `copies_on(e, n)` is the model's expression for e's copies on node n (one
    variable per GPU in the flat model, one count per node in the hierarchical one)."""
    u: dict = {}
    q: dict = {}
    n_nodes = len(core.sizes)
    for e in items:
        r = core.counts[e]
        per_node = [copies_on(e, n) for n in range(n_nodes)]
        if r == 1:
            for n in range(n_nodes):
                u[e, n] = per_node[n]
            continue
        for n in range(n_nodes):
            u[e, n] = m.new_bool_var(f"u{e}_{n}")
        spans = core.spans(r)
        for d in spans:
            q[e, d] = m.new_bool_var(f"q{e}_{d}")
        m.add_exactly_one(q[e, d] for d in spans)
        for d in spans:
            m.add(sum(u[e, n] for n in range(n_nodes)) == d).only_enforce_if(q[e, d])
            for n in range(n_nodes):
                if d > 1 and core.sizes[n] != core.full:
                    m.add_implication(q[e, d], ~u[e, n])
                m.add(per_node[n] == (r // d) * u[e, n]).only_enforce_if(q[e, d])
    return u, q


def _hint(m, core: _Core, x, u, q, assign) -> None:
    on = {(e, g) for g, ex in enumerate(assign) for e in ex}
    for key, v in x.items():
        m.add_hint(v, key in on)
    nodes_of: dict[int, set[int]] = {}
    for e, g in on:
        nodes_of.setdefault(e, set()).add(core.node_of[g])
    for (e, n), v in u.items():
        if core.counts[e] > 1:  # single copies alias sums of x (already hinted)
            m.add_hint(v, n in nodes_of.get(e, ()))
    for (e, d), v in q.items():
        m.add_hint(v, len(nodes_of.get(e, ())) == d)


def _spread_objective(m, core: _Core, u, x, items):
    """Tokens kept on their node (scaled), plus co-activated pairs sharing a node."""
    terms = []
    n_nodes = len(core.sizes)
    uniform = len(set(core.sizes)) == 1
    for e in items:
        if core.counts[e] == 1 and uniform:
            continue  # a single copy keeps the same share wherever it sits
        for n in range(n_nodes):
            if (e, n) in u:
                terms.append(round(core.gain[e] * core.sizes[n]) * u[e, n])
    for i, j, wgt in core.pairs:
        for n in range(n_nodes):
            if (i, n) in u and (j, n) in u:
                z = m.new_bool_var(f"z{i}_{j}_{n}")
                m.add(z <= u[i, n])
                m.add(z <= u[j, n])
                terms.append(wgt * z)
    return terms


# ---------------------------------------------------------------------------------------------
# hierarchical: counts per node (or 8-GPU block) first, then GPUs inside each


def _blocks(core: _Core) -> tuple[list[int], bool]:
    """Group of each GPU: real nodes when node-aware, else near-equal blocks of ~8 GPUs."""
    if core.node_aware:
        return list(core.node_of), True
    g_total = len(core.node_of)
    n_blocks = -(-g_total // BLOCK_GPUS)
    return [g * n_blocks // g_total for g in range(g_total)], False


def _solve_hier(core, hint, limit, seed, workers, deterministic) -> _Solved:
    t0 = time.perf_counter()
    group_of, real = _blocks(core)
    n_groups = max(group_of) + 1
    sizes = [group_of.count(n) for n in range(n_groups)]
    top = _Core(
        core.a, core.counts, list(range(n_groups)), sizes, core.cap, real, core.gain, core.pairs
    )
    items = [e for e in _order(core) if core.counts[e]]
    m = cp_model.CpModel()
    y: dict[tuple[int, int], cp_model.IntVar] = {}
    hi_of: dict[tuple[int, int], int] = {}
    full_rank = {n: i for i, n in enumerate(n for n in range(n_groups) if sizes[n] == top.full)}
    cum_d = 0
    for e in items:
        r = core.counts[e]
        cum_d += max(top.spans(r)) if real else min(r, n_groups)
        for n in range(n_groups):
            hi = min(r, sizes[n]) if full_rank.get(n, -1) < cum_d else 0
            y[e, n] = m.new_int_var(0, hi, f"y{e}_{n}")
            hi_of[e, n] = hi
        m.add(sum(y[e, n] for n in range(n_groups)) == r)
    total = sum(core.a[e] * core.counts[e] for e in items)
    g_total = len(core.node_of)
    lb_t = -(-total // g_total)
    agg = None
    if hint is not None:
        hint = _canonical(_Core(core.a, core.counts, group_of, sizes, core.cap, real), hint)
        agg = [[0] * n_groups for _ in core.a]
        for g, ex in enumerate(hint):
            for e in ex:
                agg[e][group_of[g]] += 1
    ub_t = total
    if agg is not None:
        ub_t = max(
            -(-sum(core.a[e] * agg[e][n] for e in items) // sizes[n]) for n in range(n_groups)
        )
    t = m.new_int_var(lb_t, max(lb_t, ub_t), "t")
    for n in range(n_groups):
        m.add(sum(y[e, n] for e in items) <= core.cap * sizes[n])
        m.add(sum(core.a[e] * y[e, n] for e in items) <= sizes[n] * t)
    u, q = _hier_patterns(m, top, y, items) if real else ({}, {})
    hint_ok = agg is not None and all(
        agg[e][n] <= hi_of[e, n] for e in items for n in range(n_groups)
    )
    if hint_ok:
        _hint_hier(m, top, y, u, q, agg, items)
        m.add_hint(t, max(lb_t, ub_t))
    m.minimize(t)
    solver = cp_model.CpSolver()
    _params(solver, 0.15 * limit, seed, workers, deterministic, gap=1e-3)
    solver.parameters.cp_model_presolve = False  # hint-driven; presolve ate the budget
    st = solver.solve(m)
    status = "L1=" + solver.status_name(st)
    if st in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        cnt = [
            [int(solver.value(y[e, n])) if (e, n) in y else 0 for n in range(n_groups)]
            for e in range(len(core.a))
        ]
        terms = _spread_objective(m, top, u, y, items) if real else []
        if terms:
            m.add(t <= int(solver.objective_value))
            m.clear_hints()
            _hint_hier(m, top, y, u, q, cnt, items)
            m.add_hint(t, int(solver.objective_value))
            m.maximize(sum(terms))
            s2 = cp_model.CpSolver()
            _params(s2, 0.05 * limit, seed, workers, deterministic, gap=1e-3)
            st2 = s2.solve(m)
            if st2 in (cp_model.OPTIMAL, cp_model.FEASIBLE):
                cnt = [
                    [int(s2.value(y[e, n])) if (e, n) in y else 0 for n in range(n_groups)]
                    for e in range(len(core.a))
                ]
                status += "+" + s2.status_name(st2)
    elif agg is not None:
        cnt, status = agg, status + "->hint"
    else:
        raise RuntimeError(f"CP-SAT {status} and no heuristic placement")
    out: list[list[int]] = [[] for _ in range(g_total)]
    statuses = []
    for n in range(n_groups):
        gpus = [g for g in range(g_total) if group_of[g] == n]
        members = [e for e in range(len(core.a)) if cnt[e][n]]
        sub = _Core(
            [core.a[e] for e in members],
            [cnt[e][n] for e in members],
            [0] * len(gpus),
            [len(gpus)],
            core.cap,
            False,
        )
        if deterministic:  # fixed shares, so the result does not depend on machine speed
            share = 0.2 * limit / n_groups
        else:
            share = (0.4 * limit - (time.perf_counter() - t0)) / (n_groups - n)
        solved = _solve_core(sub, share, seed, workers, deterministic)
        statuses.append(solved.status)
        for k, g in enumerate(gpus):
            out[g] = [members[i] for i in solved.assign[k]]
    worst = "OPTIMAL" if all(s.startswith("OPTIMAL") for s in statuses) else "FEASIBLE"
    rest = 0.4 * limit if deterministic else limit - (time.perf_counter() - t0)
    out, moves = _lns(core, out, group_of, rest, seed, deterministic)
    return _Solved(out, f"{status},L2={worst},LNS={moves}", float(lb_t))


def _lns(
    core: _Core,
    assign: list[list[int]],
    group_of: list[int],
    limit: float,
    seed: int,
    deterministic: bool,
) -> tuple[list[list[int]], int]:
    """Repair granularity across groups: re-solve windows of LNS_WINDOW GPUs holding the
    hottest GPU and the coolest ones. Replicas of multi-copy experts stay in their group on
    real nodes (node counts, hence spans and routing, are unchanged); single copies move freely.
    Returns the assignment and the number of improving windows.
    """
    rng = np.random.default_rng(seed)
    g_total = len(assign)
    a = core.a
    _swap_descent(core, assign, group_of)
    load = [sum(a[e] for e in ex) for ex in assign]
    total = sum(load)
    lb_t = max(-(-total // g_total), max((a[e] for ex in assign for e in ex), default=0))
    deadline = time.perf_counter() + limit
    iters = max(4, int(limit / WINDOW_TIME_S))
    moves = fails = 0
    for _ in range(iters):
        if time.perf_counter() > deadline and not deterministic:
            break
        hot = max(range(g_total), key=lambda g: (load[g], -g))
        if load[hot] <= lb_t or fails >= 16:
            break
        size = LNS_WINDOW if fails < 4 else 2 * LNS_WINDOW  # widen when small windows stall
        win = _pick_window(hot, load, group_of, rng, size)
        new = _window(core, assign, load, win, group_of, seed, deterministic)
        if new is None:
            fails += 1
            continue
        fails = 0
        moves += 1
        for g, ex in zip(win, new, strict=True):
            assign[g] = ex
            load[g] = sum(a[e] for e in ex)
    return assign, moves


def _swap_descent(core: _Core, assign: list[list[int]], group_of: list[int]) -> None:
    """Cheap polish before the CP-SAT windows: exchange up to two items each way between the
    hottest GPU and another while that lowers the pair's max (same pinning as _window).
    Vectorised over all partner subsets; the best few candidates are checked for validity."""
    a = core.a
    n_gpu = len(assign)
    load = np.array([sum(a[e] for e in ex) for ex in assign], dtype=np.int64)
    subs: list[tuple[np.ndarray, list[tuple[int, ...]]] | None] = [None] * n_gpu

    def subsets(g: int) -> tuple[np.ndarray, list[tuple[int, ...]]]:
        if subs[g] is None:
            pairs = _subsets(assign[g], a)
            subs[g] = (np.array([t[0] for t in pairs], dtype=np.int64), [t[1] for t in pairs])
        return subs[g]

    for _ in range(20 * n_gpu):
        h = int(np.argmax(load))
        hs, hidx = subsets(h)
        parts = [g for g in range(n_gpu) if g != h and load[h] - load[g] > 1]
        if not parts:
            return
        sg = np.concatenate([subsets(g)[0] for g in parts])
        gid = np.concatenate([np.full(len(subsets(g)[0]), g) for g in parts])
        pos = np.concatenate([np.arange(len(subsets(g)[0])) for g in parts])
        gap = load[h] - load[gid]
        k = np.searchsorted(hs, sg + gap / 2)
        cand = np.clip(k[:, None] + np.arange(-3, 3)[None, :], 0, len(hs) - 1)
        delta = hs[cand] - sg[:, None]
        hi = np.maximum(load[h] - delta, load[gid][:, None] + delta)
        hi = np.where((delta > 0) & (delta < gap[:, None]), hi, np.iinfo(np.int64).max)
        flat = np.argsort(hi, axis=None, kind="stable")
        done = False
        for f in flat[:64]:
            row, col = divmod(int(f), cand.shape[1])
            if hi[row, col] >= load[h]:
                break
            g = int(gid[row])
            jh, jg = hidx[int(cand[row, col])], subsets(g)[1][int(pos[row])]
            if _exchange_ok(core, assign, group_of, h, g, jh, jg):
                give = [assign[h][i] for i in jh]
                take = [assign[g][j] for j in jg]
                assign[h] = [e for i, e in enumerate(assign[h]) if i not in jh] + take
                assign[g] = [e for j, e in enumerate(assign[g]) if j not in jg] + give
                for x in (h, g):
                    load[x] = sum(a[e] for e in assign[x])
                    subs[x] = None
                done = True
                break
        if not done:
            return


def _subsets(experts: list[int], a: list[int]) -> list[tuple[int, tuple[int, ...]]]:
    """(sum, positions) of every subset of at most two items, sorted by sum."""
    n = len(experts)
    out = [(0, ())] + [(a[experts[i]], (i,)) for i in range(n)]
    out += [(a[experts[i]] + a[experts[j]], (i, j)) for i in range(n) for j in range(i + 1, n)]
    return sorted(out)


def _exchange_ok(core, assign, group_of, h, g, jh, jg) -> bool:
    give = [assign[h][i] for i in jh]
    take = [assign[g][j] for j in jg]
    if (
        len(assign[h]) - len(jh) + len(jg) > core.cap
        or len(assign[g]) - len(jg) + len(jh) > core.cap
    ):
        return False
    if group_of[h] != group_of[g] and core.node_aware:
        if any(core.counts[e] > 1 for e in give + take):
            return False
    stay_h = {e for i, e in enumerate(assign[h]) if i not in jh}
    stay_g = {e for j, e in enumerate(assign[g]) if j not in jg}
    return not (stay_g & set(give)) and not (stay_h & set(take))


def _pick_window(hot: int, load: list[int], group_of: list[int], rng, size: int) -> list[int]:
    """The hottest GPU, cool GPUs of its own group (where pinned replicas may move) and cool
    GPUs anywhere, drawn at random from the coolest candidates so failed windows differ."""
    others = sorted((g for g in range(len(load)) if g != hot), key=lambda g: (load[g], g))
    same = [g for g in others if group_of[g] == group_of[hot]]
    win = [hot]
    for pool, k in ((same[:4], 1), (others[: 4 * size], size)):
        pool = [g for g in pool if g not in win]
        take = min(k, size - len(win), len(pool))
        if take > 0:
            win += [pool[i] for i in sorted(rng.choice(len(pool), size=take, replace=False))]
    return win


def _window(core, assign, load, win, group_of, seed, deterministic) -> list[list[int]] | None:
    """Min-max re-assignment of the items on `win`; None unless the window max drops."""
    a = core.a
    items = [(e, g) for g in win for e in assign[g]]
    m = cp_model.CpModel()
    x = {}
    for i, (e, home) in enumerate(items):
        pinned = core.node_aware and core.counts[e] > 1
        for g in win:
            if pinned and group_of[g] != group_of[home]:
                continue
            x[i, g] = m.new_bool_var("")
        m.add_exactly_one(x[i, g] for g in win if (i, g) in x)
    cur = max(load[g] for g in win)
    lo = -(-sum(load[g] for g in win) // len(win))
    if lo >= cur:
        return None
    t = m.new_int_var(lo, cur - 1, "t")
    by_expert: dict[int, list[int]] = {}
    for i, (e, _) in enumerate(items):
        by_expert.setdefault(e, []).append(i)
    for g in win:
        col = [i for i in range(len(items)) if (i, g) in x]
        m.add(sum(x[i, g] for i in col) <= core.cap)
        m.add(sum(a[items[i][0]] * x[i, g] for i in col) <= t)
        for idx in by_expert.values():
            if len(idx) > 1:
                m.add_at_most_one(x[i, g] for i in idx if (i, g) in x)
    m.minimize(t)
    m.add_hint(t, cur - 1)
    for i, (_, home) in enumerate(items):
        for g in win:
            if (i, g) in x:
                m.add_hint(x[i, g], g == home)
    solver = cp_model.CpSolver()
    _params(solver, WINDOW_TIME_S * len(win) / LNS_WINDOW, seed, 1, deterministic, gap=1e-3)
    st = solver.solve(m)
    if st not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    out: list[list[int]] = [[] for _ in win]
    for (i, g), v in x.items():
        if solver.boolean_value(v):
            out[win.index(g)].append(items[i][0])
    return out


def _hier_patterns(m, core: _Core, y, items) -> tuple[dict, dict]:
    return _span_model(m, core, items, lambda e, n: y[e, n])


def _hint_hier(m, core: _Core, y, u, q, cnt, items) -> None:
    for (e, n), v in y.items():
        m.add_hint(v, cnt[e][n])
    for (e, n), v in u.items():
        if core.counts[e] > 1:
            m.add_hint(v, cnt[e][n] > 0)
    for (e, d), v in q.items():
        m.add_hint(v, sum(1 for c in cnt[e] if c) == d)


# ---------------------------------------------------------------------------------------------
# public entry points


def place_experts(
    problem: PlacementProblem,
    method: str = "cpsat",
    time_limit_s: float = 1.0,
    seed: int = 0,
    workers: int = 1,
    deterministic: bool = False,
) -> Placement:
    """Place one MoE layer's experts; every method is evaluated under the same routing rule.

    `deterministic` swaps the wall-clock limit for CP-SAT's deterministic time (reproducible
    with workers=1). The CP-SAT result is never worse than greedy: if greedy's routed max load
    is lower (or CP-SAT returns nothing), greedy's placement is returned with status FALLBACK.
    """
    if method not in METHODS:
        raise ValueError(f"unknown placement method {method!r} (one of {', '.join(METHODS)})")
    t0 = time.perf_counter()
    lb = lower_bound(problem)
    if method == "round_robin":
        return _finish(problem, round_robin(problem), method, "HEURISTIC", lb, t0)
    if method == "greedy":
        return _finish(problem, greedy(problem), method, "HEURISTIC", lb, t0)
    if method == "node_local":
        return _finish(problem, node_local(problem), method, "HEURISTIC", lb, t0)
    if _filled_evenly(problem):
        return _finish(problem, round_robin(problem), "round_robin", "", lb, t0,
                       "not needed: equal loads fill every slot once, contiguous blocks meet "
                       "the bound and no replica can move a token")
    base = greedy(problem)
    core, start, scale = _start(problem, base)
    try:
        solved = _solve_core(core, time_limit_s, seed, workers, deterministic, start)
    except RuntimeError as exc:
        return _finish(problem, base, "greedy", "FALLBACK", lb, t0, model_status=str(exc))
    bound = solved.bound_units / scale if scale else 0.0
    res = _finish(problem, solved.assign, "cpsat", "", lb, t0, solved.status, bound)
    if float(route_loads(problem, base)[0].max()) < res.objective * (1 - 1e-12):
        ref = _finish(problem, base, "greedy", "", lb, t0, solved.status + ";greedy kept", bound)
        return ref if ref.status == "OPTIMAL" else dataclasses.replace(ref, status="FALLBACK")
    return res


def _filled_evenly(problem: PlacementProblem) -> bool:
    """Equal loads and exactly one slot per expert: every GPU carries the mean whatever the
    placement, and with no replica each node keeps the same tokens local, so the contiguous
    blocks are optimal on both objectives (the common uniform-routing case, solved at once)."""
    w = problem.loads
    return (problem.num_gpus * problem.slot_cap == len(w) and problem.coactivation is None
            and max(w) == min(w))


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


def _finish(
    problem: PlacementProblem,
    assign: Sequence[Sequence[int]],
    method: str,
    status: str,
    lb: float,
    t0: float,
    model_status: str = "",
    model_bound: float = float("nan"),
) -> Placement:
    gpu_experts = tuple(tuple(sorted(ex)) for ex in assign)
    check_placement(problem, gpu_experts)
    loads, cross = route_loads(problem, gpu_experts)
    total = float(sum(problem.loads))
    mx = float(loads.max())
    mean = total / problem.num_gpus
    gap = (mx - lb) / mx if mx > 0 else 0.0
    if not status:
        status = "OPTIMAL" if gap <= 1e-9 else "FEASIBLE"
    return Placement(
        gpu_experts=gpu_experts,
        gpu_load=tuple(float(v) for v in loads),
        max_over_mean=mx / mean if mean > 0 else 1.0,
        cross_node_share=cross / total if total > 0 else 0.0,
        method=method,
        status=status,
        objective=mx,
        best_bound=lb,
        gap=max(gap, 0.0),
        solve_time_s=time.perf_counter() - t0,
        num_experts=problem.num_experts,
        slots_per_gpu=problem.slot_cap,
        model_status=model_status,
        model_bound=model_bound,
        coactivation_together=_together(problem, gpu_experts),
    )


def _together(problem: PlacementProblem, gpu_experts) -> float | None:
    """Share of co-activated tokens whose two experts have a replica on a common node."""
    c = problem.coactivation
    if c is None:
        return None
    nodes: list[set[int]] = [set() for _ in range(problem.num_experts)]
    for g, ex in enumerate(gpu_experts):
        for e in ex:
            nodes[e].add(problem.node_of(g))
    tot = hit = 0.0
    for i in range(problem.num_experts):
        for j in range(i + 1, problem.num_experts):
            tot += c[i][j]
            if nodes[i] & nodes[j]:
                hit += c[i][j]
    return hit / tot if tot > 0 else None


def place_layers(
    problems: Sequence[PlacementProblem],
    method: str = "cpsat",
    time_limit_s: float = 1.0,
    seed: int = 0,
    workers: int = 1,
    deterministic: bool = False,
    deadline: Deadline | None = None,
) -> list[Placement]:
    """Place many layers: identical problems (up to expert relabelling) are solved once, the
    distinct ones concurrently on `workers` threads (CP-SAT releases the GIL while it solves).

    `time_limit_s` caps each distinct layer; with a `deadline` each also gets at most its
    share of the time left before it, and the greedy placement when that share is below
    MIN_SOLVE_S (the run's time limit bounds all layers together, not each).
    """
    keys = [_canonical_problem(p, method) for p in problems]
    distinct = list(dict.fromkeys(k[0] for k in keys))

    def run(cp: PlacementProblem, limit: float = time_limit_s) -> Placement:
        if method == "cpsat" and limit < MIN_SOLVE_S and not _filled_evenly(cp):
            return out_of_time(cp)
        return place_experts(cp, method, limit, seed, 1, deterministic)

    def share(rounds: int) -> float:
        return time_limit_s if deadline is None else min(time_limit_s,
                                                         deadline.left() / max(1, rounds))

    if workers > 1 and len(distinct) > 1:
        limit = share(-(-len(distinct) // workers))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            solved = dict(zip(distinct, pool.map(lambda cp: run(cp, limit), distinct),
                              strict=True))
    else:
        solved = {cp: run(cp, share(len(distinct) - i)) for i, cp in enumerate(distinct)}
    return [_relabel(solved[cp], perm) for cp, perm in keys]


def out_of_time(problem: PlacementProblem) -> Placement:
    """The greedy placement, for when the time limit leaves no time for CP-SAT: OPTIMAL if it
    meets the bound anyway, else FALLBACK with the reason in model_status."""
    t0 = time.perf_counter()
    lb = lower_bound(problem)
    pl = _finish(problem, greedy(problem), "greedy", "", lb, t0,
                 "CP-SAT not run: the time limit was spent")
    return pl if pl.status == "OPTIMAL" else dataclasses.replace(pl, status="FALLBACK")


def _canonical_problem(
    p: PlacementProblem, method: str
) -> tuple[PlacementProblem, tuple[int, ...]]:
    """Sort experts by load (ties by index) so layers that differ by a relabelling coincide.

    Round-robin depends on expert ids, and co-activation ties ids together, so those keep ids.
    """
    e = p.num_experts
    if p.coactivation is not None or method == "round_robin":
        return p, tuple(range(e))
    perm = tuple(sorted(range(e), key=lambda i: (-p.loads[i], i)))  # canonical i -> original
    loads = tuple(p.loads[i] for i in perm)
    return PlacementProblem(
        loads, p.num_gpus, p.gpus_per_node, p.slots_per_gpu, p.spare_slots
    ), perm


def _relabel(pl: Placement, perm: tuple[int, ...]) -> Placement:
    if list(perm) == list(range(len(perm))):
        return pl
    experts = tuple(tuple(sorted(perm[e] for e in ex)) for ex in pl.gpu_experts)
    return dataclasses.replace(pl, gpu_experts=experts)
