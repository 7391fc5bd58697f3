"""The compact `gpus` section (schema 2.x): each part stated once with the GPU ids it applies
to, so a plan grows with TP, EP and PP rather than with the GPU count; it expands to exactly
the per-GPU records, `check` and `export` read it, and `check` still catches a GPU that no
pattern, or two patterns, give a part."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner
from conftest import json_paths
from hypothesis import given, settings
from hypothesis import strategies as st

from autopar.api import make_problem, solve
from autopar.check.verify import check_plan, format_findings
from autopar.cli import main
from autopar.plan import build_plan, gpu_record
from autopar.plan.report import summary
from autopar.schema.gpus import decode_ids, encode_ids, read_gpus, records_form
from autopar.search import SearchOptions, search
from autopar.search.experts import placements_for
from autopar.spec import ModelSpec, Workload, parse_hardware

SCHEMA = json.loads((Path(__file__).parents[1] / "autopar/schema/plan.schema.json").read_text())
MOE = ModelSpec("moe", 4, 256, 8, 4, 32, 512, True, 1000, experts=16, top_k=2,
                expert_ffn_hidden=128, dense_layers=(0,))
PINS = {"tp": 2, "pp": 2, "ep": 8, "etp": 1, "recompute": "none", "zero": 1,
        "virtual_stages": 1}


def cluster(nodes: int, per_node: int = 8) -> object:
    return parse_hardware({
        "name": f"test-{nodes}x{per_node}",
        "gpu": {"memory_gb": 80, "tflops": {"bf16": 400}, "hbm_tbps": 2.0},
        "nodes": nodes, "gpus_per_node": per_node,
        "intra_node": {"bandwidth_gbps": 200}, "inter_node": {"bandwidth_gbps": 25}}, "test")


def workload(gpus: int) -> Workload:
    """A batch DP does not divide (replicas of 2 and of 1 samples) and skewed expert loads, so
    GPUs of one TP rank differ in FLOPs and EP ranks in experts and load."""
    return Workload("training", gpus * 3 // 8 + 1, 128, expert_load="zipf:1.2:1")


def solved(nodes: int):
    """(problem, strategy, evaluation, placements, plan) of the MoE on `nodes` x 8 GPUs."""
    p = make_problem(MOE, cluster(nodes), workload(nodes * 8))
    opts = SearchOptions(pins=PINS, time_limit_s=1, seed=0, workers=1)
    r = search(p, opts)
    s = r.best.strategy
    placed = placements_for(p, s, r.placement, 0, 1)
    return p, s, r.best.evaluation, placed, build_plan(p, opts, r, placed)


@pytest.fixture(scope="module")
def large():
    return {nodes: solved(nodes) for nodes in (32, 64)}


@pytest.fixture(scope="module")
def small() -> dict:
    """16 GPUs on 2 nodes: TP 2, PP 2, EP 4, two dense-FLOPs shares."""
    plan = solve(MOE, cluster(2), Workload("training", 6, 64, expert_load="zipf:1.2:1"),
                 pins={**PINS, "ep": 4}, time_limit_s=1, seed=0)
    return json.loads(plan.to_json())


def test_plan_size_grows_far_less_than_the_gpu_count(large):
    sizes = {n: len(x[4].to_json()) for n, x in large.items()}
    full = {n: len(json.dumps(records_form(x[4].data), indent=1)) for n, x in large.items()}
    assert full[64] > 1.9 * full[32]  # one record per GPU: linear in the GPUs
    assert sizes[64] < 1.15 * sizes[32], sizes  # patterns: twice the GPUs, same patterns
    assert sizes[64] < full[64] / 20
    g = large[64][4].data["gpus"]
    assert g["num_gpus"] == 512 and large[64][4].data["schema_version"] == "2.0"
    # TP 2 x PP 2 x two batch shares; PP 2 x EP 8; memory per stage
    assert (len(g["shards"]), len(g["experts"]), len(g["memory"])) == (8, 16, 2)


def test_patterns_expand_to_every_gpus_own_record(large):
    """The expansion gives each GPU what the per-GPU builder (the schema 1.0 record) computes
    from that GPU's own ranks: the grouping into patterns loses and confuses nothing."""
    p, s, ev, placed, plan = large[64]
    table = read_gpus(plan.data)
    assert not table.problems and [g["id"] for g in table.records] == list(range(512))
    for g in range(512):
        assert table.records[g] == gpu_record(p, s, ev, g, placed), g
    assert len({r["flops_per_step"] for r in table.records}) > 2  # shares and loads differ
    assert plan.data["flops"]["per_gpu"] == [r["flops_per_step"] for r in table.records]


def test_compact_and_record_forms_pass_check_and_the_schema(large):
    plan = json.loads(large[32][4].to_json())
    old = records_form(plan)
    assert old["schema_version"] == "1.0" and len(old["gpus"]) == 256
    for doc in (plan, old):
        jsonschema.validate(doc, SCHEMA)
        found = check_plan(doc)
        assert not found, format_findings(found)
    wrong = copy.deepcopy(old)
    wrong["schema_version"] = "2.0"  # records under a patterns version
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong, SCHEMA)
    assert [x.check for x in check_plan(wrong)] == ["gpus"]
    wrong = copy.deepcopy(plan)
    wrong["schema_version"] = "1.0"  # patterns under a records version
    assert [x.check for x in check_plan(wrong)] == ["gpus"]
    assert "gpu" in summary(plan) and "256 GPUs" in summary(plan)


def drop_id(plan: dict) -> None:
    """A memory pattern's id list misses one GPU (5)."""
    pat = next(x for x in plan["gpus"]["memory"] if 5 in decode_ids(x["gpu_ids"], 16)[0])
    ids = [g for g in decode_ids(pat["gpu_ids"], 16)[0] if g != 5]
    pat["gpu_ids"] = encode_ids(ids)


def claim_twice(plan: dict) -> None:
    """Two shards patterns both list GPU 0."""
    pat = plan["gpus"]["shards"][1]
    pat["gpu_ids"] = encode_ids(decode_ids(pat["gpu_ids"], 16)[0] + [0])


def bad_triple(plan: dict) -> None:
    plan["gpus"]["experts"][0]["gpu_ids"][0] = [3, 1, 1]


def wrong_stage(plan: dict) -> None:
    """The first memory pattern says stage 1 for GPUs whose shards are stage 0's."""
    plan["gpus"]["memory"][0]["stage"] = 1


def shard_gap(plan: dict) -> None:
    qkv = next(c for x in plan["gpus"]["shards"] for c in x["components"]
               if c["name"] == "qkv")
    qkv["shard"]["end"] -= 1


def memory_figure(plan: dict) -> None:
    mem = plan["gpus"]["memory"][-1]["memory"]
    extra = 0.1 * mem["weights_bytes"]
    mem["weights_bytes"] += extra
    mem["total_bytes"] += extra
    mem["headroom_bytes"] -= extra


def missing_expert(plan: dict) -> None:
    plan["gpus"]["experts"][-1]["experts"][0]["experts"].pop()


BROKEN = [
    (drop_id, "gpus", "gpus.memory", "no memory pattern lists GPU 5"),
    (claim_twice, "gpus", "gpus.shards[1].gpu_ids", "GPU 0 is also in shards[0]"),
    (bad_triple, "gpus", "gpus.experts[0].gpu_ids", "first <= last"),
    (wrong_stage, "gpus", "gpus.memory[0].stage", "says stage 1"),
    (shard_gap, "shards", "gpus.shards[", "gap"),
    (memory_figure, "memory", "gpus.memory[", "weights_bytes"),
    (missing_expert, "experts", "gpus.experts[", "placed nowhere"),
]


@pytest.mark.parametrize("mutate,cls,path,mark", BROKEN, ids=[b[0].__name__ for b in BROKEN])
def test_check_catches_a_broken_compact_placement(small, mutate, cls, path, mark):
    """One defect in the compact form: errors of its own class only, at the pattern that
    states it (not at an expanded record's path, which is in no file)."""
    assert not check_plan(small)
    plan = copy.deepcopy(small)
    mutate(plan)
    found = check_plan(plan)
    assert {x.check for x in found} == {cls}, format_findings(found)
    assert all(x.severity == "error" for x in found)
    assert any(x.path.startswith(path) for x in found), format_findings(found)
    assert any(mark in x.message or mark in x.path for x in found), format_findings(found)
    assert not any(x.path.startswith("gpus[") for x in found), format_findings(found)


def test_cli_check_and_export_read_the_compact_form(small, tmp_path):
    runner = CliRunner()
    good = tmp_path / "plan.json"
    good.write_text(json.dumps(small))
    res = runner.invoke(main, ["check", str(good)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["export", str(good), "--to", "megatron"])  # a training plan
    assert res.exit_code == 0 and "--tensor-model-parallel-size 2" in res.output, res.output
    bad = copy.deepcopy(small)
    claim_twice(bad)
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    res = runner.invoke(main, ["check", str(tmp_path / "bad.json")])
    assert res.exit_code == 1 and "GPU 0 is also in shards[0]" in res.output
    res = runner.invoke(main, ["export", str(tmp_path / "bad.json"), "--to", "sglang"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "bad.json" in res.output and "gpus.shards[1].gpu_ids" in res.output
    assert len(res.output.strip().splitlines()) == 1


@given(st.lists(st.integers(0, 300), max_size=60))
def test_id_lists_round_trip(ids):
    runs = encode_ids(ids)
    if ids:
        assert decode_ids(runs, 301) == (sorted(set(ids)), None)
    else:
        assert runs == []


def test_id_lists_of_a_rank_are_one_run_per_stage():
    assert encode_ids(range(3, 1024, 8)) == [[3, 1019, 8]]
    assert encode_ids([*range(0, 64, 2), *range(128, 192, 2)]) == [[0, 62, 2], [128, 190, 2]]
    assert decode_ids([[0, 7, 2]], 8)[1]  # 7 is not reached from 0 in steps of 2
    assert decode_ids([[0, 8, 1]], 8)[1]  # past the last GPU
    assert decode_ids([[0, 3, 0]], 8)[1]
    assert decode_ids([[True, 3, 1]], 8)[1]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.data())
def test_hostile_edits_of_the_patterns_never_crash(small, data):
    """Any value of the gpus section replaced by a wrong type, a negative or a huge number:
    findings, no crash."""
    plan = copy.deepcopy(small)
    path = data.draw(st.sampled_from([p for p in json_paths(plan["gpus"]) if p]))
    parent = plan["gpus"]
    for k in path[:-1]:
        parent = parent[k]
    parent[path[-1]] = data.draw(st.sampled_from(["x", -1, None, [], {}, 10**12, [0, 10**12],
                                                  [[0, 10**12, 1]]]))
    found = check_plan(plan)
    assert all(x.severity in ("error", "warning") for x in found)
    json.dumps([x.to_dict() for x in found])
