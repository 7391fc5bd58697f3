"""`autopar check`: sound plans pass, each class of defect is caught alone, and the seed
case's original deployment is caught on its degrees, its missing detail and its throughput."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
from click.testing import CliRunner
from conftest import PROBLEMS, json_paths
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from autopar.api import solve
from autopar.check.echo import inputs_from_echo
from autopar.check.verify import check_plan, format_findings
from autopar.cli import main
from autopar.errors import AutoparError, InputError
from autopar.model.components import model_flops_per_token
from autopar.schema.gpus import records_form
from autopar.spec import (
    MLASpec,
    ModelSpec,
    Workload,
    load_hardware,
    load_model,
    parse_hardware,
)

SEED_ORIGINAL = PROBLEMS / "seed-original" / "plan.json"


def hardware(nodes: int, per_node: int, memory_gb: float = 80) -> object:
    return parse_hardware({
        "name": f"test-{nodes}x{per_node}",
        "gpu": {"memory_gb": memory_gb, "tflops": {"bf16": 100}, "hbm_tbps": 1.0},
        "nodes": nodes, "gpus_per_node": per_node,
        "intra_node": {"bandwidth_gbps": 100}, "inter_node": {"bandwidth_gbps": 25}}, "test")


def errors(findings) -> list:
    return [x for x in findings if x.severity == "error"]


def classes(findings) -> set[str]:
    return {x.check for x in findings}


# --------------------------------------------------------------------------- property
@st.composite
def instances(draw):
    """A small model, a cluster of 1-8 GPUs, a workload and a few pinned options."""
    heads = draw(st.sampled_from([2, 4, 8]))
    head_dim = draw(st.sampled_from([8, 16, 32]))
    kind = draw(st.sampled_from(["dense", "moe", "moe", "mla"]))
    layers = draw(st.integers(2, 6))
    moe = kind != "dense"
    experts = draw(st.integers(2, 8)) if moe else 0
    mla = MLASpec(draw(st.sampled_from([0, 16])), 32, head_dim, 8, head_dim) \
        if kind == "mla" else None
    dense_layers = (0,) if moe and draw(st.booleans()) else ()
    model = ModelSpec(
        name=kind, layers=layers, hidden=heads * head_dim, heads=heads,
        kv_heads=draw(st.sampled_from([k for k in (1, 2, heads) if heads % k == 0])),
        head_dim=head_dim, ffn_hidden=draw(st.sampled_from([64, 96, 128])) if
        (not moe or dense_layers) else 0, gated_mlp=draw(st.booleans()),
        vocab=draw(st.integers(50, 600)), experts=experts,
        top_k=draw(st.integers(1, min(2, experts))) if moe else 0,
        expert_ffn_hidden=draw(st.sampled_from([32, 48, 64])) if moe else 0,
        shared_experts=draw(st.integers(0, 1)) if moe else 0,
        shared_expert_ffn_hidden=32 if moe else 0, dense_layers=dense_layers,
        tie_embeddings=draw(st.booleans()), dropout=draw(st.booleans()), mla=mla)
    nodes, per_node = draw(st.sampled_from([(1, 1), (1, 2), (1, 3), (1, 4), (2, 2), (2, 4)]))
    hw = hardware(nodes, per_node, draw(st.sampled_from([1.2, 2.0, 80.0])))
    load = draw(st.sampled_from(["uniform", "zipf:1.2:3"]))
    spare = draw(st.sampled_from([None, 1])) if moe else None
    if draw(st.booleans()):
        wl = Workload("training", draw(st.integers(1, 8)), draw(st.sampled_from([16, 32, 64])),
                      expert_load=load, spare_slots=spare)
    else:
        wl = Workload("inference", draw(st.integers(1, 8)),
                      phase=draw(st.sampled_from(["prefill", "decode"])),
                      input_len=draw(st.sampled_from([16, 48])),
                      output_len=draw(st.sampled_from([0, 16])), expert_load=load,
                      spare_slots=spare)
    n = nodes * per_node
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    options = {"tp": [d for d in divisors if per_node % d == 0],
               "pp": [d for d in divisors if d <= layers], "ep": [d for d in divisors
                                                                  if d <= max(experts, 1)],
               "recompute": ["none", "selective", "full"], "zero": [0, 1, 2, 3]}
    pins = {}
    for key, values in options.items():
        if draw(st.integers(0, 1 if key == "ep" and moe else 4)) == 0:
            pins[key] = draw(st.sampled_from(values))
    if pins.get("pp") == 2 and layers % 4 == 0 and wl.kind == "training" and draw(st.booleans()):
        pins["virtual_stages"] = 2  # interleaved 1F1B
    return model, hw, wl, pins


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(instances())
def test_every_plan_solve_emits_passes_check(instance):
    model, hw, wl, pins = instance
    try:
        plan = solve(model, hw, wl, pins=pins, time_limit_s=0.3, seed=0, workers=1)
    except AutoparError:  # infeasible, or pins the inputs do not allow
        assume(False)
        return
    data = json.loads(plan.to_json())  # what a reader of the file sees
    found = check_plan(data)
    assert not errors(found), f"{pins} {plan.strategy}\n{format_findings(found)}"


# --------------------------------------------------------------------------- mutations
@pytest.fixture(scope="module")
def moe_plan() -> dict:
    """MoE training with TP, EP (uneven load, a spare slot: replicas) and PP on 2 nodes."""
    m = ModelSpec("moe", 4, 128, 4, 2, 32, 256, True, 500, experts=6, top_k=2,
                  expert_ffn_hidden=64, dense_layers=(0,))
    w = Workload("training", 8, 64, expert_load="zipf:1.2:1", spare_slots=1)
    plan = solve(m, hardware(2, 2), w, pins={"tp": 2, "ep": 2, "pp": 2, "virtual_stages": 1},
                 time_limit_s=1, seed=0)
    return records_form(json.loads(plan.to_json()))  # one record per GPU (schema 1.0)


@pytest.fixture(scope="module")
def serve_plan() -> dict:
    """Dense GQA decode with TP (KV cache, a split KV head set) and DP."""
    m = ModelSpec("dense", 2, 128, 4, 2, 32, 256, True, 300)
    w = Workload("inference", 8, phase="decode", input_len=64, output_len=32)
    plan = solve(m, hardware(1, 4), w, pins={"tp": 2}, time_limit_s=1, seed=0)
    return records_form(json.loads(plan.to_json()))


def _first(plan: dict, name: str, rank: int) -> dict:
    return next(c for g in plan["gpus"] if g["ranks"]["tp_rank"] == rank
                for c in g["components"] if c["name"] == name)


def break_degrees(p):
    p["strategy"]["dp"] *= 2


def break_edp(p):
    p["strategy"]["edp"] += 1


def shard_gap(p):
    _first(p, "qkv", 0)["shard"]["end"] -= 1


def shard_overlap(p):
    _first(p, "out", 1)["shard"]["start"] -= 1


def missing_expert(p):
    """Drop an expert that has no replica in its EP group (the group is the stage here)."""
    g = next(g for g in p["gpus"] if g["experts"])
    entry = g["experts"][0]
    stage = [x for x in p["gpus"] if x["stage"] == g["stage"]]
    held = [e for x in stage for y in x["experts"] if y["layers"] == entry["layers"]
            for e in y["experts"]]
    entry["experts"].remove(next(e for e in entry["experts"] if held.count(e) == 1))


def memory_over_capacity(p):
    for g in p["gpus"]:
        g["memory"]["capacity_bytes"] = g["memory"]["total_bytes"] * 0.9
        g["memory"]["headroom_bytes"] = -0.1 * g["memory"]["total_bytes"]


def memory_figure(p):
    mem = p["gpus"][-1]["memory"]
    extra = 0.1 * mem["weights_bytes"]
    mem["weights_bytes"] += extra
    mem["total_bytes"] += extra
    mem["headroom_bytes"] -= extra


def flops_total(p):
    p["flops"]["total"] *= 1.05


def comm_bytes(p):
    c = next(c for c in p["communication"] if c["group"] == "tp")
    c["bytes_per_call"] *= 2
    c["bytes_per_step"] *= 2


def above_peak(p):
    """Every time shrunk and every rate raised together, so the plan stays self-consistent
    but runs at 1.5x the hardware's peak."""
    k = 1.5 / p["metrics"]["hfu"]
    mt = p["metrics"]
    for key in ("step_time_s", "ttft_s", "tpot_s"):
        if key in mt:
            mt[key] /= k
    for key in ("throughput_samples_per_s", "throughput_tokens_per_s", "achieved_flops_per_s",
                "tokens_per_s_per_gpu", "mfu", "hfu"):
        if key in mt:
            mt[key] *= k
    t = p["timing"]
    for d in [t, *t["per_stage"]]:
        for key in d:
            if key.endswith("_s"):
                d[key] /= k
    for c in p["communication"]:  # less of each collective exposed; the link times stand
        c["exposed_s"] /= k


def exposed_overstated(p):
    """A collective said to be more exposed than the timing counts it."""
    c = p["communication"][0]
    c["exposed_s"] = c["time_per_step_s"] * 0.5 + c["exposed_s"] * 0.5 + 1e-9
    c["exposed"] = True


def metrics_inconsistent(p):
    p["metrics"]["throughput_samples_per_s"] *= 1.1


def timing_altered(p):
    p["timing"]["step_time_s"] *= 0.8


MUTATIONS = [
    (break_degrees, "degrees", "strategy"),
    (break_edp, "degrees", "strategy.edp"),
    (shard_gap, "shards", "gap"),
    (shard_overlap, "shards", "overlap"),
    (missing_expert, "experts", "placed nowhere"),
    (memory_over_capacity, "memory", "over capacity"),
    (memory_figure, "memory", "weights_bytes"),
    (flops_total, "flops", "flops.total"),
    (comm_bytes, "communication", "bytes_per_call"),
    (above_peak, "throughput", "metrics.throughput_tokens_per_s"),
    (exposed_overstated, "communication", "add up"),
    (metrics_inconsistent, "metrics", "metrics.throughput_samples_per_s"),
    (timing_altered, "timing", "timing.step_time_s"),
]


@pytest.mark.parametrize("which", ["moe_plan", "serve_plan"])
def test_sound_plans_pass(which, request):
    found = check_plan(request.getfixturevalue(which))
    assert not found, format_findings(found)


@pytest.mark.parametrize("mutate,cls,mark", MUTATIONS, ids=[m[0].__name__ for m in MUTATIONS])
@pytest.mark.parametrize("which", ["moe_plan", "serve_plan"])
def test_one_defect_one_finding_class(which, mutate, cls, mark, request):
    plan = copy.deepcopy(request.getfixturevalue(which))
    if mutate is missing_expert and not any(g["experts"] for g in plan["gpus"]):
        pytest.skip("dense model")
    mutate(plan)
    found = check_plan(plan)
    assert classes(found) == {cls}, format_findings(found)
    assert all(x.severity == "error" for x in found)
    assert any(mark in x.path or mark in x.message for x in found), format_findings(found)


@pytest.mark.parametrize("section", ["schema_version", "inputs", "strategy", "gpus", "flops",
                                     "communication", "timing", "metrics", "validation",
                                     "solver"])
def test_missing_section_is_one_error_naming_it(moe_plan, section):
    plan = copy.deepcopy(moe_plan)
    del plan[section]
    found = check_plan(plan, model_file=None if section != "inputs" else _moe_model(moe_plan),
                       hw=None if section != "inputs" else hardware(2, 2))
    errs = errors(found)
    assert [(x.check, x.path) for x in errs] == [("schema", section)], format_findings(found)


def _moe_model(plan: dict) -> ModelSpec:
    return inputs_from_echo(plan["inputs"], "plan").model


def test_missing_nested_key_and_wrong_type_do_not_crash(moe_plan):
    plan = copy.deepcopy(moe_plan)
    del plan["gpus"][1]["memory"]["weights_bytes"]
    plan["strategy"]["tp"] = "2"
    plan["communication"][0].pop("stage", None)
    found = check_plan(plan)
    paths = {x.path for x in errors(found) if x.check == "schema"}
    assert {"gpus[1].memory.weights_bytes", "strategy.tp"} <= paths


def test_plan_checked_against_other_hardware(moe_plan):
    small = hardware(2, 2, memory_gb=1.0001)
    found = check_plan(moe_plan, hw=small)
    assert any(x.check == "inputs" and x.severity == "warning" for x in found)
    over = [x.path for x in errors(found) if x.check == "memory"]
    assert "gpus[0].memory.capacity_bytes" in over
    assert any(p.startswith("gpus[") and p.endswith("total_bytes") for p in over)


def test_echo_rebuilds_the_specs():
    mf = load_model(PROBLEMS / "models" / "seed-moe.yaml")
    hw = load_hardware(PROBLEMS / "hw" / "seed-3gpu.yaml")
    plan = json.loads(solve(mf, hw, time_limit_s=1).to_json())
    echo = inputs_from_echo(plan["inputs"], "plan")
    assert echo.model == mf.model and echo.workload == mf.workload
    assert echo.hardware.num_gpus == hw.num_gpus
    assert echo.hardware.gpu.memory_bytes == pytest.approx(hw.gpu.memory_bytes)
    assert echo.hardware.intra.bytes_per_s == pytest.approx(hw.intra.bytes_per_s)
    assert echo.hardware.intra.latency_s == pytest.approx(hw.intra.latency_s)
    assert check_plan(plan) == []


def test_echo_states_what_the_catalogue_adds_by_name():
    """The catalogue's SM count and measured GEMM / NVLink fractions are in the echo, so a
    plan rebuilt from it prices exactly as solved (not within check's tolerance)."""
    plan = json.loads(solve(PROBLEMS / "models/mixtral-8x7b.yaml", PROBLEMS / "hw/h100-8x.yaml",
                            time_limit_s=5, seed=0).to_json())
    hw = load_hardware(PROBLEMS / "hw/h100-8x.yaml")
    assert hw.gpu.sms and hw.gpu.gemm_eff and hw.gpu.nvlink_eff
    rebuilt = inputs_from_echo(plan["inputs"], "plan").hardware.gpu
    assert dataclasses.replace(rebuilt, sources=()) == dataclasses.replace(hw.gpu, sources=())
    stated = {"name": "x", "gpus_per_node": 8,
              "gpu": {"type": "H100-SXM5-80GB", "gemm_eff": 0.5, "nvlink_eff": 0.6}}
    assert parse_hardware(stated, "hw").gpu.gemm_eff == 0.5
    with pytest.raises(InputError, match="gemm_eff"):
        parse_hardware({**stated, "gpu": {"type": "H100-SXM5-80GB", "gemm_eff": 1.5}}, "hw")


# --------------------------------------------------------------------------- seed original
def test_seed_original_reports_its_three_problems():
    plan = json.loads(SEED_ORIGINAL.read_text())
    found = check_plan(plan, base_dir=SEED_ORIGINAL.parent)
    by = {x.check: [y for y in found if y.check == x.check] for x in found}
    # 1. degrees: EP=3 x TP=2 = 6 GPUs of experts on 3 GPUs; TP=2 does not divide 3 GPUs
    deg = {x.path: x for x in by["degrees"]}
    assert "6" in str(deg["parallel_strategy.ep"].claimed)
    assert "parallel_strategy.tp" in deg
    # 2. component-level detail missing: shards, layers, experts
    detail = " ".join(x.message for x in by["detail"])
    for word in ("QKV", "FC1", "FC2", "layers 3-23", "expert placement"):
        assert word in detail
    # 3. throughput unreachable, with the reachable figure: GPUs x peak / FLOPs per token
    mf = load_model(PROBLEMS / "models" / "seed-moe.yaml")
    hw = load_hardware(PROBLEMS / "hw" / "seed-3gpu.yaml")
    per_token = 3 * model_flops_per_token(mf.model, mf.workload.seq_len)
    reachable = hw.num_gpus * hw.gpu.flops("bf16") / per_token
    thr = next(x for x in by["throughput"] if x.path == "throughput.tokens_per_s")
    assert thr.claimed == 319488 > reachable
    assert float(thr.expected.lstrip("<= ")) == pytest.approx(reachable, rel=1e-3)


def test_coarse_plan_without_inputs_checks_what_it_can():
    plan = {"parallel_strategy": {"ep": 3, "tp": 2, "pp": 1},
            "tensor_parallel_distribution": {"gpu_0": ["attention_0", "mlp_0"],
                                             "gpu_1": ["attention_1", "mlp_1"],
                                             "gpu_2": ["attention_2", "mlp_2"]},
            "memory_per_gpu_gb": 42.3, "required_tflops": 320,
            "throughput": {"samples_per_s": 312, "tokens_per_s": 319488}}
    bare = check_plan(plan)
    assert any(x.check == "inputs" for x in bare)
    assert "inputs" in {x.path for x in errors(bare) if x.check == "schema"}
    given_files = check_plan(plan, PROBLEMS / "models" / "seed-moe.yaml",
                             PROBLEMS / "hw" / "seed-3gpu.yaml")
    assert {"degrees", "detail", "throughput", "memory"} <= classes(given_files)


# --------------------------------------------------------------------------- CLI
def test_cli_exit_codes_and_output(tmp_path, moe_plan):
    runner = CliRunner()
    res = runner.invoke(main, ["check", str(SEED_ORIGINAL)])
    assert res.exit_code == 1
    assert "parallel_strategy.ep" in res.output and "error(s)" in res.output
    good = tmp_path / "good.json"
    good.write_text(json.dumps(moe_plan))
    res = runner.invoke(main, ["check", str(good)])
    assert res.exit_code == 0, res.output
    bad = copy.deepcopy(moe_plan)
    flops_total(bad)
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    res = runner.invoke(main, ["check", str(tmp_path / "bad.json"), "--json"])
    assert res.exit_code == 1
    out = json.loads(res.output)
    assert out["errors"] >= 1 and {f["check"] for f in out["findings"]} == {"flops"}
    (tmp_path / "broken.json").write_text("{not json")
    res = runner.invoke(main, ["check", str(tmp_path / "broken.json")])
    assert res.exit_code == 2
    assert "invalid JSON" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["check", str(good), "--hw", str(tmp_path / "none.yaml")])
    assert res.exit_code == 2


def test_check_plan_rejects_non_object():
    with pytest.raises(InputError):
        check_plan([1, 2])


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.data())
def test_hostile_edits_never_crash(moe_plan, data):
    """Any value replaced by a wrong type, a negative or a huge number: findings, no crash."""
    plan = copy.deepcopy(moe_plan)
    paths = [p for p in json_paths(plan) if p and p[0] != "formulas"]
    path = data.draw(st.sampled_from(paths))
    parent = plan
    for k in path[:-1]:
        parent = parent[k]
    parent[path[-1]] = data.draw(st.sampled_from(["x", -1, None, [], {}, 10**12, [0, 10**12]]))
    found = check_plan(plan)
    assert all(x.severity in ("error", "warning") for x in found)
    json.dumps([x.to_dict() for x in found])


def test_divisibility_rules():
    from autopar.check.finding import Findings
    from autopar.check.layout import check_divisibility
    from autopar.check.recompute import Layout

    m = ModelSpec("moe", 2, 96, 6, 3, 16, 0, True, 100, experts=6, top_k=2,
                  expert_ffn_hidden=32)

    def found(tp: int, ep: int, listed: bool) -> set[str]:
        lay = Layout(tp * 4, tp, 1, 4, ep, 1, 1, 1, "none", 0, False, ((0, 1),))
        plan = {"gpus": [{"experts": [{"layers": [0, 1], "experts": [0]}] if listed else []}]}
        f = Findings()
        check_divisibility(f, plan, m, lay)
        return {x.message.split(" ")[0] + " " + x.message.split(" ")[1] for x in f.items}

    assert found(tp=3, ep=2, listed=False) == set()  # 6 heads, 3 KV heads, 6 experts over 2
    assert "attention heads" in found(tp=4, ep=2, listed=False)
    assert "KV heads" in found(tp=2, ep=2, listed=False)  # 3 KV heads over 2 ranks
    assert "experts do" in found(tp=3, ep=4, listed=False)  # 6 experts over 4: uneven ...
    assert found(tp=3, ep=4, listed=True) == set()  # ... allowed when the placement is listed
    assert "more EP" in found(tp=3, ep=8, listed=True)


@pytest.mark.parametrize("name", ["/etc/hostname", "../hw/seed-3gpu.txt", "model"])
def test_plan_may_name_only_relative_spec_files(name):
    """A plan from elsewhere cannot make check read arbitrary files: absolute paths and files
    that are not YAML / JSON are refused with a finding, and nothing is read."""
    plan = json.loads(SEED_ORIGINAL.read_text())
    plan["inputs"]["hardware"] = name
    found = check_plan(plan, base_dir=SEED_ORIGINAL.parent)
    msgs = [x.message for x in found if x.check == "inputs"]
    assert any("inputs.hardware" in m and "relative .yaml" in m for m in msgs), msgs


# --------------------------------------------------------------------------- solve's own plans
def _solved(model, hw, workload=None, **pins) -> dict:
    return json.loads(solve(model, hw, workload, pins=pins, time_limit_s=2, seed=0,
                            workers=1).to_json())


def _tp_layers(plan: dict) -> dict:
    return next(c for c in plan["communication"] if c["group"] == "tp" and "part" not in c)


def test_overlapped_tp_collective_states_its_link_time_and_exposed_part():
    """Mixtral with TE's TP overlap: the TP collectives are hidden, yet the plan lists what
    they take on the link (not 0) and the exposed part separately; check verifies both."""
    mf = load_model(PROBLEMS / "models" / "mixtral-8x7b.yaml")
    hw = load_hardware(PROBLEMS / "hw" / "h100-8x.yaml")
    plan = _solved(mf, hw, overlap_tp_comm=True, tp=2, pp=1)
    assert not errors(check_plan(plan)), format_findings(check_plan(plan))
    c = _tp_layers(plan)
    link = 2 * (c["group_size"] - 1) / c["group_size"] * c["bytes_per_call"] / \
        hw.intra.bytes_per_s
    assert c["time_per_call_s"] >= link > 0
    assert 0 <= c["exposed_s"] < c["time_per_step_s"]  # mostly hidden behind the GEMMs
    tp_exposed = sum(x["exposed_s"] for x in plan["communication"] if x["group"] == "tp")
    assert tp_exposed == pytest.approx(plan["timing"]["tp_comm_exposed_s"], rel=1e-9)
    for edit, path in ((lambda x: x.update(time_per_call_s=0.0, time_per_step_s=0.0,
                                           exposed_s=0.0, exposed=False), "time_per_call_s"),
                       (lambda x: x.update(exposed_s=2 * x["time_per_step_s"], exposed=True),
                        "exposed_s")):
        bad = copy.deepcopy(plan)
        edit(_tp_layers(bad))
        found = errors(check_plan(bad))
        assert any(x.path.endswith(path) for x in found), format_findings(found)
        assert classes(found) <= {"communication", "timing"}


def test_gpt3_on_selene_passes_check():
    """GPT-3 175B on Selene (3,072 A100, 8 NICs a node) in the layout the search picks: its
    DP rings leave each node through 2 NICs at once, which check used to ignore."""
    mf = load_model(PROBLEMS / "models" / "gpt3-175b.yaml")
    hw = load_hardware(PROBLEMS / "hw" / "selene-a100.yaml")
    plan = _solved(mf, hw, tp=4, pp=8, dp=96, micro_batch=2, num_micro_batches=8,
                   virtual_stages=12, recompute="none", zero=1, sequence_parallel=True)
    found = check_plan(plan, mf, hw)
    assert not errors(found), format_findings(found)


def test_multi_nic_rule_bounds_ring_collectives():
    """[dp-comm] a ring group with g members on each node runs g rings out of g NICs:
    check's bound is min(g x NIC, max(NVLink, NIC)), not one NIC."""
    from autopar.check.recompute import Layout, expected_collectives

    m = ModelSpec("dense", 2, 128, 4, 2, 32, 256, True, 300)
    w = Workload("training", 8, 64)
    lay = Layout(8, 2, 1, 4, 1, 1, 1, 2, "none", 0, False, ((0, 1),))  # DP {0,2,4,6}: 2 a node
    for intra, want in ((100, 50e9), (16, 25e9)):  # 2 x 25 GB/s; capped by the faster link
        hw = parse_hardware({"name": "t", "gpu": {"memory_gb": 80, "tflops": {"bf16": 100},
                                                  "hbm_tbps": 1.0}, "nodes": 2,
                             "gpus_per_node": 4, "intra_node": {"bandwidth_gbps": intra},
                             "inter_node": {"bandwidth_gbps": 25}}, "t")
        dp = expected_collectives(m, hw, w, lay)[("dp", 0, "")]
        assert dp.min_time_per_call_s == pytest.approx(2 * 3 / 4 * dp.bytes_per_call / want)
    plan = _solved(m, hardware(2, 4), w, tp=2, pp=1, zero=0)
    assert not errors(check_plan(plan)), format_findings(check_plan(plan))


def test_fp8_utilization_is_taken_against_the_fp8_peak():
    mf = load_model(PROBLEMS / "models" / "mixtral-8x7b.yaml")
    hw = load_hardware(PROBLEMS / "hw" / "h100-8x.yaml")
    w = dataclasses.replace(mf.workload, precision="fp8")
    plan = _solved(mf.model, hw, w, tp=2, ep=8)
    mt = plan["metrics"]
    assert mt["peak_dtype"] == "fp8"
    assert mt["peak_flops_per_s"] == pytest.approx(8 * hw.gpu.flops("fp8"))
    assert mt["mfu"] <= mt["hfu"] < 1
    assert not errors(check_plan(plan)), format_findings(check_plan(plan))
    bf16 = copy.deepcopy(plan)  # the old figures: fp8 GEMMs measured against the bf16 peak
    k = hw.gpu.flops("fp8") / hw.gpu.flops("bf16")
    bf16["metrics"].update(peak_flops_per_s=mt["peak_flops_per_s"] / k, mfu=mt["mfu"] * k,
                           hfu=mt["hfu"] * k, peak_dtype="bf16")
    paths = {x.path for x in errors(check_plan(bf16))}
    assert {"metrics.peak_dtype", "metrics.peak_flops_per_s"} <= paths


def test_bubble_is_never_negative():
    """One stage, 6 micro-batches of 0.1 s: pipeline - m x slowest is -1.1e-16 in floats."""
    from autopar.cost.evaluate import Memory, StageCost, compose

    st = StageCost(0, 0, 1, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, Memory(), 1)
    step, bubble = compose([st], 6)
    assert bubble == 0.0 and step == pytest.approx(0.6)


def test_zero3_parameter_gathers_are_listed_and_timed():
    """ZeRO-3 gathers each unit's (layer's, embedding's, LM head's) dense parameters over DP
    and experts over EDP before each forward and backward [fsdp]: listed as collectives, and
    a timing phase, so the phases add up."""
    from autopar.plan import PHASES

    m = ModelSpec("moe", 2, 128, 4, 2, 32, 256, True, 300, experts=4, top_k=2,
                  expert_ffn_hidden=64)
    plan = _solved(m, hardware(1, 4), Workload("training", 8, 64), tp=1, pp=1, ep=2, zero=3)
    t = plan["timing"]
    assert sum(t[k] for k in PHASES) == pytest.approx(t["step_time_s"], rel=1e-9)
    gathers = {c["group"]: c for c in plan["communication"] if c.get("part") == "parameters"}
    assert set(gathers) == {"dp", "edp"} and t["param_gather_exposed_s"] > 0
    units = m.layers + 2  # the layers, the embedding and the LM head
    assert gathers["dp"]["calls_per_step"] == 2 * plan["strategy"]["num_micro_batches"] * units
    assert not errors(check_plan(plan)), format_findings(check_plan(plan))


def test_serving_micro_batches_hold_exactly_the_sequences():
    """8 sequences on 5 stages: equal micro-batches (4 of 2), not 5 of 2 padded to 10."""
    m = ModelSpec("dense", 8, 16, 2, 2, 8, 64, True, 100)
    w = Workload("inference", 8, phase="both", input_len=16, output_len=16)
    plan = _solved(m, hardware(2, 5, 3.0), w, tp=2, pp=5)
    s = plan["strategy"]
    assert s["micro_batch"] * s["num_micro_batches"] == 8
    assert not errors(check_plan(plan)), format_findings(check_plan(plan))


def test_serving_concurrency_stays_a_readable_workload():
    """A tiny model's KV cache holds tens of millions of sequences; the plan's echoed
    batch must stay within what a workload may state, or check cannot read it back."""
    m = ModelSpec("dense", 2, 16, 2, 1, 8, 32, True, 50)
    w = Workload("inference", 1, phase="decode", input_len=16, output_len=16, tpot_ms=100.0)
    plan = _solved(m, hardware(1, 2), w, tp=1, pp=1)
    assert plan["inputs"]["workload"]["batch"] <= 10_000_000
    assert not errors(check_plan(plan)), format_findings(check_plan(plan))
