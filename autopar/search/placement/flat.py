"""The flat CP-SAT model: one boolean per expert and GPU, solved in two phases.

Phase 1 minimises the most loaded GPU (symmetry among GPUs of a node and among equal nodes
broken by index); phase 2 keeps that and maximises the node spread of the replicas (and puts
co-activated experts on common nodes). The span-pattern constraints and the spread objective
are written once here and reused by the hierarchical model.
"""

from __future__ import annotations

import time

from ortools.sat.python import cp_model

from .core import _canonical, _Core, _order, _params, _pattern_ok, _Solved


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
