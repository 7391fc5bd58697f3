"""Search machinery behind the speed work: bounds are valid, the vectorized DP is exact,
a time limit returns the best plan with its gap, and progress is reported."""

from __future__ import annotations

import itertools
import random

import pytest
from conftest import PROBLEMS
from test_search import random_case

from autopar.api import make_problem, solve
from autopar.cost.evaluate import evaluate
from autopar.search import SearchOptions, enumerate_strategies, quick_bound, search
from autopar.search.bounds import _CostCache
from autopar.search.stages import StageInputs, dp_partition


@pytest.mark.parametrize("seed", range(12))
def test_quick_bound_never_exceeds_any_cut(seed):
    """The cheap bound that orders and prunes candidates must hold for every stage cut."""
    p, opts = random_case(random.Random(seed))
    cache = _CostCache(p, opts)
    L = p.model.layers
    for s in enumerate_strategies(p, opts)[:40]:
        moe, costs = cache.get(s)
        lb, mem_lb = quick_bound(p, s, cache)
        for inner in itertools.combinations(range(1, L), s.pp - 1):
            ev = evaluate(p, s, [0, *inner, L], moe, costs)
            assert lb <= ev.step_time * (1 + 1e-9)
            assert mem_lb <= ev.max_memory * (1 + 1e-9)


def _brute_min_max(x: StageInputs) -> float:
    best = float("inf")
    for inner in itertools.combinations(range(1, x.layers), x.stages - 1):
        b = [0, *inner, x.layers]
        ok, worst = True, 0.0
        for k in range(x.stages):
            mem = sum(x.mem[k][b[k]:b[k + 1]]) + x.c_mem[k]
            if mem > x.capacity:
                ok = False
                break
            worst = max(worst, sum(x.busy[b[k]:b[k + 1]]) + x.c_busy[k])
        if ok:
            best = min(best, worst)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_vectorized_dp_equals_brute_force(seed):
    rng = random.Random(seed)
    L, P = rng.randint(1, 9), rng.randint(1, 5)
    x = StageInputs(
        layers=L, stages=P, micro_batches=rng.randint(1, 8), capacity=rng.uniform(3, 12),
        busy=[rng.uniform(0.5, 2) for _ in range(L)], bwd=[0.0] * L, dp=[0.0] * L,
        opt=[0.0] * L, mem=[[rng.uniform(0.5, 3) for _ in range(L)] for _ in range(P)],
        c_busy=[rng.uniform(0, 1) for _ in range(P)], c_bwd=[0.0] * P, c_dp=[0.0] * P,
        c_opt=[0.0] * P, c_mem=[rng.uniform(0, 2) for _ in range(P)])
    bounds, value = dp_partition(x)
    brute = _brute_min_max(x) if P <= L else float("inf")
    if bounds is None:
        assert brute == float("inf")
    else:
        assert value == pytest.approx(brute)
        assert bounds[0] == 0 and bounds[-1] == L and all(
            a < b for a, b in zip(bounds, bounds[1:], strict=False))


def test_time_limit_returns_best_plan_with_gap():
    p = make_problem(PROBLEMS / "models" / "mixtral-8x7b.yaml", PROBLEMS / "hw" / "h100-8x.yaml")
    r = search(p, SearchOptions(time_limit_s=0.0))
    assert r.best is not None and r.status in ("OPTIMAL", "FEASIBLE")
    assert r.best_bound <= r.objective * (1 + 1e-9)
    full = search(p, SearchOptions(time_limit_s=30))
    assert full.status == "OPTIMAL"
    assert full.objective <= r.objective * (1 + 1e-9)
    assert r.best_bound <= full.objective * (1 + 1e-9)  # the bound was a true bound


def test_progress_reports_candidates_best_and_bound():
    lines = []
    solve(PROBLEMS / "models" / "seed-moe.yaml", PROBLEMS / "hw" / "seed-3gpu.yaml",
          progress=lines.append)
    found = [x for x in lines if x.startswith("candidates")]
    assert found and all("best" in x and "bound" in x for x in found)
    assert any(x.startswith("bounding layouts") for x in lines)  # the phases are named too
    assert lines[-1].startswith("building the plan")
