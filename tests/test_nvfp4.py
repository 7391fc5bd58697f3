"""NVFP4 serving checkpoints (`model.weight_dtype: nvfp4`): 0.5 + 1/16 bytes per weight of the
blocks' linear layers, FP4 GEMMs at the GPU's fp4 peak on the measured nvfp4 table, refused
where there are no FP4 tensor cores, and read from a Hugging Face NVFP4 quantization_config."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner
from conftest import PROBLEMS

from autopar.api import make_problem, solve
from autopar.check.verify import check_plan
from autopar.cli import main
from autopar.cost.calibration import Calibration
from autopar.cost.layer import Problem
from autopar.errors import InputError
from autopar.model.components import param_count, weight_bytes
from autopar.search.bounds import compute_floor
from autopar.serve.evaluate import Evaluator, Layout
from autopar.spec import GB, load_hardware, load_model, parse_hardware
from autopar.spec.hf import model_from_hf

LLAMA = PROBLEMS / "models" / "llama3.3-70b-nvfp4.yaml"
QWEN = PROBLEMS / "models" / "qwen3-30b-a3b.yaml"
B200 = PROBLEMS / "hw" / "b200-8x.yaml"
H100 = PROBLEMS / "hw" / "h100-8x.yaml"
NVFP4_BYTES = 0.5 + 1 / 16  # E2M1 nibble + one E4M3 scale per 16 values


def _bf16(mf):
    return replace(mf, model=replace(mf.model, weight_dtype=None))


def test_nvfp4_weights_are_a_quarter_of_bf16_and_only_the_linear_layers_shrink():
    mf = load_model(LLAMA)
    m4, m16 = mf.model, _bf16(mf).model
    assert m4.linear_bytes == NVFP4_BYTES
    n = param_count(m4)
    # the linear layers at 0.5625 B, the rest (embedding, LM head, norms) still bf16
    assert weight_bytes(m4) == pytest.approx(n["linear"] * NVFP4_BYTES
                                             + (n["total"] - n["linear"]) * 2)
    ratio = weight_bytes(m4) / weight_bytes(m16)
    assert 0.25 < ratio < 0.33  # the card: ~3.5x smaller than bf16
    assert weight_bytes(m16) / GB == pytest.approx(141.1, abs=0.5)  # Llama-3.3-70B in bf16


def test_nvfp4_decode_reads_and_holds_its_linear_layers_at_nvfp4_width():
    """A one-token decode step on one GPU reads every linear weight once: the nvfp4 step is
    shorter than the bf16 one by (2 - 0.5625) B per linear weight at HBM speed, and its
    weight memory is the same mix of widths."""
    mf = load_model(LLAMA)
    small = replace(mf.model, layers=2)
    hw = replace(load_hardware(B200), gpus_per_node=1)
    wl = replace(mf.workload, batch=1, input_len=64, output_len=0)
    mem, step = {}, {}
    for m in (small, replace(small, weight_dtype=None)):
        p = Problem(m, hw, wl, Calibration(kernel_floor_s=0.0))  # flat fractions, no floor
        dec = Evaluator(p).phase(Layout(1, 1, 1, 1, 1), "decode", 1)
        mem[m.weight_dtype] = dec.evaluation.stages[0].memory.weights
        step[m.weight_dtype] = dec.evaluation.step_time
    n = param_count(small)
    assert mem[None] - mem["nvfp4"] == pytest.approx(n["linear"] * (2 - NVFP4_BYTES))
    hbm = hw.gpu.hbm_bytes_per_s * Calibration().hbm_eff
    assert step[None] - step["nvfp4"] == pytest.approx(
        n["linear"] * (2 - NVFP4_BYTES) / hbm, rel=0.03)


def test_nvfp4_plan_on_b200_uses_the_fp4_table_and_passes_check():
    plan = solve(LLAMA, B200, time_limit_s=10).data
    cal = plan["inputs"]["calibration"]
    assert cal["gemm_source"] == {"bf16": "table", "nvfp4": "table"}
    assert plan["metrics"]["peak_dtype"] == "nvfp4"
    assert plan["metrics"]["peak_flops_per_s"] == pytest.approx(8 * 9000e12)
    assert not [x for x in check_plan(plan) if x.severity == "error"]
    # the checker recomputes the nvfp4 weight memory: a bf16-sized figure is caught
    bad = json.loads(json.dumps(plan))
    rec = bad["gpus"]["memory"][0]["memory"]
    rec["weights_bytes"] *= 2 / NVFP4_BYTES
    errors = [x for x in check_plan(bad) if x.severity == "error"]
    assert any("weights_bytes" in x.path for x in errors)
    bf16 = solve(_bf16(load_model(LLAMA)), B200, time_limit_s=10).data
    w4 = plan["gpus"]["memory"][0]["memory"]["weights_bytes"]
    w16 = bf16["gpus"]["memory"][0]["memory"]["weights_bytes"]
    assert plan["strategy"]["tp"] == bf16["strategy"]["tp"]  # same TP split of the weights
    assert 0.25 < w4 / w16 < 0.33


def test_without_a_table_nvfp4_gemms_take_the_size_curve_at_the_fp4_peak():
    """Flat fractions: the same curve fraction of twice the fp8 peak, so a compute-bound
    prefill's linear layers take half an fp8 checkpoint's time."""
    mf = load_model(LLAMA)
    hw = load_hardware(B200)
    wl = replace(mf.workload, phase="prefill", batch=8, input_len=4096, output_len=0)
    hw = replace(hw, gpus_per_node=1)
    times = {}
    for wd in ("nvfp4", "fp8"):
        p = make_problem(replace(mf, model=replace(mf.model, layers=2, weight_dtype=wd)),
                         hw, wl, calibration="defaults")
        assert p.calib.gemm_source(wd) == "curve"
        ev = Evaluator(p).phase(Layout(1, 1, 1, 1, 1), "prefill", 1)
        times[wd] = sum(c.time_s - c.ew_s  # the GEMMs, not the elementwise kernels after
                        for c in ev.evaluation.stages[0].layer_costs[0].components
                        if c.role in ("column", "row"))
    assert times["nvfp4"] == pytest.approx(times["fp8"] / 2, rel=0.05)


def test_nvfp4_moe_serves_on_the_measured_fused_moe_rows():
    """Qwen3-30B-A3B's shape is measured in B200's nvfp4 fused-MoE table: the plan says so,
    passes check, and a decode step is faster than the fp8 checkpoint's."""
    mf = load_model(QWEN)
    tpot = {}
    for wd in ("nvfp4", "fp8"):
        plan = solve(replace(mf, model=replace(mf.model, weight_dtype=wd)), B200,
                     pins={"tp": 1, "dp": 8, "ep": 8, "etp": 1}, time_limit_s=10).data
        assert plan["inputs"]["calibration"]["moe_source"][wd] == "table"
        assert not [x for x in check_plan(plan) if x.severity == "error"]
        tpot[wd] = plan["metrics"]["tpot_s"]
    assert tpot["nvfp4"] < tpot["fp8"]


def test_nvfp4_is_refused_without_fp4_tensor_cores_and_for_training(tmp_path):
    with pytest.raises(InputError, match=r"model\.weight_dtype: nvfp4 weights need FP4 tensor "
                                         r"cores .*H100-SXM5-80GB has no fp4 peak \(Hopper"):
        make_problem(LLAMA, H100)
    r = CliRunner().invoke(main, ["solve", "--model", str(LLAMA), "--hw", str(H100),
                                  "--out", str(tmp_path / "plan.json")])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert "Hopper and older cannot run NVFP4 GEMMs" in r.output
    with pytest.raises(InputError, match="model.weight_dtype"):  # a decode pool on Hopper
        solve(replace(load_model(LLAMA), workload=replace(load_model(LLAMA).workload,
                                                          phase="both", tpot_ms=50)),
              B200, decode_hw=H100, time_limit_s=5)
    train = make_problem(PROBLEMS / "models" / "llama3-70b.yaml", B200).workload
    with pytest.raises(InputError, match="nvfp4 weights are a serving checkpoint"):
        make_problem(load_model(LLAMA), B200, train)
    with pytest.raises(InputError, match="weight_scaling: describes an fp8 checkpoint"):
        from autopar.spec import parse_model
        parse_model({"model": {**_llama_fields(), "weight_dtype": "nvfp4",
                               "weight_scaling": "block"}}, "m.yaml")


def _llama_fields() -> dict:
    return {"name": "l", "layers": 2, "hidden": 1024, "heads": 8, "ffn_hidden": 4096,
            "vocab": 1000}


def test_fp4_peaks_are_blackwell_only_and_never_a_16_bit_fallback():
    peaks = {n: load_hardware_gpu(n) for n in ("B200", "B300", "GB200", "GB300",
                                               "H100-SXM5-80GB")}
    assert {n: g.peak_flops.get("fp4", 0) / 1e12 for n, g in peaks.items()} == {
        "B200": 9000, "B300": 13125, "GB200": 10000, "GB300": 15000, "H100-SXM5-80GB": 0}
    b200 = peaks["B200"]
    assert b200.flops("nvfp4") == 9000e12
    assert b200.flops("fp32") == 4500e12  # a dtype without a peak never gets the 4-bit one
    p16 = make_problem(_bf16(load_model(LLAMA)), B200)
    p4 = make_problem(LLAMA, B200)
    # MFU <= 1 bound: the fp4 peak only bounds a model whose GEMMs run in 4 bits
    assert compute_floor(p16) == pytest.approx(2 * compute_floor(p4))


def load_hardware_gpu(name: str):
    return parse_hardware({"name": "x", "gpu": {"type": name}, "nodes": 1, "gpus_per_node": 1,
                           "intra_node": {"bandwidth_gbps": 900, "latency_us": 3}}, "hw").gpu


def test_a_stated_gpu_may_give_an_fp4_peak():
    hw = parse_hardware({"name": "x", "gpu": {"memory_gb": 80, "tflops": {"bf16": 1000,
                                                                          "fp4": 4000},
                                              "hbm_tbps": 4},
                         "nodes": 1, "gpus_per_node": 1}, "hw.yaml")
    assert hw.gpu.flops("nvfp4") == 4000e12
    with pytest.raises(InputError, match=r"gpu\.tflops\.fp2: unknown dtype; known: .*fp4"):
        parse_hardware({"name": "x", "gpu": {"memory_gb": 80, "tflops": {"fp2": 1},
                                             "hbm_tbps": 4},
                        "nodes": 1, "gpus_per_node": 1}, "hw.yaml")


# ----------------------------------------------------------------------------- HF configs
def _hf(quant: dict | None) -> dict:
    cfg = {"hidden_size": 1024, "num_attention_heads": 8, "num_hidden_layers": 2,
           "intermediate_size": 4096, "vocab_size": 1000, "torch_dtype": "bfloat16"}
    return {**cfg, "quantization_config": quant} if quant else cfg


NVFP4_GROUP = {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16}


@pytest.mark.parametrize("quant", [
    # ModelOpt, flat in config.json
    {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16,
     "ignore": ["lm_head"]},
    # ModelOpt, nested as in hf_quant_config.json
    {"quant_method": "modelopt", "quantization": {"quant_algo": "NVFP4", "group_size": 16,
                                                  "exclude_modules": ["lm_head"]}},
    # compressed-tensors (llm-compressor) W4A4
    {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
     "config_groups": {"group_0": {"targets": ["Linear"], "weights": NVFP4_GROUP,
                                   "input_activations": NVFP4_GROUP}},
     "ignore": ["lm_head"]},
])
def test_hf_nvfp4_quantization_configs_read_as_nvfp4(quant):
    m = model_from_hf(_hf(quant), "config.json")
    assert (m.weight_dtype, m.weight_scaling, m.dtype) == ("nvfp4", None, "bf16")


@pytest.mark.parametrize("quant, match", [
    ({"quant_method": "modelopt", "quant_algo": "W4A16_NVFP4"},
     r"quantization_config\.quant_algo: 'W4A16_NVFP4' ModelOpt checkpoints are not modelled"),
    ({"quant_method": "modelopt", "quantization": {"quant_algo": "FP8"}},
     r"quantization_config\.quantization\.quant_algo: 'FP8'"),
    ({"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
      "config_groups": {"g": {"weights": NVFP4_GROUP, "input_activations": None}}},
     r"config_groups\.g\.input_activations: missing: NVFP4 with 16-bit activations"),
    ({"quant_method": "compressed-tensors", "format": "float-quantized",
      "config_groups": {"g": {"weights": {"num_bits": 8, "type": "float"}}}},
     r"config_groups\.g\.format: 'float-quantized' compressed-tensors checkpoints"),
    ({"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
      "config_groups": {"g": {"weights": {**NVFP4_GROUP, "group_size": 32},
                              "input_activations": NVFP4_GROUP}}},
     r"config_groups\.g\.weights: expected 4-bit floats in groups of 16"),
    ({"quant_method": "awq", "bits": 4}, r"quantization_config\.quant_method: 'awq'"),
])
def test_other_quantization_configs_stay_one_line_errors(quant, match):
    with pytest.raises(InputError, match=match) as e:
        model_from_hf(_hf(quant), "config.json")
    assert "\n" not in str(e.value)
