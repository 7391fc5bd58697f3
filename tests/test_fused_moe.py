"""Measured fused-MoE layers (`moe_table:`): lookup, transfer to unmeasured shapes, the served
MoE layer priced on them, and the readers that build the table."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from autopar.api import make_problem
from autopar.cli import main
from autopar.cost.bundled import bundled_calibration
from autopar.cost.calibration import parse_calibration
from autopar.cost.fused_moe import fused_moe_time
from autopar.cost.kernels import MoETable
from autopar.cost.layer import MoEState, layer_cost, strategy_groups
from autopar.cost.strategy import Strategy
from autopar.errors import InputError
from autopar.spec.datafile import read_data

ROOT = Path(__file__).resolve().parent.parent
AIC = ROOT / "tests/data/aiconfigurator"
QWEN = (2048, 768, 8, 128)


def flat_roofline(shape, tp, ep, tokens):  # noqa: ANN001, ANN201 (a stand-in roofline)
    h, i, k, _ = shape
    return 6 * h * i / tp * tokens * k / ep / 1e15 + 1e-6


def table(*rows):  # noqa: ANN002, ANN201
    return MoETable(tuple(sorted((*QWEN, tp, ep, n, t) for tp, ep, n, t in rows)))


def test_measured_points_are_exact_and_log_linear_between():
    t = table((1, 8, 16, 90e-6), (1, 8, 64, 160e-6))
    assert t.time_s(QWEN, 1, 8, 16, flat_roofline) == pytest.approx(90e-6)
    assert t.time_s(QWEN, 1, 8, 64, flat_roofline) == pytest.approx(160e-6)
    assert t.time_s(QWEN, 1, 8, 32, flat_roofline) == pytest.approx((90e-6 * 160e-6) ** 0.5)


def test_below_the_range_holds_the_time_above_it_grows_with_the_roofline():
    t = table((1, 8, 16, 90e-6), (1, 8, 64, 160e-6))
    assert t.time_s(QWEN, 1, 8, 2, flat_roofline) == pytest.approx(90e-6)
    grow = flat_roofline(QWEN, 1, 8, 6400) / flat_roofline(QWEN, 1, 8, 64)
    assert t.time_s(QWEN, 1, 8, 6400, flat_roofline) == pytest.approx(160e-6 * grow)


def test_an_unmeasured_shape_or_layout_is_transferred_by_the_roofline_ratio():
    t = table((1, 8, 16, 90e-6), (1, 4, 16, 140e-6))
    big = (4096, 1536, 8, 128)  # twice the hidden and inter size
    ratio = flat_roofline(big, 1, 8, 16) / flat_roofline(QWEN, 1, 8, 16)
    assert t.time_s(big, 1, 8, 16, flat_roofline) == pytest.approx(90e-6 * ratio)
    assert t.nearest(QWEN, 1, 16) == (QWEN, 1, 8)  # the nearer EP of the same shape
    assert t.source(QWEN) == "table"
    assert t.source(big) == "transfer from hidden 2048 inter 768 top-8 of 128"


GOOD = {"dtype": "bf16", "hidden": 2048, "inter": 768, "topk": 8, "experts": 128, "tp": 1,
        "ep": 8, "tokens": [16, 32], "time_us": [91.1, 93.1]}


@pytest.mark.parametrize("row, field", [
    ({"hidden": 0}, "hidden"), ({"topk": 200}, "topk"), ({"dtype": "int3"}, "dtype"),
    ({"ep": 256}, "ep"), ({"time_us": [1.0, -1]}, r"time_us\[1\]"), ({"extra": 1}, "extra"),
    ({"time_us": [1.0]}, "time_us"), ({"tokens": [16, 16]}, "tokens"),
])
def test_bad_moe_series_name_the_field(row, field):
    with pytest.raises(InputError, match=rf"moe_table\[0\]\.{field}"):
        parse_calibration({"moe_table": [{**GOOD, **row}]}, "c.yaml")


def test_the_same_cell_twice_is_refused():
    with pytest.raises(InputError, match="two measurements"):
        parse_calibration({"moe_table": [GOOD, GOOD]}, "c.yaml")


def _problem(calibration, model="qwen3-30b-a3b.yaml", **w):  # noqa: ANN001, ANN003, ANN202
    p = make_problem(ROOT / "problems/models" / model, ROOT / "problems/hw/h100-8x.yaml",
                     calibration=calibration)
    return replace(p, workload=replace(p.workload, **w)) if w else p


def test_a_served_moe_layer_runs_the_measured_op_and_training_does_not():
    p = _problem("bundled", kind="inference", phase="decode", batch=128, input_len=4000,
                 output_len=1000)
    s = Strategy(8, 1, 1, 8, 8, 1, micro_batch=16)
    layer = next(x for x in range(p.model.layers) if p.model.is_moe_layer(x))
    lc = layer_cost(p, s, layer, MoEState(1.0, 16), strategy_groups(p, s))  # 128 / EP 8
    experts = [c for c in lc.components if c.role == "expert"]
    routed = 16 * 8  # 16 sequences x top-8, one decode token each
    op = fused_moe_time(p.model, p.hw, p.calib, s.etp, s.ep, routed, "bf16")
    # 128 tokens enter the layer over the EP group of 8: the table's row at tokens = 128
    measured = p.calib.kernels.moe["bf16"].series[(QWEN, 1, 8)]
    assert op == pytest.approx(dict(measured)[128])
    assert sum(c.time_s for c in experts) == pytest.approx(op)
    assert experts[0].time_s == pytest.approx(2 * experts[1].time_s)  # fc1: 2/3 of FLOPs
    replicas = layer_cost(p, s, layer, MoEState(1.0, 18), strategy_groups(p, s))
    assert sum(c.time_s for c in replicas.components if c.role == "expert") > op  # 2 more
    train = _problem("bundled", kind="training", batch=64, seq_len=4096)
    lt = layer_cost(train, s, layer, MoEState(), strategy_groups(train, s))
    fc1 = next(c for c in lt.components if c.role == "expert")
    assert fc1.ew_s > 0  # a GEMM with its SwiGLU kernel after it, not the fused op


def test_plan_names_the_moe_source_and_passes_check(tmp_path):
    out = tmp_path / "plan.json"
    r = CliRunner().invoke(main, ["solve", "--model", "problems/models/qwen3-30b-a3b.yaml",
                                  "--hw", "problems/hw/h100-8x.yaml", "--calibration",
                                  "bundled", "--quiet", "--time-limit", "10", "--workers", "1",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    cal = json.loads(out.read_text())["inputs"]["calibration"]
    assert cal["moe_source"] == {"bf16": "table"}
    assert cal["moe_layers"]["bf16"] > 1000
    r = CliRunner().invoke(main, ["check", str(out)])
    assert r.exit_code == 0 and "0 errors" in r.output, r.output


def test_bundled_moe_tables_cover_the_served_models_of_the_examples():
    cal = bundled_calibration("H100-SXM5-80GB")
    moe = cal.kernels.moe
    assert {"bf16", "fp8", "fp8_block"} <= set(moe)
    assert moe["bf16"].source(QWEN) == "table"
    assert moe["bf16"].source((4096, 14336, 2, 8)) == "table"  # Mixtral-8x7B
    assert "nvfp4" in bundled_calibration("B200").kernels.moe


def test_from_aiconfigurator_reads_the_fused_moe_table(tmp_path):
    out = tmp_path / "calib.yaml"
    r = CliRunner().invoke(main, ["calibrate", "--from-aiconfigurator", "h100_sxm",
                                  "--aiconfigurator-data", str(AIC), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "16 fused-MoE measurements" in r.output  # 2 dtypes x 2 EP x 4 token counts, balanced
    c = parse_calibration(read_data(out), str(out))
    assert set(c.kernels.moe) == {"bf16", "fp8"}
    assert c.kernels.moe["bf16"].time_s(QWEN, 1, 8, 1024, flat_roofline) == pytest.approx(
        147.8507e-6, rel=1e-5)
    r = CliRunner().invoke(main, ["calibrate", "--from-aiconfigurator", "h100_sxm",
                                  "--aiconfigurator-data", str(AIC), "--moe-framework", "none",
                                  "--out", str(tmp_path / "c2.yaml")])
    assert r.exit_code == 0 and "0 fused-MoE measurements" in r.output, r.output


def test_a_block_scaled_fp8_checkpoint_is_served_on_the_block_scaled_tables(tmp_path):
    from autopar.cost.fp8 import gemm_key
    from autopar.spec import load_model

    hf = load_model(ROOT / "problems/models/hf/deepseek-v3-config.json").model
    assert (hf.weight_dtype, hf.weight_scaling) == ("fp8", "block")  # weight_block_size
    p = make_problem(ROOT / "problems/models/deepseek-v3.yaml", ROOT / "problems/hw/h200-8x.yaml")
    assert gemm_key(p, "fp8") == "fp8_block"
    tensor = replace(p, model=replace(p.model, weight_scaling="tensor"))
    assert gemm_key(tensor, "fp8") == "fp8"
    s = Strategy(8, 1, 1, 8, 8, 1, micro_batch=16)
    t_block = fused_moe_time(p.model, p.hw, p.calib, 1, 8, 128, "fp8_block")
    t_tensor = fused_moe_time(p.model, p.hw, p.calib, 1, 8, 128, "fp8")
    assert t_block != t_tensor  # two measured kernels, not one
    layer = 3  # the first MoE layer
    lc = layer_cost(p, s, layer, MoEState(1.0, 32), strategy_groups(p, s))
    assert sum(c.time_s for c in lc.components if c.role == "expert") == pytest.approx(
        fused_moe_time(p.model, p.hw, p.calib, 1, 8, 16 * 8, "fp8_block", 32))
    bad = tmp_path / "m.yaml"
    bad.write_text((ROOT / "problems/models/deepseek-v3.yaml").read_text().replace(
        "  weight_dtype: fp8\n", ""))
    with pytest.raises(InputError, match="weight_scaling"):
        load_model(bad)


def test_served_expert_tp_without_ep_gathers_tokens_not_their_routed_copies():
    """EP 1, ETP 4 serving (vLLM's expert TP with attention DP): each rank holds a slice of
    every expert, so the ETP group gathers each token once and routes it locally."""
    from autopar.cost import comm

    p = _problem(None, kind="inference", phase="decode", batch=16384, input_len=4000,
                 output_len=1000)
    s = Strategy(8, 1, 1, 8, 1, 4, micro_batch=2048)
    g = strategy_groups(p, s)
    layer = next(x for x in range(p.model.layers) if p.model.is_moe_layer(x))
    lc = layer_cost(p, s, layer, MoEState(1.0, 128), g)
    tokens = 2048 * p.model.hidden * p.model.dtype_bytes * 4  # T / tp x h x b, ETP 4
    want = comm.all_gather(tokens, g["etp"], p.calib) + comm.reduce_scatter(
        tokens, g["etp"], p.calib)
    assert lc.ep_fwd == pytest.approx(want)
    train = _problem(None, kind="training", batch=16384, seq_len=1)  # the same tokens
    lt = layer_cost(train, s, layer, MoEState(1.0, 128), strategy_groups(train, s))
    assert lt.ep_fwd > 4 * want  # Megatron's dispatcher gathers the top-8 routed copies
