"""The anytime placement and the placement budget, and the EPLB port it is benchmarked against.

No timing is asserted here (benchmarks/expert_placement.py measures it): these are the
correctness targets — slots, no expert twice on a GPU, max/mean on the headline case, what a
budget of 0 returns, CP-SAT never worse than its start, bad budgets refused in one line.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import PROBLEMS

from autopar import api
from autopar.cli import main
from autopar.errors import InputError
from autopar.search.placement import (
    PlacementProblem,
    check_placement,
    eplb,
    place_experts,
    place_layers,
    route_loads,
)
from autopar.spec.loads import zipf_profile

TOKENS = 16384 * 8


def zipf(e: int, s: float, seed: int = 0) -> tuple[float, ...]:
    return tuple(float(v) for v in zipf_profile(1, e, s, seed).per_layer(TOKENS)[0])


def headline() -> PlacementProblem:
    """256 experts over 32 GPUs in 4 nodes, one spare slot per GPU, Zipf 1.0 (issue 15)."""
    return PlacementProblem(zipf(256, 1.0), 32, 8, 9, 1)


SHAPES = [(256, 32, 8, 1, 1.0), (256, 64, 8, 1, 1.4), (128, 64, 8, 2, 1.0), (64, 8, 4, 1, 0.6),
          (63, 3, 2, 1, 1.0), (256, 24, 8, 1, 1.0), (256, 32, 8, 0, 1.0), (16, 16, 4, 1, 1.4)]


@pytest.mark.parametrize("e,g,gpn,spare,s", SHAPES)
def test_anytime_respects_slots_and_never_puts_an_expert_twice_on_a_gpu(e, g, gpn, spare, s):
    p = PlacementProblem(zipf(e, s, 3), g, gpn, -(-e // g) + spare, spare)
    pl = place_experts(p, "anytime")
    check_placement(p, pl.gpu_experts)  # every expert placed, no GPU over its slots
    assert all(len(set(ex)) == len(ex) for ex in pl.gpu_experts)
    assert pl.method == "anytime" and pl.status in ("OPTIMAL", "HEURISTIC")
    loads, _ = route_loads(p, pl.gpu_experts)  # the one routing rule scores it
    assert pl.objective == pytest.approx(float(loads.max()))
    assert pl.objective <= place_experts(p, "greedy").objective * (1 + 1e-12)


def test_anytime_meets_the_headline_target_and_keeps_more_tokens_local_than_node_local():
    p = headline()
    pl = place_experts(p, "anytime")
    assert pl.max_over_mean <= 1.01
    assert pl.cross_node_share <= place_experts(p, "node_local").cross_node_share
    assert sum(len(ex) for ex in pl.gpu_experts) > p.num_experts  # the spare slots are used


def test_budget_zero_returns_the_anytime_placement():
    p = headline()
    first = place_experts(p, "anytime")
    for budget in (0, 0.001):
        pl = place_experts(p, "cpsat", budget_s=budget)
        assert pl.gpu_experts == first.gpu_experts and pl.method == "anytime"
        assert pl.model_status.startswith("CP-SAT not run")


@pytest.mark.parametrize("e,g,gpn,spare,s", SHAPES[:4])
def test_cpsat_with_a_budget_is_never_worse_than_the_anytime_placement(e, g, gpn, spare, s):
    p = PlacementProblem(zipf(e, s, 3), g, gpn, -(-e // g) + spare, spare)
    first = place_experts(p, "anytime")
    pl = place_experts(p, "cpsat", budget_s=0.3, deterministic=True)
    assert pl.objective <= first.objective * (1 + 1e-12)
    assert pl.best_bound <= pl.objective * (1 + 1e-12)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "soon"])
def test_bad_budget_is_one_line_input_error(bad):
    p = headline()
    for call in (lambda: place_experts(p, budget_s=bad), lambda: place_layers([p], budget_s=bad)):
        with pytest.raises(InputError) as exc:
            call()
        assert "placement_budget_s" in str(exc.value) and "\n" not in str(exc.value)


def test_cli_refuses_a_negative_placement_budget_in_one_line():
    r = CliRunner().invoke(main, ["solve", "--model", str(PROBLEMS / "models/seed-moe.yaml"),
                                  "--hw", str(PROBLEMS / "hw/seed-3gpu.yaml"),
                                  "--placement-budget", "-1", "--quiet"])
    assert r.exit_code == 2
    assert r.output.strip() == ("autopar: error: --placement-budget: must be a finite number "
                                "of seconds >= 0, got -1.0")


def test_place_layers_with_budget_zero_places_every_layer_with_the_anytime_path():
    probs = [PlacementProblem(zipf(64, 1.0, seed), 16, 8, 5, 1) for seed in range(3)]
    res = place_layers(probs, budget_s=0)
    assert [r.method for r in res] == ["anytime"] * 3
    for p, r in zip(probs, res, strict=True):
        check_placement(p, r.gpu_experts)
        # place_layers solves the layer with experts sorted by load, then relabels
        ranked = PlacementProblem(tuple(sorted(p.loads, reverse=True)), 16, 8, 5, 1)
        assert r.objective == pytest.approx(place_experts(ranked, "anytime").objective)


def test_a_plan_made_with_budget_zero_records_anytime_placements_and_checks(tmp_path):
    plan = api.solve(PROBLEMS / "models/mixtral-8x7b.yaml", PROBLEMS / "hw/h100-8x.yaml",
                     time_limit_s=5, placement_budget_s=0)
    layers = [x for x in plan.data["experts"]["layers"] if x["solver"]]
    assert layers and {x["solver"]["method"] for x in layers} <= {"anytime", "round_robin"}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan.data))
    assert not [f for f in api.check(path) if f.severity == "error"]


def test_eplb_port_follows_its_steps_on_a_hand_solved_case():
    """Loads 10, 1, 1, 1 on 2 GPUs of 3 slots: replicate_experts gives expert 0 three copies
    (10/3 each); balanced_packing puts them heaviest first into the lightest GPU (lowest
    index on ties): GPU 0 gets copies 1 and 3 of expert 0 (EPLB does not stop that), and
    expert 3 once GPU 1 is full."""
    p = PlacementProblem((10.0, 1.0, 1.0, 1.0), 2, 2, 3, 1)
    assign, policy = eplb(p, None)
    assert policy == "global"
    assert [sorted(x) for x in assign] == [[0, 0, 3], [0, 1, 2]]
    pl = place_experts(p, "anytime")
    assert all(len(set(ex)) == len(ex) for ex in pl.gpu_experts)


def test_eplb_hierarchical_keeps_replicas_on_one_node_and_fills_every_slot():
    p = headline()
    assign, policy = eplb(p, 8)
    assert policy == "hierarchical, 8 groups"
    assert sum(len(x) for x in assign) == p.num_gpus * p.slot_cap
    nodes: dict[int, set[int]] = {}
    for g, ex in enumerate(assign):
        for e in ex:
            nodes.setdefault(e, set()).add(p.node_of(g))
    assert len(nodes) == p.num_experts and all(len(n) == 1 for n in nodes.values())
    # groups of 32 contiguous experts, two per node: a node holds whole groups
    for n in range(4):
        held = {e // 32 for e, ns in nodes.items() if n in ns}
        assert len(held) == 2
    _, why = eplb(PlacementProblem(zipf(63, 1.0), 3, 2, 22, 1), 8)
    assert why.startswith("global")  # 63 experts do not split into 8 groups: EPLB goes global
