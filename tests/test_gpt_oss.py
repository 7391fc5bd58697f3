"""gpt-oss as its checkpoint is: MXFP4 experts (4.25 bits a weight, 16-bit rest) and
sliding-window layers (128 tokens) beside full ones; Llama 4's chunked layers. Memory, KV
cache and FLOPs against hand calculations from the published config.json, and `autopar check`
recomputing them (docs/models.md, docs/cost-model.md `mxfp4`, `attention-window`)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import PROBLEMS

from autopar.api import make_problem, solve
from autopar.check.verify import check_plan
from autopar.cost.calibration import Calibration
from autopar.cost.layer import Problem
from autopar.errors import InputError
from autopar.model.components import layer_components, param_count, weight_bytes
from autopar.serve.evaluate import Evaluator, Layout
from autopar.spec import Workload, load_hardware, load_model, parse_model

HF = Path(__file__).parent / "data" / "hf"
H100 = PROBLEMS / "hw" / "h100-8x.yaml"
B200 = PROBLEMS / "hw" / "b200-8x.yaml"
MXFP4 = (4 + 8 / 32) / 8  # E2M1 nibbles and one E8M0 byte per 32 values
DECODE = Workload("inference", 64, phase="decode", input_len=2048, output_len=512)


def _config(name: str) -> dict:
    return json.loads((HF / f"{name}.json").read_text())


def _errors(plan: dict) -> list:
    return [x for x in check_plan(plan) if x.severity == "error"]


@pytest.fixture(scope="module")
def oss120_h100() -> dict:
    """gpt-oss-120b serving on 8 H100 at TP 1, EP 8 (the layout the search picks there)."""
    return solve(HF / "gpt-oss-120b.json", H100, DECODE, pins={"tp": 1, "ep": 8},
                 time_limit_s=10).data


def test_gpt_oss_120b_on_8_h100_weights_per_gpu_match_the_config_by_hand(oss120_h100):
    """Each GPU holds the 16-bit attention, router, norms, embedding and head whole (TP 1)
    and 128 / 8 experts of every layer at MXFP4's 4.25 bits."""
    c = _config("gpt-oss-120b")
    h, L, hd = c["hidden_size"], c["num_hidden_layers"], c["head_dim"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    attention = h * (q + 2 * kv) + q * h
    router, norms = h * c["num_local_experts"], 2 * h
    sixteen_bit = L * (attention + router + norms) + 2 * c["vocab_size"] * h + h
    experts = L * (c["num_local_experts"] // 8) * 3 * h * c["intermediate_size"]
    hand = 2 * sixteen_bit + MXFP4 * experts
    got = max(r["memory"]["weights_bytes"] for r in oss120_h100["gpus"]["memory"])
    assert got == pytest.approx(hand, rel=0.02)
    assert got < 0.4 * (2 * sixteen_bit + 2 * experts)  # not the 16-bit experts of before


def test_gpt_oss_sliding_layers_keep_128_tokens_of_kv_cache(oss120_h100):
    """vLLM's and SGLang's hybrid allocators keep a sliding layer's last 128 tokens: half of
    gpt-oss's 36 layers hold 128, the other half the whole 2048 + 512."""
    c = _config("gpt-oss-120b")
    per_token = 2 * c["num_key_value_heads"] * c["head_dim"] * 2  # K and V, bf16
    tokens = 18 * (2048 + 512) + 18 * c["sliding_window"]
    seqs = 64 // oss120_h100["strategy"]["dp"]
    mem = oss120_h100["gpus"]["memory"][0]["memory"]
    assert mem["kv_cache_bytes"] == pytest.approx(seqs * tokens * per_token, rel=1e-9)


def test_check_passes_the_gpt_oss_plan_and_catches_tampered_figures(oss120_h100):
    """Each tampered figure keeps the plan's memory sum whole, so only the recomputation
    (16-bit experts; sliding layers holding the whole context) can catch it."""
    assert not _errors(oss120_h100)
    for key, factor in (("weights_bytes", 2 / MXFP4), ("kv_cache_bytes", 1.9)):
        bad = json.loads(json.dumps(oss120_h100))
        mem = bad["gpus"]["memory"][0]["memory"]
        delta = mem[key] * (factor - 1)
        mem[key] += delta
        mem["total_bytes"] += delta
        assert any(x.path.endswith(key) for x in _errors(bad)), key


def test_check_catches_attention_flops_priced_as_full(oss120_h100):
    """The plan's FLOPs with the sliding layers' scores counted over the whole context are
    caught: check restates the window rule (check/windows.py), not the components'."""
    bad = json.loads(json.dumps(oss120_h100))
    m = load_model(HF / "gpt-oss-120b.json").model
    full = replace(m, window_layers=(), attention_window=0)
    ctx = DECODE.context_len
    extra = sum(c.flops_per_token for c in layer_components(full, 0, ctx, decode=True)
                if c.role == "heads") - sum(c.flops_per_token for c in layer_components(
                    m, 0, ctx, decode=True) if c.role == "heads")
    bad["metrics"]["model_flops_per_step"] += extra * 18 * DECODE.batch
    assert any("model_flops_per_step" in x.path for x in _errors(bad))


def test_a_sliding_layer_attends_to_its_window_at_8192_tokens():
    """s = 8192, w = 128, causal, fused: query i sees min(i, w) keys, w - w^2 / (2 s) on
    average; a full layer s / 2."""
    m = load_model(HF / "gpt-oss-20b.json").model
    assert m.window(0) == 128 and m.window(1) == 0  # sliding, full, sliding, ...
    s, w = 8192, 128
    a, d = m.heads, m.head_dim
    attn = {layer: next(c.flops_per_token for c in layer_components(m, layer, s)
                        if c.role == "heads") for layer in (0, 1)}
    assert attn[0] == pytest.approx(2 * a * (d + d) * (w - w * w / (2 * s)))
    assert attn[1] == pytest.approx(2 * a * (d + d) * s / 2)
    exact = (w * (w + 1) / 2 + (s - w) * w) / s  # sum of min(i, w) over i = 1..s, over s
    assert attn[0] / (4 * a * d) == pytest.approx(exact, rel=1e-3)
    # decoding with 8192 tokens before it, a token reads w keys
    dec = next(c.flops_per_token for c in layer_components(m, 0, s, decode=True)
               if c.role == "heads")
    assert dec == pytest.approx(2 * a * w * (d + d))


def test_llama4_chunked_layers_read_from_no_rope_layers():
    """Llama 4's RoPE layers (three of four) attend in 8192-token chunks: a query sees its
    chunk's earlier keys, c / 2 on average over whole chunks."""
    m = load_model(HF / "llama-4-scout.json").model
    assert (m.window_kind, m.attention_window, len(m.window_layers)) == ("chunked", 8192, 36)
    assert m.window(3) == 0 and m.window(0) == 8192
    s, c = 3 * 8192, 8192
    a, d = m.heads, m.head_dim
    attn = next(x.flops_per_token for x in layer_components(m, 0, s) if x.role == "heads")
    assert attn == pytest.approx(2 * a * 2 * d * c / 2)


def test_a_full_attention_model_is_unchanged_by_all_full_layer_types():
    """`layer_types` of full layers only is no window: every figure as without it."""
    cfg = _config("gpt-oss-20b")
    cfg["layer_types"] = ["full_attention"] * cfg["num_hidden_layers"]
    from autopar.spec.hf import model_from_hf

    m = model_from_hf(cfg, "gpt-oss-20b.json")
    assert not m.window_layers
    plain = load_model(HF / "gpt-oss-20b.json").model
    assert m == replace(plain, window_layers=(), attention_window=0)
    w = Workload("inference", 8, phase="prefill", input_len=8192)
    full = [layer_components(m, x, w.context_len) for x in range(2)]
    assert full[0] == full[1]  # both layers as the full one


def test_mxfp4_decode_reads_its_experts_at_4_25_bits():
    """One decode step on one GPU reads every expert weight (top_k = experts): the MXFP4
    step is shorter than the 16-bit one by (2 - 0.53125) B per expert weight at HBM speed."""
    m = replace(load_model(HF / "gpt-oss-20b.json").model, layers=2, experts=4, top_k=4)
    hw = replace(load_hardware(H100), gpus_per_node=1)
    wl = Workload("inference", 1, phase="decode", input_len=64, output_len=0)
    mem, step = {}, {}
    for x in (m, replace(m, expert_weight_dtype=None)):
        p = Problem(x, hw, wl, Calibration(kernel_floor_s=0.0))  # flat fractions, no floor
        dec = Evaluator(p).phase(Layout(1, 1, 1, 1, 1), "decode", 1)
        mem[x.expert_weight_dtype] = dec.evaluation.stages[0].memory.weights
        step[x.expert_weight_dtype] = dec.evaluation.step_time
    n = param_count(m)["expert"]
    assert mem[None] - mem["mxfp4"] == pytest.approx(n * (2 - MXFP4))
    hbm = hw.gpu.hbm_bytes_per_s * Calibration().hbm_eff
    assert step[None] - step["mxfp4"] == pytest.approx(n * (2 - MXFP4) / hbm, rel=0.03)


def test_mxfp4_experts_run_at_the_16_bit_rate_on_hopper_and_fp4_on_blackwell():
    from autopar.cost.fp8 import linear_dtype, peak_dtype

    m = load_model(HF / "gpt-oss-20b.json").model
    for hw, want in ((H100, "bf16"), (B200, "mxfp4")):
        p = make_problem(m, load_hardware(hw), DECODE)
        assert (linear_dtype(p, "expert"), linear_dtype(p, "column")) == (want, "bf16")
        assert peak_dtype(p) == want


def test_gpt_oss_20b_on_b200_quotes_the_fp4_peak_and_passes_check():
    plan = solve(HF / "gpt-oss-20b.json", B200, DECODE, time_limit_s=10).data
    assert plan["metrics"]["peak_dtype"] == "mxfp4"
    assert plan["metrics"]["peak_flops_per_s"] == pytest.approx(8 * 9000e12)
    assert not _errors(plan)


def test_whole_gpt_oss_weights_as_vllm_states_them():
    """vLLM's gpt-oss post: MXFP4 MoE weights bring the models to about 63 GB (120b) and
    14 GB (20b); the checkpoints hold 65.3 GB and 13.8 GB."""
    big = weight_bytes(load_model(HF / "gpt-oss-120b.json").model)
    small = weight_bytes(load_model(HF / "gpt-oss-20b.json").model)
    assert big / 1e9 == pytest.approx(65.3, rel=0.03)
    assert small / 1e9 == pytest.approx(13.8, rel=0.03)


def _yaml(**extra) -> dict:
    return {"model": {"name": "x", "layers": 4, "hidden": 64, "heads": 4, "vocab": 128,
                      "experts": 4, "top_k": 2, "expert_ffn_hidden": 64, **extra}}


@pytest.mark.parametrize("extra, field", [
    ({"expert_weight_dtype": "mxfp5"}, "expert_weight_dtype"),
    ({"experts": 0, "top_k": 0, "ffn_hidden": 64, "expert_weight_dtype": "mxfp4"},
     "expert_weight_dtype"),
    ({"weight_dtype": "mxfp4"}, "weight_dtype"),
    ({"window_layers": [0, 2]}, "attention_window"),
    ({"attention_window": 128}, "window_layers"),
    ({"attention_window": 128, "window_layers": [4]}, "window_layers"),
    ({"attention_window": 128, "window_layers": [0], "window_kind": "local"}, "window_kind"),
])
def test_yaml_model_fields_are_validated_in_one_line(extra, field):
    with pytest.raises(InputError, match=field):
        parse_model(_yaml(**extra), "m.yaml")


def test_yaml_states_what_the_hf_config_does():
    m = parse_model(_yaml(expert_weight_dtype="mxfp4", attention_window=16,
                          window_layers=[0, 2]), "m.yaml").model
    assert (m.expert_bytes, m.linear_bytes, m.window(2), m.window(1)) == (MXFP4, 2, 16, 0)


def test_training_with_mxfp4_experts_is_refused_as_nvfp4_weights_are():
    train = Workload("training", 8, 4096)
    with pytest.raises(InputError, match="expert_weight_dtype"):
        make_problem(HF / "gpt-oss-20b.json", H100, train)


@pytest.mark.parametrize("kind", ["sliding", "chunked"])
def test_check_passes_windowed_training_and_prefill_plans(kind):
    """Training (recompute, TP, PP searched) and prefill of a model with windows on every
    other layer: the search's figures and check's restatement agree."""
    m = parse_model({"model": {
        "name": f"win-{kind}", "layers": 8, "hidden": 1024, "heads": 16, "kv_heads": 4,
        "ffn_hidden": 4096, "vocab": 32000, "attention_window": 512,
        "window_layers": [0, 2, 4, 6], "window_kind": kind}}, "m.yaml").model
    for w in (Workload("training", 16, 4096), Workload("inference", 8, input_len=3000)):
        plan = solve(m, H100, w, time_limit_s=3).data
        assert not _errors(plan), (w.kind, _errors(plan))
