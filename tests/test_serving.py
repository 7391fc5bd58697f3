"""Serving: KV cache, decode roofline, latency targets, the frontier, disaggregation, export."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace

import pytest
from click.testing import CliRunner
from conftest import PROBLEMS

from autopar.api import check as plan_check
from autopar.api import make_problem, solve
from autopar.cli import main
from autopar.cost.calibration import Calibration, parse_calibration
from autopar.cost.layer import Problem, kv_bytes_per_token_layer
from autopar.errors import InfeasibleError, InputError
from autopar.export.engines import export_text
from autopar.schema.gpus import gpu_records
from autopar.search import SearchOptions
from autopar.search.deadline import Deadline
from autopar.serve.disagg import disagg_search
from autopar.serve.evaluate import Evaluator, Layout, decode_time
from autopar.serve.frontier import Targets, pareto, serving_ceiling, serving_search
from autopar.serve.plan import serve, why_not_served
from autopar.spec import (
    GB,
    GPUSpec,
    HardwareSpec,
    LinkSpec,
    ModelSpec,
    Workload,
    load_hardware,
    load_model,
)

SEED_HW = PROBLEMS / "hw" / "seed-3gpu.yaml"
SEED_SERVE = PROBLEMS / "models" / "seed-moe-serve.yaml"
H100 = PROBLEMS / "hw" / "h100-8x.yaml"


# ----------------------------------------------------------------------------- KV cache
def test_kv_bytes_per_token_gqa_by_hand():
    m = load_model(PROBLEMS / "models" / "mixtral-8x7b-serve.yaml").model
    # K and V, 8 KV heads of 128, bf16: 2 * 8 * 128 * 2 B per token per layer
    assert kv_bytes_per_token_layer(m, 1) == 4096
    assert kv_bytes_per_token_layer(m, 2) == 2048  # heads split over TP
    assert kv_bytes_per_token_layer(m, 16) == 512  # TP > KV heads: one head replicated
    assert kv_bytes_per_token_layer(m, 1) * m.layers == 131072  # 128 KiB per token


def test_kv_bytes_per_token_mla_by_hand():
    m = load_model(PROBLEMS / "models" / "deepseek-v3.yaml").model
    # the compressed latent (512) and the decoupled RoPE key (64), bf16, on every TP rank
    assert kv_bytes_per_token_layer(m, 1) == (512 + 64) * 2 == 1152
    assert kv_bytes_per_token_layer(m, 8) == 1152
    assert kv_bytes_per_token_layer(m, 1) * m.layers == 70272


def _hw(gpus: int = 1, hbm_tbps: float = 2.0, mem_gb: float = 80.0) -> HardwareSpec:
    gpu = GPUSpec("g", mem_gb * GB, {"bf16": 1e15}, hbm_tbps * 1e12)
    return HardwareSpec("h", gpu, 1, gpus, LinkSpec(4e11, 3e-6), LinkSpec(5e10, 8e-6),
                        reserved_bytes=1 * GB)


def _llama_like(**kw) -> ModelSpec:
    base = dict(name="l", layers=8, hidden=4096, heads=32, kv_heads=8, head_dim=128,
                ffn_hidden=14336, gated_mlp=True, vocab=32000)
    return ModelSpec(**{**base, **kw})


def test_kv_cache_memory_and_max_concurrency():
    m = _llama_like()
    p = Problem(m, _hw(), Workload("inference", 4, phase="both", input_len=1000,
                                   output_len=24))
    ev = Evaluator(p)
    dec = ev.phase(Layout(1, 1, 1, 1, 1), "decode", 4)
    kv = 4 * 1024 * m.layers * 2 * 8 * 128 * 2  # sequences x tokens x layers x K,V bytes
    assert dec.evaluation.stages[0].memory.kv_cache == pytest.approx(kv)
    from autopar.serve.evaluate import point
    pt = point(ev, Layout(1, 1, 1, 1, 1), 4)
    free = p.hw.gpu.memory_bytes - pt.memory_bytes + dec.evaluation.stages[0].memory.kv_cache
    assert pt.max_concurrency == int(free // (kv / 4))


# ----------------------------------------------------------------------------- decode roofline
def test_decode_small_batch_is_bound_by_hbm_reads():
    """One sequence: a decode step reads every weight and the KV cache once, at HBM speed."""
    m = _llama_like()
    hw = _hw(hbm_tbps=2.0)
    p = Problem(m, hw, Workload("inference", 1, phase="decode", input_len=2048, output_len=0))
    ev = Evaluator(p)
    dec = ev.phase(Layout(1, 1, 1, 1, 1), "decode", 1)
    h, f, V = 4096, 14336, 32000
    per_layer = h * (32 * 128 + 2 * 8 * 128) + 32 * 128 * h + 3 * h * f + 2 * h
    weights = (m.layers * per_layer + V * h + h) * 2  # LM head read, embedding only gathered
    kv = 2048 * m.layers * 2 * 8 * 128 * 2
    # the kernels that move a few KB take one kernel floor each: per layer the two norms and
    # the three elementwise passes (residual, SwiGLU, residual); embedding, final norm, logits
    floors = (5 * m.layers + 3) * p.calib.kernel_floor_s
    hand = (weights + kv) / (hw.gpu.hbm_bytes_per_s * p.calib.hbm_eff) + floors
    t = decode_time(dec, 1)
    assert hand * 0.999 <= t <= hand * 1.03  # activations and kernel I/O are a few KB
    flops = 2 * (weights / 2)  # ~2 FLOPs per weight: compute would take far less
    assert flops / hw.gpu.flops("bf16") < 0.05 * t


def test_decode_reads_only_the_experts_a_small_batch_routes_to():
    """One token, top-2 of 8 experts: only 2 experts' weights are read per layer."""
    m = ModelSpec(name="moe", layers=4, hidden=2048, heads=16, kv_heads=4, head_dim=128,
                  ffn_hidden=0, gated_mlp=True, vocab=1000, experts=8, top_k=2,
                  expert_ffn_hidden=4096)
    p = Problem(m, _hw(), Workload("inference", 1, phase="decode", input_len=64, output_len=0))
    dec = Evaluator(p).phase(Layout(1, 1, 1, 1, 1), "decode", 1)
    lc = dec.evaluation.stages[0].layer_costs[0]
    experts = [c for c in lc.components if c.role == "expert"]
    one_expert = 3 * 2048 * 4096 * 2  # gated: up, gate, down; bf16
    read = 2 * one_expert  # 2 of 8 experts
    hbm = p.hw.gpu.hbm_bytes_per_s * p.calib.hbm_eff
    t = sum(c.time_s for c in experts)
    floor = p.calib.kernel_floor_s  # the SwiGLU pass between the expert GEMMs moves ~16 KB
    assert read / hbm + floor <= t <= 1.02 * read / hbm + floor
    assert t < 0.3 * 8 * one_expert / hbm  # far from reading all eight


def test_tiny_decode_step_is_a_count_of_kernel_floors():
    """A one-token step of a tiny model moves a few KB per kernel: each kernel takes the
    calibration's floor, so the step is the kernel count times it, whatever the floor."""
    m = _llama_like(layers=3, hidden=64, heads=4, kv_heads=2, head_dim=16, ffn_hidden=128,
                    vocab=256)
    wl = Workload("inference", 1, phase="decode", input_len=16, output_len=0)
    # per layer: norm, QKV, attention, out, residual, norm, FC1, SwiGLU, FC2, residual;
    # then embedding gather, final norm, LM head, logits pass
    kernels = 10 * m.layers + 4
    for us in (3.0, 7.5):
        calib = parse_calibration({"kernel_floor_us": us}, "calib.yaml")
        p = Problem(m, _hw(), wl, calib)
        dec = Evaluator(p).phase(Layout(1, 1, 1, 1, 1), "decode", 1)
        assert decode_time(dec, 1) == pytest.approx(kernels * us * 1e-6, rel=1e-9)


# ----------------------------------------------------------------------------- targets
@pytest.fixture(scope="module")
def qwen() -> Problem:
    p = make_problem(PROBLEMS / "models" / "qwen3-30b-a3b.yaml", H100)
    return replace(p, workload=replace(p.workload, phase="both"))


def test_latency_target_that_excludes_the_fastest_layout_changes_the_choice(qwen):
    free = serving_search(qwen).best  # the most tokens/s per GPU, no target
    tight = 0.7 * min(pt.tpot_s for pt in serving_search(
        qwen, SearchOptions(pins={"tp": free.layout.tp, "dp": free.layout.dp,
                                  "ep": free.layout.ep, "etp": free.layout.etp,
                                  "pp": free.layout.pp})).points)
    res = serving_search(qwen, targets=Targets(tpot_ms=tight * 1e3))
    best = res.best
    assert best is not None and best.tpot_s <= tight
    assert best.layout != free.layout  # its layout cannot reach the target at any load
    assert best.tokens_per_s_per_gpu < free.tokens_per_s_per_gpu
    # the constrained choice is the best among the points that meet the target
    ok = [pt for pt in res.points if pt.meets(None, tight * 1e3)]
    assert best.tokens_per_s_per_gpu == max(pt.tokens_per_s_per_gpu for pt in ok)


def test_tpot_target_bisects_concurrency_to_the_limit(qwen):
    res = serving_search(qwen, targets=Targets(tpot_ms=20.0))
    b = res.best
    assert b.tpot_s * 1e3 <= 20.0
    ev = Evaluator(qwen)
    from autopar.serve.evaluate import point
    nxt = point(ev, b.layout, b.per_replica + 1)
    assert nxt is None or nxt.tpot_s * 1e3 > 20.0  # one more sequence breaks the target


def test_frontier_is_pareto(qwen):
    res = serving_search(qwen)
    f = res.frontier
    assert len(f) >= 3
    for a, b in zip(f, f[1:], strict=False):
        assert a.tokens_per_s_per_user > b.tokens_per_s_per_user
        assert a.tokens_per_s_per_gpu < b.tokens_per_s_per_gpu
    for pt in res.points:  # nothing beats a frontier point on both axes
        assert not any(pt.tokens_per_s_per_user > x.tokens_per_s_per_user * (1 + 1e-9)
                       and pt.tokens_per_s_per_gpu > x.tokens_per_s_per_gpu * (1 + 1e-9)
                       for x in f)
    assert pareto(list(reversed(res.points))) == pareto(res.points)


def test_unreachable_target_is_infeasible_with_the_closest_figure():
    mf = load_model(SEED_SERVE)
    wl = replace(mf.workload, tpot_ms=0.01)
    with pytest.raises(InfeasibleError, match="lowest TPOT"):
        solve(replace(mf, workload=wl), SEED_HW, time_limit_s=5)


# ----------------------------------------------------------------------------- seed, 3 GPUs
@pytest.fixture(scope="module")
def seed_plan():
    return solve(SEED_SERVE, SEED_HW, time_limit_s=5, disaggregate=True, frontier=True)


def test_seed_inference_uses_all_three_gpus(seed_plan):
    d = seed_plan.data
    s = d["strategy"]
    assert s["tp"] * s["pp"] * s["dp"] == 3 and 3 in (s["ep"], s["pp"], s["dp"] * s["tp"])
    gpus = seed_plan.gpu_records()
    for g in gpus:  # every GPU holds layers and, with EP, a third of the experts
        assert g["components"] and g["memory"]["kv_cache_bytes"] > 0
    if s["ep"] == 3:
        assert sorted(e for g in gpus for e in g["experts"][0]["experts"]) == \
            list(range(63))
    # faster than leaving one GPU idle: the best two-GPU deployment serves fewer tokens/s
    p = make_problem(SEED_SERVE, SEED_HW)
    two = serving_search(replace(p, hw=replace(p.hw, gpus_per_node=2)),
                         targets=Targets(p.workload.ttft_ms, p.workload.tpot_ms)).best
    three = d["serving"]["point"]
    assert three["tokens_per_s"] > 1.2 * two.tokens_per_s
    assert three["tpot_s"] * 1e3 <= 50 and three["ttft_s"] * 1e3 <= 2000


def test_seed_plan_reports_serving_metrics(seed_plan):
    d = seed_plan.data
    mt, sv = d["metrics"], d["serving"]
    assert mt["max_concurrency"] >= mt["concurrency"] == sv["point"]["concurrency"]
    assert mt["tokens_per_s_per_gpu"] == pytest.approx(sv["point"]["tokens_per_s"] / 3)
    assert mt["request_latency_s"] == pytest.approx(mt["ttft_s"] + 255 * mt["tpot_s"])
    assert all(v["passed"] for v in d["validation"]), d["validation"]
    assert sv["frontier"] and sv["disaggregated"]["winner"] in ("aggregated", "disaggregated")


def test_disaggregated_pools_split_the_gpus_and_balance_rates(seed_plan):
    dd = seed_plan.data["serving"]["disaggregated"]
    best = dd["best"]
    assert best["prefill_gpus"] + best["decode_gpus"] == 3
    assert best["requests_per_s"] == pytest.approx(
        min(best["prefill_requests_per_s"], best["decode_requests_per_s"]))
    assert best["tokens_per_s_per_gpu"] == pytest.approx(best["requests_per_s"] * 256 / 3)
    assert best["ttft_s"] == pytest.approx(best["prefill"]["ttft_s"] + best["kv_transfer_s"])
    assert {(s["prefill_gpus"], s["decode_gpus"]) for s in dd["splits"]} == {(1, 2), (2, 1)}
    ratio = dd["ratio"]
    agg = seed_plan.data["serving"]["point"]["tokens_per_s_per_gpu"]
    assert ratio == pytest.approx(max(agg, best["tokens_per_s_per_gpu"])
                                  / min(agg, best["tokens_per_s_per_gpu"]))


def test_disaggregation_on_another_gpu_type_uses_its_pool():
    p = make_problem(SEED_SERVE, SEED_HW)
    fast = replace(p.hw, name="fast", gpu=replace(p.hw.gpu, hbm_bytes_per_s=4.8e12),
                   gpus_per_node=2)
    res = disagg_search(p, targets=Targets(p.workload.ttft_ms, p.workload.tpot_ms),
                        decode_hw=fast)
    assert res.best is not None and res.best.decode.gpus <= 2
    assert res.best.prefill.gpus <= 3


def test_a_decode_pool_on_another_gpu_type_plans_with_that_types_figures():
    from autopar.serve.disagg import pool_calibration
    from autopar.spec import load_hardware
    h100 = make_problem(PROBLEMS / "models/qwen3-30b-a3b.yaml", H100)
    h200 = load_hardware(PROBLEMS / "hw/h200-8x.yaml")
    mine = pool_calibration(h100, h200)
    assert "h100_sxm" in h100.calib.source and "h200_sxm" in mine.source  # its own tables
    flat = make_problem(PROBLEMS / "models/qwen3-30b-a3b.yaml", H100, calibration="defaults")
    assert pool_calibration(flat, h200).gemm_peak is None  # resolved again on the H200
    assert pool_calibration(flat, flat.hw) is flat.calib


# ----------------------------------------------------------------------------- export
def test_export_has_the_plans_parallel_sizes(seed_plan):
    d = seed_plan.data
    s = d["strategy"]
    v = export_text(d, "vllm")
    assert f"--tensor-parallel-size {s['tp']}" in v
    assert f"--pipeline-parallel-size {s['pp']}" in v
    assert f"--data-parallel-size {s['dp']}" in v
    assert ("--enable-expert-parallel" in v) == (s["ep"] > 1)
    per_replica = d["serving"]["point"]["per_replica"]
    assert f"--max-num-seqs {per_replica}" in v
    g = export_text(d, "sglang")
    assert f"--tp-size {s['tp'] * s['dp']}" in g and f"--pp-size {s['pp']}" in g
    if s["ep"] > 1:
        assert f"--ep-size {s['ep']}" in g
    frac = float(v.split("--gpu-memory-utilization ")[1].split()[0])
    gpus = gpu_records(d)
    used = max(x["memory"]["total_bytes"] for x in gpus) / gpus[0]["memory"]["capacity_bytes"]
    assert used <= frac < used + 0.05
    assert ("# note: the plan fills" in v) == (used > 0.95)  # headroom warned about


def test_export_warns_when_the_plan_leaves_the_engine_no_headroom():
    from autopar.export.engines import launch_section

    deg = {"tp": 1, "pp": 1, "dp": 8, "ep": 8, "etp": 1}
    tight = launch_section(deg, True, 200, 79e9, 78e9, 80e9, 3072, 1)
    roomy = launch_section(deg, True, 200, 70e9, 69e9, 80e9, 3072, 1)
    assert "98.8%" in tight["vllm"]["note"] and "reserved_gb" in tight["sglang"]["note"]
    assert roomy["vllm"]["note"] == roomy["sglang"]["note"] == ""
    assert tight["vllm"]["args"]["gpu-memory-utilization"] == 0.99


def test_export_flags_layouts_an_engine_cannot_express():
    from autopar.export.engines import launch_section
    ls = launch_section({"tp": 2, "pp": 1, "dp": 4, "ep": 2, "etp": 1}, True, 8, 40e9, 30e9,
                        80e9, 4096, 1)
    assert not ls["vllm"]["exact"] and "EP" in ls["vllm"]["why"]
    assert not ls["sglang"]["exact"]
    ok = launch_section({"tp": 2, "pp": 1, "dp": 4, "ep": 8, "etp": 1}, True, 8, 40e9, 30e9,
                        80e9, 4096, 1)
    assert ok["vllm"]["exact"] and ok["sglang"]["exact"]


# ----------------------------------------------------------------------------- CLI
def test_cli_frontier_json_and_export(tmp_path, seed_plan):
    r = CliRunner().invoke(main, ["frontier", "--hw", str(SEED_HW), "--model", str(SEED_SERVE),
                                  "--json", "--out", str(tmp_path / "f.json")])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["frontier"] and doc["best"]["gpus"] == 3
    assert json.loads((tmp_path / "f.json").read_text())["frontier"] == doc["frontier"]
    plan = tmp_path / "plan.json"
    seed_plan.write(plan)
    r = CliRunner().invoke(main, ["export", str(plan), "--to", "sglang", "--format", "yaml"])
    assert r.exit_code == 0, r.output
    assert "tp-size:" in r.output and "model-path: seed-moe" in r.output


def test_cli_solve_targets_override_the_file(tmp_path):
    out = tmp_path / "p.json"
    r = CliRunner().invoke(main, ["solve", "--hw", str(SEED_HW), "--model", str(SEED_SERVE),
                                  "--tpot-ms", "20", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert d["serving"]["targets"]["tpot_ms"] == 20
    assert d["metrics"]["tpot_s"] * 1e3 <= 20


def test_workload_reads_phase_both_and_targets(write_yaml):
    from autopar.errors import InputError
    from autopar.spec import parse_workload
    w = parse_workload({"kind": "inference", "phase": "both", "input_len": 10, "output_len": 5,
                        "ttft_ms": 100, "tpot_ms": 20}, "x")
    assert (w.phase, w.ttft_ms, w.tpot_ms, w.batch) == ("both", 100.0, 20.0, 1)
    with pytest.raises(InputError, match="batch"):  # without a target the load is needed
        parse_workload({"kind": "inference", "phase": "both", "input_len": 10}, "x")
    with pytest.raises(InputError, match="tpot_ms"):
        parse_workload({"kind": "inference", "phase": "both", "input_len": 10,
                        "tpot_ms": -1}, "x")


def test_check_recomputes_the_serving_plan(seed_plan):
    import copy

    from autopar.check.verify import check_plan
    assert not [x for x in check_plan(copy.deepcopy(seed_plan.data)) if x.severity == "error"]
    bad = copy.deepcopy(seed_plan.data)
    bad["metrics"]["tpot_s"] *= 0.5  # a TPOT the serving point does not give
    assert any("tpot_s" in x.to_dict()["path"] for x in check_plan(bad))


def test_frontier_png_with_the_plot_extra(tmp_path):
    pytest.importorskip("matplotlib")
    r = CliRunner().invoke(main, ["frontier", "--hw", str(SEED_HW), "--model", str(SEED_SERVE),
                                  "--png", str(tmp_path / "f.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "TPOT <= 50 ms" in r.output  # the model file's targets are kept


def test_target_without_its_phase_is_an_input_error():
    """A TTFT limit on a decode-only step (or TPOT on prefill) cannot be met or missed."""
    from autopar.errors import InputError
    from autopar.spec import parse_workload

    base = {"kind": "inference", "batch": 8, "input_len": 128, "output_len": 16}
    with pytest.raises(InputError, match="ttft_ms: a TTFT target needs a prefill"):
        parse_workload({**base, "phase": "decode", "ttft_ms": 100}, "w.yaml")
    with pytest.raises(InputError, match="tpot_ms: a TPOT target needs decoding"):
        parse_workload({**base, "phase": "prefill", "tpot_ms": 10}, "w.yaml")
    assert parse_workload({**base, "phase": "both", "ttft_ms": 100, "tpot_ms": 10},
                          "w.yaml").ttft_ms == 100


# ----------------------------------------------------------------------------- fp8 checkpoint
def test_fp8_checkpoint_stores_and_reads_linear_layers_in_one_byte():
    """weight_dtype fp8: the blocks' linear layers take 1 B per weight in memory and in a
    decode step's HBM reads; norms, router, embedding and LM head stay bf16 (2 B)."""
    m16 = ModelSpec(name="moe", layers=2, hidden=1024, heads=8, kv_heads=8, head_dim=128,
                    ffn_hidden=0, gated_mlp=True, vocab=5000, experts=4, top_k=4,
                    expert_ffn_hidden=2048)
    m8 = replace(m16, weight_dtype="fp8")
    wl = Workload("inference", 1, phase="decode", input_len=64, output_len=0)
    h, f, V, L = 1024, 2048, 5000, 2
    linear = L * (4 * h * h + 4 * 3 * h * f)  # QKV + out, 4 experts of 3 h f (all touched)
    other = L * (2 * h + h * 4) + 2 * V * h + h  # 2 norms and router per layer; emb, head, norm
    mem, step = {}, {}
    for m in (m16, m8):
        p = Problem(m, _hw(), wl, Calibration(kernel_floor_s=0.0))  # bandwidth alone
        dec = Evaluator(p).phase(Layout(1, 1, 1, 1, 1), "decode", 1)
        mem[m.weight_dtype] = dec.evaluation.stages[0].memory.weights
        step[m.weight_dtype] = decode_time(dec, 1)
    assert mem[None] == pytest.approx(2 * (linear + other))
    assert mem["fp8"] == pytest.approx(linear + 2 * other)
    hbm = 2e12 * Calibration().hbm_eff
    # a one-token step reads each linear weight once (the embedding only gathers one row)
    assert step[None] - step["fp8"] == pytest.approx(linear / hbm, rel=0.02)


def test_fp8_serving_plan_passes_check_and_fits_where_bf16_does_not(tmp_path):
    from autopar.check.verify import check_plan

    mf = load_model(SEED_SERVE)  # 7.6 B parameters, 7.3 B of them in linear layers
    one = load_hardware(SEED_HW)
    one = replace(one, gpus_per_node=1, gpu=replace(one.gpu, memory_bytes=14 * GB))
    with pytest.raises(InfeasibleError):  # 15.2 GB of bf16 weights
        solve(mf, one, time_limit_s=5)
    fp8 = replace(mf, model=replace(mf.model, weight_dtype="fp8"))
    plan = solve(fp8, one, time_limit_s=5)  # 7.9 GB of weights, the rest for the KV cache
    assert plan.data["inputs"]["model"]["weight_dtype"] == "fp8"
    assert not [x for x in check_plan(plan.data) if x.severity == "error"]


def test_fp8_weights_are_for_serving_and_hf_fp8_config_is_read(tmp_path):
    mf = load_model(PROBLEMS / "models" / "deepseek-v3-train.yaml")
    fp8 = replace(mf, model=replace(mf.model, weight_dtype="fp8"))
    with pytest.raises(InputError, match="model.weight_dtype: fp8 weights are a serving"):
        make_problem(fp8, PROBLEMS / "hw" / "h800-32node.yaml")
    hf = json.loads((PROBLEMS / "models" / "hf" / "deepseek-v3-config.json").read_text())
    assert load_model(PROBLEMS / "models" / "hf" / "deepseek-v3-config.json").model \
        .weight_dtype == "fp8"
    hf["quantization_config"] = {"quant_method": "awq", "bits": 4}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(hf))
    with pytest.raises(InputError, match="quantization_config.quant_method: 'awq'"):
        load_model(path)


# ----------------------------------------------------------------------------- spare slots
MIXTRAL_SERVE = PROBLEMS / "models" / "mixtral-8x7b-serve.yaml"


def _skewed_mixtral(spare: int | None, load: str = "zipf:1.2"):
    mf = load_model(MIXTRAL_SERVE)
    return replace(mf, workload=replace(mf.workload, expert_load=load, spare_slots=spare,
                                        tpot_ms=50.0))


def test_serving_spare_slots_hold_replicas_whose_memory_and_balance_are_costed():
    """--spare-slots in serving: the placement replicates hot experts into the spare slots,
    the replicas' weights are in each GPU's memory (fewer sequences fit) and are read by a
    decode step, the lower expert imbalance shortens the prefill, and `check` agrees with
    every figure."""
    from autopar.check.verify import check_plan
    pins = {"tp": 1, "dp": 8, "ep": 2, "etp": 4}
    plans = {n: solve(_skewed_mixtral(n), H100, pins=pins, time_limit_s=4).data for n in (0, 2)}
    flat, spare = plans[0], plans[2]
    assert spare["strategy"]["spare_slots"] == 2
    assert spare["serving"]["point"]["layout"]["spare_slots"] == 2
    assert all(len(ex) == 4 + 2 for lay in spare["experts"]["layers"] for ex in lay["gpu_experts"])
    assert max(x["max_over_mean"] for x in spare["experts"]["layers"]) < 1.01
    assert min(x["max_over_mean"] for x in flat["experts"]["layers"]) > 1.1
    m = load_model(MIXTRAL_SERVE).model
    copy_bytes = 3 * m.hidden * m.expert_ffn_hidden * 2 / 4  # one expert, bf16, ETP 4
    extra = gpu_records(spare)[0]["memory"]["weights_bytes"] - \
        gpu_records(flat)[0]["memory"]["weights_bytes"]
    assert extra == pytest.approx(2 * m.layers * copy_bytes, rel=1e-9)
    assert spare["metrics"]["max_concurrency"] < flat["metrics"]["max_concurrency"]
    ev = Evaluator(make_problem(_skewed_mixtral(None), H100))
    lays = [Layout(1, 1, 8, 2, 4, n) for n in (0, 2)]
    prefill = [ev.prefill(lay, None).latency for lay in lays]
    assert prefill[1] < 0.95 * prefill[0]  # compute-bound: the busiest GPU's load is what counts
    decode = [ev.phase(lay, "decode", 1).latency for lay in lays]
    assert decode[1] > decode[0]  # one token's step reads weights: replicas are read too
    assert not [x for x in check_plan(spare) if x.severity == "error"]
    assert not spare["launch"]["sglang"]["exact"]  # the engine is told about the replicas
    assert "redundant experts" in spare["launch"]["sglang"]["why"]


def test_serving_searches_spare_slots_under_skew_only():
    """Not pinned: under a skewed load each layout with EP > 1 is tried with 0, 1 and 2 spare
    slots and the best is kept (here, on the flat-fraction defaults, one with replicas,
    beating every layout without them); a uniform load gets none."""
    free = solve(_skewed_mixtral(None), H100, time_limit_s=4, calibration="defaults").data
    none = solve(_skewed_mixtral(0), H100, time_limit_s=4, calibration="defaults").data
    assert free["strategy"]["spare_slots"] > 0
    assert free["metrics"]["tokens_per_s_per_gpu"] > none["metrics"]["tokens_per_s_per_gpu"]
    from autopar.serve.frontier import layouts
    skew = layouts(make_problem(_skewed_mixtral(None), H100), SearchOptions())
    assert {x.spare for x in skew if x.ep > 1} == {0, 1, 2}
    assert {x.spare for x in skew if x.ep == 1} == {0}
    flat = layouts(make_problem(_skewed_mixtral(None, "uniform"), H100), SearchOptions())
    assert {x.spare for x in flat} == {0}


# ----------------------------------------------------------------------------- infeasible frontier
def _stderr_line(r) -> str:
    """The one error line on stderr, past any progress lines (`[  1.0 s] phase`) a slow,
    loaded machine prints first."""
    lines = [x for x in r.stderr.strip().splitlines() if not re.match(r"\[\s*\d+\.\d s\] ", x)]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_frontier_with_nothing_that_fits_answers_like_solve(tmp_path, write_yaml):
    """A 671B model on one GPU: `frontier` exits 3 with solve's one-line explanation (why,
    the closest layout, and how many GPUs or how much memory would fit) and writes nothing."""
    hw = write_yaml("one.yaml", {"name": "one-h100", "gpu": {"type": "H100-SXM5-80GB"},
                                 "nodes": 1, "gpus_per_node": 1,
                                 "intra_node": {"bandwidth_gbps": 450, "latency_us": 3}})
    model = str(PROBLEMS / "models" / "deepseek-v3.yaml")
    out, png = tmp_path / "f.json", tmp_path / "f.png"
    r = CliRunner().invoke(main, ["frontier", "--hw", str(hw), "--model", model,
                                  "--out", str(out), "--png", str(png)])
    if "plot" in r.stderr and r.exit_code == 2:  # no matplotlib here: retry without --png
        r = CliRunner().invoke(main, ["frontier", "--hw", str(hw), "--model", model,
                                      "--out", str(out)])
    assert r.exit_code == 3, r.output
    line = _stderr_line(r)
    assert line.startswith("autopar: error: infeasible: no layout of deepseek-v3 on 1 GPUs")
    assert "needs 677.2 GB per GPU of 80.0 GB" in line
    assert "would fit with 10 GPUs (10 nodes of 1) or GPUs with at least 678 GB" in line
    assert not out.exists() and not png.exists()
    s = CliRunner().invoke(main, ["solve", "--hw", str(hw), "--model", model, "--phase", "both",
                                  "--out", str(tmp_path / "p.json")])
    assert s.exit_code == 3 and _stderr_line(s) == line


def test_frontier_with_an_unreachable_target_answers_like_solve(tmp_path):
    args = ["--hw", str(SEED_HW), "--model", str(SEED_SERVE), "--tpot-ms", "0.01",
            "--out", str(tmp_path / "x.json")]
    r = CliRunner().invoke(main, ["frontier", *args])
    s = CliRunner().invoke(main, ["solve", *args])
    assert r.exit_code == s.exit_code == 3, r.output
    assert _stderr_line(r) == _stderr_line(s)
    assert "lowest TPOT" in _stderr_line(r) and "(target 0.01)" in _stderr_line(r)
    assert not (tmp_path / "x.json").exists()


def test_cli_frontier_honours_spare_slots():
    r = CliRunner().invoke(main, ["frontier", "--hw", str(H100), "--model", str(MIXTRAL_SERVE),
                                  "--expert-load", "zipf:1.2", "--spare-slots", "2", "--tp", "1",
                                  "--dp", "8", "--ep", "2", "--etp", "4", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["frontier"] and {x["layout"]["spare_slots"] for x in doc["frontier"]} == {2}


# ----------------------------------------------------------------------------- the time limit
DSV3_SKEW = ["--model", str(PROBLEMS / "models" / "deepseek-v3.yaml"),
             "--hw", str(PROBLEMS / "hw" / "h200-2node.yaml"), "--tpot-ms", "50",
             "--expert-load", "zipf:1.0"]


def _dsv3_skewed():
    mf = load_model(PROBLEMS / "models" / "deepseek-v3.yaml")
    wl = replace(mf.workload, phase="both", tpot_ms=50.0, expert_load="zipf:1.0")
    return replace(mf, workload=wl), PROBLEMS / "hw" / "h200-2node.yaml"


def test_the_limit_bounds_a_serving_solve():
    """Under a skewed load every layout's placements are CP-SAT problems (4-7 s of them
    here); at --time-limit 1 the serving solve stops in time, its best point is a sound plan
    and, cut short, it says so with a bound that covers every layout."""
    limit = 1.0
    t0 = time.monotonic()
    plan = solve(*_dsv3_skewed(), time_limit_s=limit)
    assert time.monotonic() - t0 <= 1.1 * limit + 1.0
    assert not [f for f in plan_check(plan) if f.severity == "error"]
    s = plan.solver
    assert s["status"] == ("FEASIBLE" if s["time_limit_reached"] else "OPTIMAL")
    if s["time_limit_reached"]:  # tokens/s per GPU is maximized: the bound is above
        assert s["best_bound"] > s["objective"] and 0 < s["gap"] < 1


def test_the_frontier_takes_the_time_limit_too(tmp_path):
    limit = 1.0
    t0 = time.monotonic()
    r = CliRunner().invoke(main, ["frontier", *DSV3_SKEW, "--time-limit", str(limit),
                                  "--out", str(tmp_path / "f.json")])
    assert time.monotonic() - t0 <= 1.1 * limit + 1.0
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "f.json").read_text())
    assert doc["best"] and doc["frontier"]
    if doc["search"]["time_limit_reached"]:
        assert "time limit reached" in r.stdout


@pytest.mark.parametrize("bad", ["nan", "inf", "0", "-1"])
def test_frontier_refuses_a_time_limit_that_is_not_positive_and_finite(tmp_path, bad):
    """The one --time-limit definition `solve` and `frontier` share: one line, exit 2,
    before any work."""
    args = ["--model", str(SEED_SERVE), "--hw", str(SEED_HW), "--time-limit", bad,
            "--out", str(tmp_path / "f.json")]
    for command in ("frontier", "solve"):
        r = CliRunner().invoke(main, [command, *args])
        assert r.exit_code == 2, (command, r.output)
        line = _stderr_line(r)
        assert "--time-limit" in line and "finite" in line
    assert not (tmp_path / "f.json").exists()


def test_no_serving_point_in_time_is_an_exit_3_that_says_time_ran_out():
    p = make_problem(SEED_SERVE, SEED_HW)
    past = Deadline(time.monotonic() - 10, time.monotonic() - 9)  # limit and grace spent
    with pytest.raises(InfeasibleError) as err:
        serve(p, SearchOptions(time_limit_s=1.0), deadline=past)
    assert err.value.exit_code == 3
    assert "time limit" in str(err.value) and "--time-limit" in str(err.value)


def test_disaggregated_splits_past_the_limit_say_so():
    p = make_problem(SEED_SERVE, SEED_HW)
    past = Deadline(time.monotonic() - 10, time.monotonic() - 9)
    d = disagg_search(p, SearchOptions(), Targets(p.workload.ttft_ms, p.workload.tpot_ms),
                      deadline=past)
    assert d.timed_out and d.best is None and d.splits
    assert all("time limit" in x["why"] for x in d.splits)


@pytest.mark.parametrize("model,hw", [(SEED_SERVE, SEED_HW), (MIXTRAL_SERVE, H100),
                                      (PROBLEMS / "models" / "llama3-70b.yaml",
                                       PROBLEMS / "hw" / "h200-8x.yaml")])
@pytest.mark.parametrize("phase,isl,osl", [("both", 128, 64), ("decode", 512, 32),
                                           ("prefill", 2048, 1), ("both", 1024, 1)])
def test_the_serving_ceiling_bounds_every_point(model, hw, phase, isl, osl):
    """What a search cut short reports as its bound must hold for every layout and load:
    no point serves more tokens/s per GPU, nor a request sooner, than compute alone allows."""
    p = make_problem(model, hw, Workload("inference", batch=8, phase=phase, input_len=isl,
                                         output_len=osl, expert_load="zipf:1.0"))
    pts = serving_search(p, SearchOptions(time_limit_s=2)).points
    assert pts
    assert max(x.tokens_per_s_per_gpu for x in pts) <= serving_ceiling(p, True)
    assert min(x.request_latency_s for x in pts) >= serving_ceiling(p, False)


def test_the_gpu_count_advice_stops_at_the_time_limit(write_yaml):
    """Where nothing holds one sequence, the count of GPUs that would had its own 10 s cap;
    it now ends with the run's grace, and says that the time limit ended it."""
    hw = write_yaml("one.yaml", {"name": "one-h100", "gpu": {"type": "H100-SXM5-80GB"},
                                 "nodes": 1, "gpus_per_node": 1,
                                 "intra_node": {"bandwidth_gbps": 450, "latency_us": 3}})
    p = make_problem(PROBLEMS / "models" / "deepseek-v3.yaml", hw)
    past = Deadline(time.monotonic() - 10, time.monotonic() - 9)
    t0 = time.monotonic()
    reason, fix = why_not_served(p, SearchOptions(), serving_search(p), Targets(), None, past)
    assert time.monotonic() - t0 < 1.0
    assert "GB per GPU of 80.0 GB" in reason and "time limit ended the count" in fix
