"""The hierarchical CP-SAT model for large groups, and `_solve_core`, which picks it or the
flat one.

Why: above FLAT_MAX_BOOLS expert-GPU pairs the flat model gets too big (cpsat.md: keep models
small), so node (or 8-GPU block) counts are solved first, then the GPUs inside each group (by
`_solve_core` again, hence both live here), then improve.py repairs across groups.
"""

from __future__ import annotations

import time

from ortools.sat.python import cp_model

from .baselines import _lpt
from .core import _canonical, _Core, _order, _params, _peak, _Solved
from .flat import _solve_flat, _span_model, _spread_objective
from .improve import _lns

FLAT_MAX_BOOLS = 6000  # above this the model goes hierarchical (cpsat.md: keep models small)
BLOCK_GPUS = 8  # block size when one big node is split for the hierarchical model


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
