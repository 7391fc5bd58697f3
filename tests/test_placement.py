"""Expert placement: hand-solved optima, the routing rule, feasibility, and CP-SAT vs baselines."""

from __future__ import annotations

import numpy as np
import pytest

from autopar.errors import InfeasibleError
from autopar.search.placement import (
    PlacementProblem,
    check_placement,
    greedy,
    lower_bound,
    place_experts,
    place_layers,
    round_robin,
    route_loads,
)
from autopar.spec.loads import zipf_profile

FAST = {"time_limit_s": 0.3, "seed": 0, "workers": 1, "deterministic": True}


def zipf_loads(e: int, s: float, seed: int = 0, total: float = 1e5) -> tuple[float, ...]:
    return tuple(float(v) for v in zipf_profile(1, e, s, seed).per_layer(total)[0])


def test_tiny_case_without_spare_slots_is_solved_exactly():
    # 4 experts, 2 GPUs, 2 slots each: {8, 2} | {4, 2} is optimal, max 10 = 8 + smallest.
    p = PlacementProblem(
        (8.0, 4.0, 2.0, 2.0), num_gpus=2, gpus_per_node=2, slots_per_gpu=2, spare_slots=0
    )
    pl = place_experts(p, **FAST)
    assert pl.objective == pytest.approx(10.0)
    assert pl.best_bound == pytest.approx(10.0)
    assert pl.status == "OPTIMAL" and pl.gap == pytest.approx(0.0)
    assert pl.max_over_mean == pytest.approx(10.0 / 8.0)


def test_tiny_case_with_a_spare_slot_splits_the_hot_expert():
    # Expert 0 (9 tokens) on both GPUs carries 4.5 on each; replicating one 1-token expert
    # makes both GPUs 4.5 + 1 + 0.5 = 6 = total / G, the optimum.
    p = PlacementProblem(
        (9.0, 1.0, 1.0, 1.0), num_gpus=2, gpus_per_node=2, slots_per_gpu=3, spare_slots=1
    )
    pl = place_experts(p, **FAST)
    assert pl.gpu_load == pytest.approx((6.0, 6.0))
    assert pl.status == "OPTIMAL" and pl.replicas[0] == 2
    assert sum(pl.replicas) == 6


def test_routing_rule_prefers_own_node_and_splits_evenly():
    # 4 GPUs in 2 nodes. Expert 0: two copies on node 0, one on node 1 -> node 0's half (4)
    # splits 2 + 2, node 1's half (4) stays on GPU 2. Expert 1 only on GPU 2: node 0's half
    # crosses. Expert 2 only on GPU 3: node 0's half crosses.
    p = PlacementProblem((8.0, 4.0, 2.0), num_gpus=4, gpus_per_node=2, slots_per_gpu=2)
    loads, cross = route_loads(p, [[0], [0], [0, 1], [2]])
    assert loads.tolist() == pytest.approx([2.0, 2.0, 8.0, 2.0])
    assert cross == pytest.approx(3.0)
    # 3 nodes of 1 GPU, replicas on nodes 0 and 1: node 2's third splits over both replicas.
    q = PlacementProblem((9.0,), num_gpus=3, gpus_per_node=1, slots_per_gpu=1)
    loads, cross = route_loads(q, [[0], [0], []])
    assert loads.tolist() == pytest.approx([4.5, 4.5, 0.0])
    assert cross == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("e", "g", "gpn", "spare"),
    [(63, 3, 8, 1), (63, 3, 8, 0), (10, 3, 2, 1), (256, 24, 8, 0), (40, 6, 4, 2), (7, 7, 2, 0)],
)
def test_every_expert_placed_within_slots(e, g, gpn, spare):
    need = -(-e // g)
    p = PlacementProblem(zipf_loads(e, 1.0), g, gpn, need + spare, spare)
    for method in ("cpsat", "greedy", "round_robin", "node_local"):
        pl = place_experts(p, method, **FAST)
        check_placement(p, pl.gpu_experts)
        assert all(len(ex) <= need + spare for ex in pl.gpu_experts)
        assert all(len(set(ex)) == len(ex) for ex in pl.gpu_experts)
        assert sum(pl.gpu_load) == pytest.approx(sum(p.loads))
        assert pl.objective >= pl.best_bound * (1 - 1e-9)
        assert len(pl.phy2log) == g * (need + spare)
        assert all(pl.log2phy[x] for x in range(e))
        assert sum(pl.logcnt) == sum(1 for v in pl.phy2log if v >= 0)
        for x, slots in enumerate(pl.log2phy):
            assert all(pl.phy2log[s] == x for s in slots)


@pytest.mark.parametrize(
    ("e", "g", "gpn", "s", "seed"),
    [(64, 8, 4, 0.6, 1), (64, 8, 4, 1.4, 2), (96, 12, 4, 1.0, 3), (128, 16, 8, 1.2, 4)],
)
def test_cpsat_no_worse_than_greedy(e, g, gpn, s, seed):
    p = PlacementProblem(zipf_loads(e, s, seed), g, gpn, -(-e // g) + 1, 1)
    cp = place_experts(p, "cpsat", **FAST)
    gr = place_experts(p, "greedy", **FAST)
    rr = place_experts(p, "round_robin", **FAST)
    assert cp.objective <= gr.objective * (1 + 1e-9)
    assert cp.objective <= rr.objective * (1 + 1e-9)
    assert cp.status in ("OPTIMAL", "FEASIBLE", "FALLBACK")
    assert 0.0 <= cp.gap < 1.0 and cp.best_bound <= cp.objective * (1 + 1e-9)


def test_replicas_spread_over_nodes_to_keep_tokens_local():
    # One very hot expert, 2 nodes: CP-SAT puts its replicas on both nodes.
    loads = (40.0,) + (4.0,) * 7
    p = PlacementProblem(loads, num_gpus=4, gpus_per_node=2, slots_per_gpu=4, spare_slots=2)
    cp = place_experts(p, **FAST)
    local = place_experts(p, "node_local", **FAST)
    nodes = {g // 2 for g, ex in enumerate(cp.gpu_experts) if 0 in ex}
    assert nodes == {0, 1}
    assert cp.cross_node_share < local.cross_node_share
    assert cp.max_over_mean <= local.max_over_mean + 1e-9


def test_hierarchical_headline_case():
    # 256 experts, 32 GPUs in 4 nodes, Zipf 1.0, one spare slot per GPU (the check).
    p = PlacementProblem(zipf_loads(256, 1.0, 0, 1e6), 32, 8, 10, 1)
    cp = place_experts(p, "cpsat", time_limit_s=1.0, seed=0, workers=1)
    local = place_experts(p, "node_local")
    check_placement(p, cp.gpu_experts)
    assert cp.max_over_mean <= 1.01
    assert cp.cross_node_share <= local.cross_node_share


def test_deterministic_mode_repeats():
    p = PlacementProblem(zipf_loads(48, 1.1, 5), 6, 3, 9, 1)
    a = place_experts(p, **FAST)
    b = place_experts(p, **FAST)
    assert a.gpu_experts == b.gpu_experts and a.objective == b.objective


def test_place_layers_reuses_relabelled_layers():
    prof = zipf_profile(4, 32, 1.0, 3).per_layer(1e4)
    probs = [PlacementProblem(tuple(map(float, row)), 4, 2, 9, 1) for row in prof]
    out = place_layers(probs, "cpsat", time_limit_s=0.3, deterministic=True, workers=2)
    assert len(out) == 4
    for p, pl in zip(probs, out, strict=True):
        check_placement(p, pl.gpu_experts)
        loads, cross = route_loads(p, pl.gpu_experts)
        assert loads.tolist() == pytest.approx(list(pl.gpu_load))
        assert cross / sum(p.loads) == pytest.approx(pl.cross_node_share)
    # all four layers are the same Zipf weights permuted: one solve, same quality
    assert len({round(pl.max_over_mean, 9) for pl in out}) == 1
    rr = place_layers(probs, "round_robin")
    assert rr[0].gpu_experts[0] == tuple(range(8))


def test_coactivation_reported():
    e = 12
    rng = np.random.default_rng(0)
    c = rng.integers(0, 5, size=(e, e)).astype(float)
    c = np.triu(c, 1) + np.triu(c, 1).T
    p = PlacementProblem(zipf_loads(e, 0.8), 4, 2, 4, 1, coactivation=tuple(map(tuple, c.tolist())))
    pl = place_experts(p, **FAST)
    check_placement(p, pl.gpu_experts)
    assert pl.coactivation_together is not None and 0.0 <= pl.coactivation_together <= 1.0


def test_bad_problems():
    with pytest.raises(InfeasibleError):
        PlacementProblem((1.0,) * 9, num_gpus=2, gpus_per_node=2, slots_per_gpu=4)
    with pytest.raises(InfeasibleError, match="spare"):
        PlacementProblem((1.0,) * 8, num_gpus=2, gpus_per_node=2, slots_per_gpu=5, spare_slots=2)
    with pytest.raises(ValueError):
        PlacementProblem((1.0, -1.0), num_gpus=1, gpus_per_node=1, slots_per_gpu=2)
    with pytest.raises(ValueError, match="method"):
        place_experts(PlacementProblem((1.0,), 1, 1, 1), method="magic")


def test_baselines_shapes():
    p = PlacementProblem(zipf_loads(10, 1.0), 3, 3, 5, 1)
    assert [len(x) for x in round_robin(p)] == [4, 3, 3]
    g = greedy(p)
    check_placement(p, g)
    assert sum(len(x) for x in g) == 15  # every spare slot used
    assert lower_bound(p) >= sum(p.loads) / 3


@pytest.mark.parametrize(("experts", "gpus", "per_node"), [(64, 16, 4), (48, 12, 8), (8, 8, 8)])
def test_equal_loads_filling_every_slot_skip_the_solver_and_are_optimal(experts, gpus, per_node):
    """Uniform routing with one slot per expert: contiguous blocks, proven optimal by the
    bound, and no other balanced placement does better on load or cross-node share."""
    import random

    pb = PlacementProblem(loads=(100.0,) * experts, num_gpus=gpus, gpus_per_node=per_node,
                          slots_per_gpu=experts // gpus, spare_slots=0)
    pl = place_experts(pb)
    assert pl.method == "round_robin" and pl.status == "OPTIMAL" and pl.gap == 0
    assert pl.max_over_mean == 1.0
    rng = random.Random(0)
    for _ in range(20):
        order = list(range(experts))
        rng.shuffle(order)
        k = experts // gpus
        other = [order[i * k:(i + 1) * k] for i in range(gpus)]
        loads, cross = route_loads(pb, other)
        assert float(loads.max()) == pytest.approx(pl.objective)
        assert cross / sum(pb.loads) == pytest.approx(pl.cross_node_share)
