"""The `uniform` form of a mixed solve: one layout over every GPU, priced at the slowest
type and the slowest links (`spec.groups.paced_by_slowest`), is itself a plan on the mixed
cluster, so a mixed plan is never slower than it; where it is the fastest it is the plan,
and `autopar check` verifies it from its echo and against the mixed file."""

from __future__ import annotations

import copy

import pytest
import yaml

import autopar
from autopar.spec import parse_model
from autopar.spec.groups import paced_by_slowest, parse_groups

TINY = {"model": {"name": "tiny", "layers": 8, "hidden": 2048, "heads": 16, "kv_heads": 4,
                  "head_dim": 128, "ffn_hidden": 8192, "gated_mlp": True, "vocab": 32000,
                  "dtype": "bf16"},
        "workload": {"kind": "training", "global_batch": 16, "seq_len": 2048}}
# two A100-40GB beside two A100-80GB, one GPU a node: one speed, so the pipeline over the
# groups only adds bubbles and sends; Megatron runs no uneven DP shares, so one layout over
# all four GPUs, paced by the smaller memory, is the fastest plan Megatron can run
PAIR = {"name": "pair", "groups": [
    {"name": "small", "gpu": {"type": "A100-SXM4-40GB"}, "gpus_per_node": 1, "nodes": 2,
     "intra_node": {"bandwidth_gbps": 300}},
    {"name": "big", "gpu": {"type": "A100-SXM4-80GB"}, "gpus_per_node": 1, "nodes": 2,
     "intra_node": {"bandwidth_gbps": 300}}],
    "inter_node": {"bandwidth_gbps": 25}}
MODEL = {"model": dict(TINY["model"], layers=5),
         "workload": dict(TINY["workload"], global_batch=32)}


def test_paced_spec_takes_the_slowest_of_every_field():
    mixed = parse_groups({"name": "x", "groups": [
        {"name": "l40s", "gpu": {"type": "L40S"}, "gpus_per_node": 4,
         "intra_node": {"bandwidth_gbps": 450}},
        {"name": "a100", "gpu": {"type": "A100-SXM4-40GB"}, "gpus_per_node": 4, "nodes": 2,
         "intra_node": {"bandwidth_gbps": 300}, "reserved_gb": 3}],
        "inter_node": {"bandwidth_gbps": 25}}, "x.yaml")
    hw = paced_by_slowest(mixed, "bf16")
    a, b = (g.hw for g in mixed.groups)
    assert hw.num_gpus == 12 and hw.gpu.name == "A100-SXM4-40GB"  # the slower in bf16
    assert hw.gpu.hbm_bytes_per_s == a.gpu.hbm_bytes_per_s < b.gpu.hbm_bytes_per_s  # L40S
    assert hw.gpu.memory_bytes == b.gpu.memory_bytes < a.gpu.memory_bytes
    assert hw.intra.bytes_per_s == b.intra.bytes_per_s < a.intra.bytes_per_s
    assert hw.reserved_bytes == b.reserved_bytes > a.reserved_bytes


@pytest.fixture(scope="module")
def uniform(tmp_path_factory):
    d = tmp_path_factory.mktemp("u")
    (d / "pair.yaml").write_text(yaml.safe_dump(PAIR))
    plan = autopar.solve(parse_model(MODEL, "m.yaml"), str(d / "pair.yaml"),
                         time_limit_s=20, framework="megatron").data
    return plan, d / "pair.yaml"


def test_the_uniform_form_wins_here_and_checks(uniform):
    plan, hw = uniform
    assert plan["mode"] == "uniform" and "mixed_groups" not in plan
    c = plan["compared"]
    step = plan["metrics"]["step_time_s"]
    assert step == pytest.approx(c["slowest_type"]["step_time_s"], rel=1e-12)
    assert step < c["mixed_pipeline"]["step_time_s"]  # found, and slower
    assert c["mixed_dp_shares"]["why"] == "not searched"  # Megatron runs no uneven shares
    u = plan["uniform_on"]
    assert u["paced_by"] == "A100-SXM4-40GB" and [g["count"] for g in u["groups"]] == [2, 2]
    assert plan["strategy"]["num_gpus"] == 4
    assert plan["inputs"]["hardware"]["gpu"]["memory_bytes"] == 40e9
    assert autopar.check(plan) == []
    assert autopar.check(plan, hardware=str(hw)) == []


def test_check_against_the_mixed_file_catches_an_optimistic_echo(uniform):
    plan, hw = uniform
    bad = copy.deepcopy(plan)
    bad["inputs"]["hardware"]["gpu"]["memory_bytes"] *= 2  # more than the A100-40GB holds
    errs = [x for x in autopar.check(bad, hardware=str(hw)) if x.severity == "error"]
    assert any(x.path == "uniform_on.groups.small" and "hold less" in x.message for x in errs)
    bad = copy.deepcopy(plan)
    bad["uniform_on"]["groups"][1]["count"] = 4
    assert any(x.path == "uniform_on.groups" for x in autopar.check(bad))


def test_the_cli_summary_says_what_paces_it(uniform, tmp_path):
    from click.testing import CliRunner

    from autopar.cli import main as cli

    _, hw = uniform
    model = tmp_path / "m.yaml"
    model.write_text(yaml.safe_dump(MODEL))
    out = tmp_path / "plan.json"
    res = CliRunner().invoke(cli, ["solve", "--hw", str(hw), "--model", str(model), "--out",
                                   str(out), "--time-limit", "20", "--framework", "megatron"])
    assert res.exit_code == 0, res.output
    assert "paced by A100-SXM4-40GB" in res.output and "vs mixed_pipeline" in res.output
    res = CliRunner().invoke(cli, ["check", str(out), "--hw", str(hw)])
    assert res.exit_code == 0, res.output
