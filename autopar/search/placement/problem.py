"""The placement problem of one MoE layer, a placement with its metrics, and the routing rule
that scores every placement (whatever produced it), with its lower bound.

Why: an MoE layer waits for its most loaded GPU, and tokens whose expert lives on another node
cross the slow inter-node links. Placement decides both.

Routing rule (evaluates every placement, whatever produced it): tokens originate evenly on the
G GPUs, so node n sends the share s_n / G of each expert's load. A token goes to a replica of
its expert on its own node when there is one (split evenly among that node's replicas), else it
is split evenly over all replicas of the expert. A slot of expert e on node n therefore carries
w_e * (p_n / c_en + U_e / R_e), with p_n = s_n / G, c_en the replicas of e on n, R_e all of
them and U_e the origin share of the nodes without one; U_e * w_e tokens cross nodes.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autopar.errors import InfeasibleError


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
