"""The deployment JSON: schema, self-consistency, and the bundled examples."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner
from conftest import PROBLEMS

from autopar.api import make_problem, solve
from autopar.cli import main
from autopar.plan import selfcheck as selfcheck
from autopar.schema.gpus import records_form

SCHEMA = json.loads((Path(__file__).parents[1] / "autopar/schema/plan.schema.json").read_text())
H100 = PROBLEMS / "hw" / "h100-8x.yaml"


@pytest.fixture(scope="module")
def seed_plan():
    return solve(PROBLEMS / "models" / "seed-moe.yaml", PROBLEMS / "hw" / "seed-3gpu.yaml")


@pytest.fixture(scope="module")
def mixtral_plans():
    return [solve(PROBLEMS / "models" / name, H100, time_limit_s=20)
            for name in ("mixtral-8x7b.yaml", "mixtral-8x7b-serve.yaml")]


def test_plans_validate_against_schema(seed_plan, mixtral_plans):
    for plan in [seed_plan, *mixtral_plans]:
        jsonschema.validate(json.loads(plan.to_json()), SCHEMA)


def test_schema_rejects_a_plan_missing_a_section(seed_plan):
    broken = copy.deepcopy(seed_plan.data)
    del broken["metrics"]
    with pytest.raises(jsonschema.ValidationError, match="metrics"):
        jsonschema.validate(broken, SCHEMA)


def test_every_gpu_within_capacity(seed_plan, mixtral_plans):
    for plan in [seed_plan, *mixtral_plans]:
        for g in plan.gpu_records():
            mem = g["memory"]
            assert 0 < mem["total_bytes"] <= mem["capacity_bytes"]
            parts = ("weights_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes",
                     "kv_cache_bytes", "workspace_bytes", "reserved_bytes")
            assert mem["total_bytes"] == pytest.approx(sum(mem[k] for k in parts))


def test_mixtral_training_and_inference_on_8xh100(mixtral_plans):
    train, serve = mixtral_plans
    for plan in mixtral_plans:
        s = plan.strategy
        assert s["tp"] * s["dp"] * s["pp"] == 8
        assert plan.solver["status"] == "OPTIMAL"
        assert all(v["passed"] for v in plan.data["validation"]), plan.data["validation"]
        assert plan.metrics["achieved_flops_per_s"] <= plan.metrics["peak_flops_per_s"]
    assert "tpot_s" in serve.metrics and serve.metrics["tokens_per_s_per_gpu"] > 0
    assert train.metrics["mfu"] < 1


def test_shards_cover_each_tensor_exactly_once(mixtral_plans):
    plan = mixtral_plans[0]
    assert selfcheck.shard_coverage(plan.data) == []
    broken = copy.deepcopy(plan.data)
    qkv = next(c for g in broken["gpus"]["shards"] for c in g["components"]
               if c["name"] == "qkv" and not c["shard"].get("replicated"))
    if broken["strategy"]["tp"] > 1:
        qkv["shard"]["end"] -= 1  # leave a gap
        assert selfcheck.shard_coverage(broken)


def test_shards_uneven_tp_split():
    from autopar.model.shards import split

    pieces = [split(10, 3, r) for r in range(3)]
    assert pieces == [(0, 4), (4, 7), (7, 10)]


def test_experts_all_placed_and_mutation_detected(seed_plan):
    plan = solve(PROBLEMS / "models" / "seed-moe.yaml", PROBLEMS / "hw" / "seed-3gpu.yaml",
                 pins={"dp": 3, "ep": 3, "pp": 1})
    model = plan.data["inputs"]["model"]
    assert selfcheck.check_experts(plan.data, model)["passed"]
    layer = plan.data["experts"]["layers"][0]
    assert sorted(sum(layer["gpu_experts"], [])) == list(range(63))
    assert [len(x) for x in layer["gpu_experts"]] == [21, 21, 21]
    broken = records_form(plan.data)
    broken["gpus"][1]["experts"][0]["experts"].pop()
    assert not selfcheck.check_experts(broken, model)["passed"]


def test_flops_and_throughput_checks_catch_tampering(seed_plan):
    p = make_problem(PROBLEMS / "models" / "seed-moe.yaml", PROBLEMS / "hw" / "seed-3gpu.yaml")
    assert selfcheck.check_flops(p, seed_plan.data)["passed"]
    broken = copy.deepcopy(seed_plan.data)
    broken["flops"]["total"] *= 1.01
    assert not selfcheck.check_flops(p, broken)["passed"]
    broken = copy.deepcopy(seed_plan.data)
    broken["metrics"]["achieved_flops_per_s"] = 3 * 400e12 * 1.1
    assert not selfcheck.check_throughput(broken)["passed"]


def test_cli_writes_atomically_and_prints_json(tmp_path):
    out = tmp_path / "sub" / "plan.json"
    args = ["solve", "--model", str(PROBLEMS / "models" / "seed-moe.yaml"), "--hw",
            str(PROBLEMS / "hw" / "seed-3gpu.yaml"), "--out", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["schema_version"] == "2.0"
    assert "validation all passed" in res.output
    assert not list(out.parent.glob(".*.tmp"))
    res = CliRunner().invoke(main, args[:-2] + ["--json", "--seed", "5", "--time-limit", "3"])
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    assert data["solver"]["seed"] == 5 and data["solver"]["time_limit_s"] == 3


def test_cli_pins_and_workload_flags(tmp_path):
    res = CliRunner().invoke(main, [
        "solve", "--model", str(PROBLEMS / "models" / "seed-moe.yaml"), "--hw",
        str(PROBLEMS / "hw" / "seed-3gpu.yaml"), "--json", "--tp", "1", "--pp", "1",
        "--ep", "3", "--kind", "inference", "--phase", "decode", "--batch", "48",
        "--input-len", "512", "--output-len", "128"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert (data["strategy"]["ep"], data["strategy"]["dp"]) == (3, 3)
    assert data["inputs"]["workload"]["phase"] == "decode"
    assert data["metrics"]["tpot_s"] > 0


def test_cli_infeasible_exit_code_and_advice():
    res = CliRunner().invoke(main, ["solve", "--model", str(PROBLEMS / "models" / "gpt3-175b.yaml"),
                                    "--hw", str(PROBLEMS / "hw" / "seed-3gpu.yaml"),
                                    "--time-limit", "2"])
    assert res.exit_code == 3
    assert "infeasible" in res.output and "would fit with" in res.output


def test_every_cost_figure_names_its_formula(seed_plan):
    names = set(seed_plan.data["formulas"])
    used = {c["formula"] for g in seed_plan.gpu_records() for c in g["components"]}
    used |= {c["formula"] for c in seed_plan.data["communication"]}
    used |= {seed_plan.data["timing"]["formula"], seed_plan.data["metrics"]["formula"],
             seed_plan.data["flops"]["formula"]}
    assert used <= names
    doc = (Path(__file__).parents[1] / "docs" / "cost-model.md").read_text()
    for name in names:
        assert f"`{name}`" in doc, name
