"""DeepSeek-V3's multi-token prediction modules [mtp]: read from YAML and HF configs, priced
on the last stage in training, counted in model FLOPs, recomputed by `autopar check`."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import PROBLEMS

from autopar.api import check, solve
from autopar.model.components import layer_components, model_flops_per_token
from autopar.model.mtp import mtp_flops_per_token, mtp_params
from autopar.spec import Workload, load_hardware, load_model, parse_model


def errors(findings: list) -> list:
    return [x for x in findings if x.severity == "error"]


def mixtral(mtp: int):
    mf = load_model(PROBLEMS / "models" / "mixtral-8x7b.yaml")
    return dataclasses.replace(mf, model=dataclasses.replace(mf.model, mtp_layers=mtp))


def test_yaml_and_hf_read_the_depth(tmp_path):
    m = parse_model({"model": {"name": "x", "layers": 2, "hidden": 64, "heads": 4,
                               "ffn_hidden": 128, "vocab": 100, "mtp_layers": 1}}, "m.yaml")
    assert m.model.mtp_layers == 1
    cfg = json.loads((PROBLEMS / "models" / "hf" / "deepseek-v3-config.json").read_text())
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**cfg, "num_nextn_predict_layers": 1}))
    assert load_model(path).model.mtp_layers == 1
    assert load_model(PROBLEMS / "models" / "hf" / "deepseek-v3-config.json").model.mtp_layers == 0


def test_deepseek_v3_module_is_the_published_size():
    """The HF checkpoint's 14 B of MTP weights (685 B - 671 B) hold one MoE layer, the 2h x h
    projection and its own copies of the embedding and head, which training shares."""
    m = load_model(PROBLEMS / "models" / "deepseek-v3.yaml").model
    m = dataclasses.replace(m, mtp_layers=1)
    assert mtp_params(m) + 2 * m.vocab * m.hidden == pytest.approx(14e9, rel=0.04)
    layer = sum(c.flops_per_token * (m.top_k if c.is_expert else 1)
                for c in layer_components(m, m.layers - 1, 4096))
    extra = mtp_flops_per_token(m, 4096) - layer
    assert extra == pytest.approx(2 * 2 * m.hidden ** 2 + 2 * m.hidden * m.vocab, rel=0.01)


def test_training_prices_it_on_the_last_stage_and_check_agrees():
    hw = load_hardware(PROBLEMS / "hw" / "h100-8x.yaml")
    pins = {"tp": 2, "pp": 2, "recompute": "selective"}
    base = solve(mixtral(0), hw, pins=pins, time_limit_s=20).data
    plan = solve(mixtral(1), hw, pins=pins, time_limit_s=20).data
    assert not errors(check(plan, mixtral(1), hw))
    m = mixtral(1).model
    w = base["inputs"]["workload"]
    tokens = w["batch"] * w["seq_len"]
    added = plan["metrics"]["model_flops_per_step"] - base["metrics"]["model_flops_per_step"]
    assert added == pytest.approx(3 * tokens * mtp_flops_per_token(m, w["seq_len"]), rel=1e-9)
    assert plan["metrics"]["step_time_s"] > base["metrics"]["step_time_s"]
    names = {c["name"] for sh in plan["gpus"]["shards"] for c in sh["components"]}
    assert {"mtp0.eh_proj", "mtp0.experts", "mtp0.lm_head"} <= names


@pytest.mark.parametrize("pins", [{"tp": 4, "pp": 2, "recompute": "full", "zero": 3},
                                  {"pp": 4, "ep": 2}, {"tp": 2, "pp": 1}])
def test_plans_with_mtp_pass_check(pins):
    hw = load_hardware(PROBLEMS / "hw" / "h100-8x.yaml")
    plan = solve(mixtral(1), hw, pins=pins, time_limit_s=20).data
    assert not errors(check(plan, mixtral(1), hw)), pins


def test_serving_ignores_it():
    m0, m1 = mixtral(0).model, mixtral(1).model
    assert model_flops_per_token(m1, 100.0) == model_flops_per_token(m0, 100.0)
    hw = load_hardware(PROBLEMS / "hw" / "h100-8x.yaml")

    w = Workload("inference", batch=8, seq_len=1024, phase="decode", input_len=1024,
                 output_len=128)
    a = solve(mixtral(0).model, hw, w, time_limit_s=10).data["metrics"]["step_time_s"]
    b = solve(mixtral(1).model, hw, w, time_limit_s=10).data["metrics"]["step_time_s"]
    assert a == b
