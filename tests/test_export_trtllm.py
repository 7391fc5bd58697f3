"""`autopar export --to trtllm`: the LLM API options parse back (yaml.safe_load, the names of
tensorrt_llm/llmapi/llm_args.py) to the plan's layout, TensorRT-LLM's moe_tp x moe_ep = tp
holds, and the KV cache fraction covers the plan's KV cache without ever being 1.0."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from autopar.export import trtllm_entry, trtllm_text
from autopar.export.engines import TIGHT_FRACTION
from autopar.export.trtllm import kv_fraction
from autopar.schema.gpus import gpu_records

GOLDEN = Path(__file__).parent / "golden"
SERVING = ["qwen3-decode", "deepseek-v3-decode", "mixtral-decode", "seed-serving",
           "hf-mixtral-decode"]


def load(name: str) -> dict:
    return json.loads((GOLDEN / f"{name}.json").read_text())


@pytest.mark.parametrize("name", SERVING)
def test_the_yaml_parses_back_to_the_plans_layout(name):
    plan = load(name)
    s, w = plan["strategy"], plan["inputs"]["workload"]
    a = yaml.safe_load(trtllm_text(plan, "yaml"))
    e = trtllm_entry(plan)
    adp = a.get("enable_attention_dp", False)
    width = a["tensor_parallel_size"]
    tp, dp = (1, width) if adp else (width, e["instances"])
    assert (tp * dp, a["pipeline_parallel_size"]) == (s["tp"] * s["dp"], s["pp"])
    if e["exact"]:
        assert (tp, dp) == (s["tp"], s["dp"])
    else:
        assert e["why"]
    if plan["inputs"]["model"].get("experts"):
        assert (a["moe_expert_parallel_size"], a["moe_tensor_parallel_size"]) == (s["ep"],
                                                                                  s["etp"])
        assert a["moe_expert_parallel_size"] * a["moe_tensor_parallel_size"] == width
    assert a["max_seq_len"] == w["input_len"] + w["output_len"]
    assert a["max_batch_size"] == s["samples_per_replica"]
    assert a["max_num_tokens"] >= a["max_batch_size"]
    frac = a["kv_cache_config"]["free_gpu_memory_fraction"]
    fullest = max((g["memory"] for g in gpu_records(plan)), key=lambda x: x["total_bytes"])
    free = fullest["capacity_bytes"] - (fullest["total_bytes"] - fullest["kv_cache_bytes"])
    assert 0 < frac <= TIGHT_FRACTION < 1.0
    assert frac * free >= fullest["kv_cache_bytes"]  # the plan's KV cache fits


def test_exactness_on_the_golden_plans():
    assert trtllm_entry(load("qwen3-decode"))["exact"]  # DP 8 x EP 8: attention DP
    for name in ("mixtral-decode", "deepseek-v3-decode"):  # DP x (EP x ETP): attention DP
        assert trtllm_entry(load(name))["exact"], name
        plan = load(name)  # TP 2 inside each DP group: TensorRT-LLM cannot
        plan["strategy"] |= {"tp": 2, "dp": plan["strategy"]["dp"] // 2}
        e = trtllm_entry(plan)
        assert not e["exact"] and "tp_size = 1 under enable_attention_dp" in e["why"]
    seed = trtllm_entry(load("seed-serving"))
    assert not seed["exact"] and "two-batch overlap" in seed["why"]
    assert seed["args"]["enable_chunked_prefill"] and seed["args"]["max_num_tokens"] == 2048


def test_a_dense_plan_is_dp_servers():
    plan = load("qwen3-decode")
    plan["inputs"]["model"]["experts"] = 0
    plan["strategy"] |= {"tp": 2, "dp": 4, "ep": 1, "etp": 2}
    e = trtllm_entry(plan)
    assert e["exact"] and e["instances"] == 4 and e["args"]["tensor_parallel_size"] == 2
    assert "moe_expert_parallel_size" not in e["args"]
    assert "# DP 4: start 4 such servers" in trtllm_text(plan)


def test_a_broken_moe_split_is_inexact():
    plan = load("qwen3-decode")
    plan["strategy"] |= {"ep": 4, "etp": 1}  # 4 x 1 != 8
    e = trtllm_entry(plan)
    assert not e["exact"] and "moe_ep x moe_tp = 8" in e["why"]


def test_the_kv_fraction_is_never_one():
    frac, need = kv_fraction({"kv_cache_bytes": 70e9, "capacity_bytes": 80e9,
                              "total_bytes": 79.5e9})
    assert need > TIGHT_FRACTION and frac == TIGHT_FRACTION
    frac, need = kv_fraction({"kv_cache_bytes": 20e9, "capacity_bytes": 80e9,
                              "total_bytes": 60e9})
    assert frac == 0.5 and need == 0.5


def test_the_command_writes_the_options_and_serves():
    plan = load("deepseek-v3-decode")  # 16 GPUs on 2 nodes: one MPI rank per GPU
    text = trtllm_text(plan, model_path="deepseek-ai/DeepSeek-V3")
    body = re.search(r"<<'EOF'\n(.*?)^EOF\n", text, re.S | re.M).group(1)
    assert yaml.safe_load(body) == trtllm_entry(plan)["args"]
    run = text.splitlines()[-1]
    assert run.startswith("mpirun -n 16 ") and "trtllm-serve deepseek-ai/DeepSeek-V3" in run
    before = copy.deepcopy(plan)
    trtllm_text(plan)
    assert plan == before


def test_the_trtllm_rules_refuse_what_the_export_cannot_write():
    """What the export marks inexact for attention DP (TP inside DP groups) the
    `--framework trtllm` table refuses, so a trtllm run never plans it."""
    from autopar.spec.frameworks import layout_values, load_framework

    fw = load_framework("trtllm")
    for name, refused in (("mixtral-decode", True), ("qwen3-decode", False)):
        plan = load(name)
        if refused:  # TP 2 inside each DP group
            plan["strategy"] |= {"tp": 2, "dp": plan["strategy"]["dp"] // 2}
        m, s = plan["inputs"]["model"], plan["strategy"]
        ids = [r.id for r in fw.broken(layout_values(s, m["layers"], m["experts"], 0,
                                                     m["heads"]))]
        assert ("attention-dp-is-unsharded" in ids) == refused
        assert ("tp_size = 1" in trtllm_entry(plan)["why"]) == refused
