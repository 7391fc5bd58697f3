"""The `ep_slots` form of a mixed solve: one layout whose EP groups hold ranks of every type,
the experts of each MoE layer apportioned by each type's priced expert time under its memory
(`search.mixed_ep`); checked independently (`check.mixed_slots`); refused where the
framework's rules hold E / EP experts on every rank."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import yaml

import autopar
from autopar.cost.bundled import default_calibration
from autopar.search import SearchOptions
from autopar.search.bounds import _CostCache
from autopar.search.degrees import enumerate_strategies
from autopar.search.mixed_ep import (
    _states,
    assign_seqs,
    assign_slots,
    dense_time,
    ep_members,
    expert_time,
    replicas_of,
    runs_uneven_slots,
    type_problem,
)
from autopar.spec import parse_model
from autopar.spec.groups import paced_by_slowest, parse_groups

# two layers of 16 large experts: too big for one group's replica (no DP shares), too few
# layers for the pipeline over the groups to balance; EP 4 over both types pays
MOE = {"model": {"name": "wide-moe", "layers": 2, "hidden": 4096, "heads": 32, "kv_heads": 8,
                 "head_dim": 128, "ffn_hidden": 14336, "gated_mlp": True, "experts": 16,
                 "top_k": 2, "expert_ffn_hidden": 14336, "vocab": 32000, "dtype": "bf16"},
       "workload": {"kind": "training", "global_batch": 16, "seq_len": 4096}}
HW = {"name": "ha", "groups": [
    {"name": "h100", "gpu": {"type": "H100-SXM5-80GB"}, "gpus_per_node": 2,
     "intra_node": {"bandwidth_gbps": 450}},
    {"name": "a100", "gpu": {"type": "A100-SXM4-80GB"}, "gpus_per_node": 2,
     "intra_node": {"bandwidth_gbps": 300}}],
    "inter_node": {"bandwidth_gbps": 25}}


@pytest.fixture(scope="module")
def slots(tmp_path_factory):
    d = tmp_path_factory.mktemp("s")
    (d / "ha.yaml").write_text(yaml.safe_dump(HW))
    plan = autopar.solve(parse_model(MOE, "m.yaml"), str(d / "ha.yaml"), time_limit_s=30).data
    return plan, d / "ha.yaml"


def test_ep_across_types_gives_the_faster_type_more_experts_and_wins(slots):
    plan, _ = slots
    assert plan["mode"] == "ep_slots"
    x = plan["expert_slots"]
    assert x["h100"]["experts_per_rank"] > x["a100"]["experts_per_rank"] >= 1
    s = plan["strategy"]
    assert sum(v["experts_per_rank"] * v["ranks_per_ep_group"] for v in x.values()) == 16
    assert s["spare_slots"] > 0 and s["ep"] > 1
    step, c = plan["metrics"]["step_time_s"], plan["compared"]
    for k in ("slowest_type", "mixed_pipeline", "mixed_dp_shares"):
        assert step < c[k]["step_time_s"], k  # (a) and both mixed forms were found, slower
    for st in plan["stages"]:
        for mem in st["memory"].values():
            assert mem["total_bytes"] <= mem["capacity_bytes"]


def test_check_recomputes_an_ep_slots_plan(slots):
    plan, hw = slots
    assert autopar.check(plan) == []
    assert autopar.check(plan, hardware=str(hw)) == []
    bad = copy.deepcopy(plan)
    bad["expert_slots"]["h100"]["experts_per_rank"] -= 1  # an expert nobody holds
    paths = {x.path for x in autopar.check(bad) if x.severity == "error"}
    assert "expert_slots" in paths and any(".memory.h100." in p for p in paths)
    bad = copy.deepcopy(plan)
    bad["stages"][0]["busy_s"] /= 10
    assert any(x.check == "timing" for x in autopar.check(bad))
    errs = autopar.check(plan, framework="megatron")
    assert any(x.path == "expert_slots" and "no uneven expert slots" in x.message for x in errs)


def test_framework_rules_decide_uneven_slots():
    mixed = parse_groups(HW, "ha.yaml")
    p = autopar.api.make_problem(parse_model(MOE, "m.yaml"), mixed.groups[0].hw)
    q = replace(p, hw=paced_by_slowest(mixed, "bf16"),
                calib=default_calibration("A100-SXM4-80GB"))
    s = next(x for x in enumerate_strategies(q, SearchOptions()) if x.ep == 4)
    m = q.model
    runs = {f: runs_uneven_slots(f, s, 16, m.layers, 4096, m.heads)
            for f in ("any", "megatron", "torchtitan", "sglang", "vllm")}
    assert runs == {"any": True, "megatron": False, "torchtitan": False, "sglang": True,
                    "vllm": True}
    d = autopar.solve(parse_model(MOE, "m.yaml"), mixed, time_limit_s=30,
                      framework="megatron").data
    assert d["mode"] != "ep_slots"


def test_slots_follow_the_priced_expert_time_and_the_memory_cap():
    """The greedy's answer is the best of every split of the 16 experts over the two
    types' ranks (2 each), by the same priced times; a cap holds."""
    mixed = parse_groups(HW, "ha.yaml")
    p = autopar.api.make_problem(parse_model(MOE, "m.yaml"), mixed.groups[0].hw)
    q = replace(p, hw=paced_by_slowest(mixed, "bf16"),
                calib=default_calibration("A100-SXM4-80GB"))
    opts = SearchOptions()
    s = next(x for x in enumerate_strategies(q, opts) if x.ep == 4)
    base = _CostCache(q, opts).get(s)[0]
    members = ep_members(mixed, s)
    assert members == [2, 2]
    t = [[0.0] + [expert_time(type_problem(q, g), s, base, n) for n in range(1, 8)]
         for g in mixed.groups]
    best = min(range(1, 8), key=lambda h: max(t[0][h], t[1][8 - h]))
    got = assign_slots(q, mixed, s, base, members, [16, 16])
    assert got == [best, 8 - best] and best > 4  # the H100 ranks hold more
    assert assign_slots(q, mixed, s, base, members, [5, 16]) == [5, 3]


def test_cli_solves_checks_and_refuses_to_export_an_ep_slots_plan(slots, tmp_path):
    from click.testing import CliRunner

    from autopar.cli import main as cli

    _, hw = slots
    model = tmp_path / "m.yaml"
    model.write_text(yaml.safe_dump(MOE))
    out = tmp_path / "plan.json"
    res = CliRunner().invoke(cli, ["solve", "--hw", str(hw), "--model", str(model), "--out",
                                   str(out), "--time-limit", "30"])
    assert res.exit_code == 0, res.output
    assert "(ep_slots)" in res.output and "experts on each of its 2 ranks" in res.output
    res = CliRunner().invoke(cli, ["check", str(out), "--hw", str(hw)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["export", str(out), "--to", "megatron"])
    assert res.exit_code == 2 and "uneven expert slots" in res.output


def _serve(phase: str, batch: int) -> dict:
    return {**MOE, "workload": {"kind": "inference", "phase": phase, "batch": batch,
                                "input_len": 2048, "output_len": 256}}


@pytest.mark.parametrize("phase,batch,key", [("decode", 64, "tpot_s"), ("prefill", 8, "ttft_s")])
def test_one_inference_step_plans_on_a_mixed_file_and_checks(slots, phase, batch, key):
    """A decode (prefill) step of the batch is planned over the groups like a training step:
    the plan states its TPOT (TTFT) and tokens/s per GPU from its step, check recomputes them
    and catches a hand-edited latency; a target makes it the serving search instead."""
    _, hw = slots
    d = autopar.solve(parse_model(_serve(phase, batch), "m.yaml"), str(hw),
                      time_limit_s=20).data
    mt, w = d["metrics"], d["inputs"]["workload"]
    assert mt[key] == mt["step_time_s"] and d["compared"]["slowest_type"]["step_time_s"]
    tokens = batch * (1 if phase == "decode" else 2048)
    assert mt["tokens_per_s_per_gpu"] == pytest.approx(tokens / mt["step_time_s"] / 4)
    assert w["phase"] == phase and autopar.check(d, hardware=str(hw)) == []
    bad = copy.deepcopy(d)
    bad["metrics"][key] /= 2
    assert any(x.path == f"metrics.{key}" for x in autopar.check(bad, hardware=str(hw)))
    sh = d.get("sequence_shares")
    if phase == "decode":  # the faster type's replicas take more of the batch
        assert sh["h100"]["sequences_per_replica"] > sh["a100"]["sequences_per_replica"]
    if sh:
        assert sum(x["replicas"] * x["sequences_per_replica"] for x in sh.values()) == batch
        bad = copy.deepcopy(d)
        bad["sequence_shares"]["a100"]["sequences_per_replica"] += 1
        paths = {x.path for x in autopar.check(bad, hardware=str(hw))}
        assert "sequence_shares" in paths
    target = _serve(phase, batch)  # a target makes it the serving search (serve.mixed)
    target["workload"]["ttft_ms" if phase == "prefill" else "tpot_ms"] = 50.0
    served = autopar.solve(parse_model(target, "m.yaml"), str(hw), time_limit_s=10).data
    assert served["mode"] == "uniform" and "groups_apart" in served and "serving" in served


def test_sequence_shares_follow_the_priced_dense_time():
    """The greedy's shares are the best of every split of a decode batch over the two
    types' attention-DP replicas (2 each), by the same priced dense times."""
    mixed = parse_groups(HW, "ha.yaml")
    p = autopar.api.make_problem(parse_model(_serve("decode", 64), "m.yaml"),
                                 mixed.groups[0].hw)
    q = replace(p, hw=paced_by_slowest(mixed, "bf16"),
                calib=default_calibration("A100-SXM4-80GB"))
    s = next(x for x in enumerate_strategies(q, SearchOptions())
             if x.ep == 4 and x.tp == 1 and x.dp == 4 and x.pp == 1 and x.num_micro_batches == 1)
    base = _CostCache(q, SearchOptions()).get(s)[0]
    reps = replicas_of(mixed, s)
    assert reps == [2, 2] and s.micro_batch == 16
    states = [_states(q, base, n, 4) for n in (4, 4)]
    tps = [type_problem(q, g) for g in mixed.groups]
    t = [[0.0] + [dense_time(tp, s, st, b) for b in range(1, 32)]
         for tp, st in zip(tps, states, strict=True)]
    best = min(range(1, 31), key=lambda h: max(t[0][h], t[1][32 - h]))
    got = assign_seqs(q, mixed, s, base, [4, 4], reps)
    assert got is not None and max(t[0][got[0]], t[1][got[1]]) == max(t[0][best],
                                                                      t[1][32 - best])
    assert got[0] > 16 > got[1] and sum(got) == 32


def test_the_view_tools_refuse_a_mixed_plan_in_one_line(slots):
    plan, _ = slots
    for tool in (autopar.explain, autopar.trace):
        with pytest.raises(autopar.errors.InputError, match="mixed-group plan \\(ep_slots\\)"):
            tool(plan)
    from autopar.verify import read_layout

    with pytest.raises(autopar.errors.InputError, match="verify runs one-type plans"):
        read_layout(plan)
