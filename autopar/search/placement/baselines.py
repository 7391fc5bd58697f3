"""Placements without a solver: the round-robin, greedy and node-local baselines, and the
node-aware LPT over the integer instance.

Why: the baselines are what frameworks do today (the benchmark's reference, and greedy is the
floor CP-SAT must beat); the LPT respects the span patterns, so it is the CP-SAT models' hint,
upper bound and fallback.
"""

from __future__ import annotations

import math

from .core import _Core, _order
from .problem import PlacementProblem, _auto_stop, _water_fill


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
