"""The serving search on a mixed file (`serve.mixed`): the uniform plan (the one-type
serving search on the cluster paced by its slowest type, a plan every group runs at least
as fast) and, with disaggregation, a prefill pool on one group and a decode pool on the
other, every ordered pair searched and compared."""

from __future__ import annotations

import copy

import pytest
import yaml

import autopar
from autopar.errors import InputError
from autopar.spec import parse_model

MOE = {"model": {"name": "small-moe", "layers": 8, "hidden": 2048, "heads": 16,
                 "kv_heads": 4, "head_dim": 128, "ffn_hidden": 8192, "gated_mlp": True,
                 "experts": 8, "top_k": 2, "expert_ffn_hidden": 1024, "vocab": 32000,
                 "dtype": "bf16"},
       "workload": {"kind": "inference", "phase": "both", "input_len": 1024,
                    "output_len": 128, "ttft_ms": 1000.0, "tpot_ms": 40.0}}
HW = {"name": "ha", "groups": [
    {"name": "h100", "gpu": {"type": "H100-SXM5-80GB"}, "gpus_per_node": 2,
     "intra_node": {"bandwidth_gbps": 450}},
    {"name": "a100", "gpu": {"type": "A100-SXM4-80GB"}, "gpus_per_node": 2,
     "intra_node": {"bandwidth_gbps": 300}}],
    "inter_node": {"bandwidth_gbps": 50}}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    d = tmp_path_factory.mktemp("ms")
    (d / "ha.yaml").write_text(yaml.safe_dump(HW))
    plan = autopar.solve(parse_model(MOE, "m.yaml"), str(d / "ha.yaml"), time_limit_s=20,
                         disaggregate=True).data
    return plan, d / "ha.yaml"


def test_the_uniform_serving_plan_is_paced_by_the_slowest_type_and_checks(served):
    plan, hw = served
    assert plan["mode"] == "uniform" and plan["uniform_on"]["paced_by"] == "A100-SXM4-80GB"
    assert plan["inputs"]["hardware"]["gpu"]["name"] == "A100-SXM4-80GB"
    assert plan["strategy"]["num_gpus"] == 4
    pt = plan["serving"]["point"]
    assert pt["ttft_s"] * 1e3 <= 1000.0 and pt["tpot_s"] * 1e3 <= 40.0
    assert autopar.check(plan) == [] and autopar.check(plan, hardware=str(hw)) == []
    bad = copy.deepcopy(plan)
    bad["uniform_on"]["groups"][1]["count"] = 1  # the groups no longer hold its GPUs
    assert any(x.path == "uniform_on.groups" for x in autopar.check(bad))


def test_pools_by_type_search_both_orders_and_compare_per_gpu(served):
    plan, _ = served
    x = plan["pools_by_type"]
    assert [(r["prefill_group"], r["decode_group"]) for r in x["pairs"]] == [
        ("h100", "a100"), ("a100", "h100")]
    found = [r for r in x["pairs"] if "best" in r]
    assert found, x
    for r in found:  # each pool on its own type, the point meets the targets
        b = r["best"]
        assert b["ttft_s"] * 1e3 <= 1000.0 and b["tpot_s"] * 1e3 <= 40.0
        assert b["prefill_gpus"] <= 2 and b["decode_gpus"] <= 2
        assert r["tokens_per_s_per_gpu"] == pytest.approx(r["tokens_per_s"] / r["gpus"])
    top = max(found, key=lambda r: r["tokens_per_s_per_gpu"])
    assert x["best"] == f"{top['prefill_group']} -> {top['decode_group']}"
    a = plan["metrics"]["tokens_per_s_per_gpu"]
    assert x["uniform_tokens_per_s_per_gpu"] == a
    assert x["comparison"].startswith("per GPU, the pools beat the uniform plan"
                                      if top["tokens_per_s_per_gpu"] > a
                                      else "per GPU, the uniform plan beats the pools")


def test_disaggregation_needs_whole_requests(served):
    _, hw = served
    m = copy.deepcopy(MOE)
    m["workload"].update(phase="decode", batch=8, ttft_ms=None)
    with pytest.raises(InputError, match="phase both"):
        autopar.solve(parse_model(m, "m.yaml"), str(hw), time_limit_s=5, disaggregate=True)


def test_groups_apart_sum_their_own_searches_and_the_choice_is_the_most_served(served):
    """Each group's point is its one-type serving search's (the same solve on that group
    alone), the sum is the cluster's, and the choice names the answer serving the most;
    check recomputes the sums and the choice and catches an edited one."""
    plan, hw = served
    apart = plan["groups_apart"]
    spec = autopar.spec.files.load_any_hardware(str(hw))
    for r, g in zip(apart["groups"], spec.groups, strict=True):
        one = autopar.solve(parse_model(MOE, "m.yaml"), g.hw, time_limit_s=20).data
        assert r["tokens_per_s"] == pytest.approx(one["serving"]["point"]["tokens_per_s"])
        assert r["launch"] == one["launch"]  # what runs on that group, engine by engine
    total = sum(r["tokens_per_s"] for r in apart["groups"])
    assert apart["tokens_per_s"] == pytest.approx(total)
    assert sum(r["request_share"] for r in apart["groups"]) == pytest.approx(1.0)
    uniform = plan["metrics"]["tokens_per_s_per_gpu"] * 4
    pools = max(r["tokens_per_s"] for r in plan["pools_by_type"]["pairs"] if "best" in r)
    best = max([("uniform", uniform), ("groups_apart", total), ("pools_by_type", pools)],
               key=lambda x: x[1])[0]
    assert plan["serving_choice"].startswith(f"{best} serves the most")
    bad = copy.deepcopy(plan)
    bad["groups_apart"]["groups"][0]["point"]["tpot_s"] = 1.0  # misses the 40 ms target
    bad["serving_choice"] = "uniform serves the most" if best != "uniform" else "x"
    paths = {x.path for x in autopar.check(bad)}
    assert {"groups_apart.groups[0].point", "serving_choice"} <= paths


def test_a_target_only_the_faster_group_meets_names_that_group(served):
    """TPOT 0.4 ms: the H100s alone meet it (0.40 ms), every GPU paced by the A100 does not
    (0.46 ms): infeasible, and the answer says which group serves alone."""
    _, hw = served
    m = copy.deepcopy(MOE)
    m["workload"]["tpot_ms"] = 0.4
    with pytest.raises(autopar.errors.InfeasibleError) as e:
        autopar.solve(parse_model(m, "m.yaml"), str(hw), time_limit_s=10)
    assert "every GPU as A100" in e.value.reason
    assert "group h100 alone serves" in e.value.suggestion
    assert "a100 alone" not in e.value.suggestion


TYPES = ("H100-SXM5-80GB", "A100-SXM4-80GB", "L40S", "H200-SXM-141GB")


def _generated(seed: int, phase: str) -> tuple[object, dict]:
    """Random two-group clusters (types, node size, nodes) and a small MoE of random depth
    and experts, one inference workload of `phase`."""
    import random

    from autopar.spec.groups import parse_groups

    rng = random.Random(seed)
    gpn = rng.choice((2, 4))
    data = {"name": f"gen{seed}", "groups": [
        {"name": f"g{i}", "gpu": {"type": t}, "gpus_per_node": gpn,
         "nodes": rng.choice((1, 2)), "intra_node": {"bandwidth_gbps": 300}}
        for i, t in enumerate(rng.sample(TYPES, 2))], "inter_node": {"bandwidth_gbps": 25}}
    m = copy.deepcopy(MOE)
    m["model"].update(layers=rng.randint(2, 8), experts=rng.choice((8, 16)))
    w = {"kind": "inference", "phase": phase, "input_len": rng.choice((512, 2048)),
         "output_len": 128, "batch": rng.choice((16, 32, 64))}
    if phase == "both":
        w.update(tpot_ms=rng.choice((20.0, 50.0)), ttft_ms=2000.0)
        w.pop("batch")
    m["workload"] = w
    return parse_groups(data, "gen.yaml"), m


@pytest.mark.parametrize("seed", range(12))
def test_generated_inference_steps_on_mixed_files_check(seed):
    """Every plan a decode or prefill step gets on a random mixed cluster passes check and is
    never slower than (a); ep_slots plans with sequence shares cover the batch."""
    mixed, m = _generated(seed, ("decode", "prefill")[seed % 2])
    try:
        plan = autopar.solve(parse_model(m, "gen.yaml"), mixed, time_limit_s=20).data
    except autopar.errors.InfeasibleError:
        return
    assert autopar.check(plan) == [], plan.get("mode")
    slow = plan["compared"]["slowest_type"].get("step_time_s")
    assert slow is None or plan["metrics"]["step_time_s"] <= slow * (1 + 1e-9)
    key = "tpot_s" if m["workload"]["phase"] == "decode" else "ttft_s"
    assert plan["metrics"][key] == plan["metrics"]["step_time_s"]
    for x in plan.get("sequence_shares", {}).values():
        assert x["sequences_per_replica"] >= 1


@pytest.mark.parametrize("seed", range(3))
def test_generated_serving_searches_on_mixed_files_check(seed):
    """Whole requests on a random mixed cluster: the plan (or an infeasible answer) checks,
    and its choice is the answer serving the most."""
    mixed, m = _generated(100 + seed, "both")
    try:
        plan = autopar.solve(parse_model(m, "gen.yaml"), mixed, time_limit_s=20,
                             disaggregate=seed == 0).data
    except autopar.errors.InfeasibleError:
        return
    assert plan["mode"] == "uniform" and autopar.check(plan) == []
    assert plan["serving_choice"].split()[0] in ("uniform", "groups_apart", "pools_by_type")



def test_without_targets_the_uniform_plan_stands_alone(served):
    """No targets: the lowest request latency at the given concurrency, on every GPU; there
    are no rates to add up over the groups."""
    _, hw = served
    m = copy.deepcopy(MOE)
    m["workload"].update(ttft_ms=None, tpot_ms=None, batch=16)
    d = autopar.solve(parse_model(m, "m.yaml"), str(hw), time_limit_s=10).data
    assert d["mode"] == "uniform" and d["serving"]["point"]["concurrency"] == 16
    assert "groups_apart" not in d and "serving_choice" not in d
    assert autopar.check(d, hardware=str(hw)) == []
