"""Improving an assignment in place: pairwise swap descent, and LNS over CP-SAT windows of a
few GPUs.

Why: the hierarchical model fixes counts per group before it places GPUs, which leaves
granularity losses across groups; cheap exchanges and small re-solves win them back. The swap
descent also polishes the start candidates before the models run.
"""

from __future__ import annotations

import time

import numpy as np
from ortools.sat.python import cp_model

from .core import _Core, _params

LNS_WINDOW = 4  # GPUs re-solved together when repairing a hierarchical placement
WINDOW_TIME_S = 0.01  # per LNS window: an improving swap is found fast, proofs are not needed


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
    """Cheap polish before the CP-SAT windows (and the anytime placement itself): exchange up
    to two items each way between the hottest GPU and another while that lowers the pair's
    max (same pinning as _window). Vectorised over all partner subsets, held in one padded
    GPU x subset table whose rows are rebuilt only for the two GPUs an exchange changes; the
    best few candidates are checked for validity."""
    a = core.a
    n_gpu = len(assign)
    load = np.array([sum(a[e] for e in ex) for ex in assign], dtype=np.int64)
    most = max([core.cap] + [len(ex) for ex in assign])
    width = 1 + most + most * (most - 1) // 2  # subsets of at most two of `most` items
    table = np.full((n_gpu, width), _NO_SUBSET, dtype=np.int64)  # subset sums, padded
    idx: list[list[tuple[int, ...]]] = [[] for _ in range(n_gpu)]

    def fill(g: int) -> None:
        pairs = _subsets(assign[g], a)
        table[g, :] = _NO_SUBSET
        table[g, : len(pairs)] = [t[0] for t in pairs]
        idx[g] = [t[1] for t in pairs]

    for g in range(n_gpu):
        fill(g)
    gid = np.repeat(np.arange(n_gpu), width)
    pos = np.tile(np.arange(width), n_gpu)
    sg = table.reshape(-1)  # a view: refills show through
    for _ in range(20 * n_gpu):
        h = int(np.argmax(load))
        hs, hidx = table[h, : len(idx[h])], idx[h]
        gap = load[h] - load[gid]
        live = (gap > 1) & (gid != h)
        if not live.any():
            return
        k = np.searchsorted(hs, sg + gap / 2)
        cand = np.clip(k[:, None] + np.arange(-3, 3)[None, :], 0, len(hs) - 1)
        delta = hs[cand] - sg[:, None]
        hi = np.maximum(load[h] - delta, load[gid][:, None] + delta)
        ok = live[:, None] & (delta > 0) & (delta < gap[:, None])
        hi = np.where(ok & (hi < load[h]), hi, _NO_MOVE).reshape(-1)
        done = False
        for f in _first(hi, 64):
            row, col = divmod(int(f), cand.shape[1])
            g = int(gid[row])
            jh, jg = hidx[int(cand[row, col])], idx[g][int(pos[row])]
            if _exchange_ok(core, assign, group_of, h, g, jh, jg):
                give = [assign[h][i] for i in jh]
                take = [assign[g][j] for j in jg]
                assign[h] = [e for i, e in enumerate(assign[h]) if i not in jh] + take
                assign[g] = [e for j, e in enumerate(assign[g]) if j not in jg] + give
                for x in (h, g):
                    load[x] = sum(a[e] for e in assign[x])
                    fill(x)
                done = True
                break
        if not done:
            return


_NO_SUBSET = 1 << 60  # padding of the subset table: never a positive exchange
_NO_MOVE = np.iinfo(np.int64).max


def _first(hi: np.ndarray, n: int) -> np.ndarray:
    """Positions of the n smallest entries below _NO_MOVE, smallest first, ties by position
    (what a stable argsort gives), without sorting the whole table."""
    live = np.flatnonzero(hi < _NO_MOVE)
    vals = hi[live]
    if len(live) > n:
        keep = vals <= np.partition(vals, n - 1)[n - 1]
        live, vals = live[keep], vals[keep]
    return live[np.argsort(vals, kind="stable")][:n]


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
