"""[fp8-activations] Saved activations of fp8 training as Transformer Engine keeps them: each
fp8 GEMM's input at 1 byte + the recipe's activation scales instead of 16 bits, the
out-projection's input unquantized under current scaling (Megatron's save_original_input),
what a recompute module reruns not kept at all; `autopar check` recomputes the same bytes."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import PROBLEMS

from autopar.api import solve
from autopar.check.verify import check_plan, format_findings
from autopar.cost.layer import MoEState, Problem, layer_cost, strategy_groups
from autopar.cost.strategy import Strategy
from autopar.spec import GB, GPUSpec, HardwareSpec, LinkSpec, ModelSpec, Workload, load_model

H, F, A, S = 1024, 4096, 8, 512
GPT = ModelSpec(name="gpt", layers=2, hidden=H, heads=A, kv_heads=A, head_dim=H // A,
                ffn_hidden=F, gated_mlp=False, vocab=1000)
FAST = LinkSpec(1e15, 0.0)
HW = HardwareSpec("h", GPUSpec("H100-SXM5-80GB", 1e6 * GB, {"bf16": 1e15, "fp8": 2e15}, 2e12),
                  8, 1, FAST, FAST, 0.0)


def layer(recipe: str | None, tp: int = 1, model: ModelSpec = GPT, flash: bool = True,
          **kw) -> tuple[float, float]:
    """(act_bytes, act_bytes_none) of layer 0 for one micro-batch of one sample."""
    w = Workload("training", batch=8, seq_len=S, precision="fp8" if recipe else None,
                 fp8_recipe=recipe)
    p = Problem(model, HW, w, flash_attention=flash)
    s = Strategy(tp, tp=tp, sequence_parallel=tp > 1, **kw)
    lc = layer_cost(p, s, 0, MoEState(), strategy_groups(p, s))
    return lc.act_bytes, lc.act_bytes_none


def test_bf16_layer_is_korthikantis_count():
    # flash attention, no dropout, plain MLP: norms 2h + 2h, QKV input 2h, Q K V 6h,
    # out-projection input 2h, FC1 input 2h, FC1 output 2f, GeLU output 2f
    assert layer(None) == (S * (16 * H + 4 * F),) * 2


def test_tensorwise_halves_exactly_the_fp8_gemm_inputs():
    # the QKV, FC1 and FC2 inputs (h, h, f values) go from 2 bytes to 1; the out-projection
    # keeps its 16-bit input (save_original_input), nothing else changes
    bf16, fp8 = layer(None)[0], layer("tensorwise")[0]
    assert bf16 - fp8 == S * (H + H + F)
    # TP 2 with sequence parallelism: the replicated inputs split by SP, FC2's by TP
    bf16, fp8 = layer(None, tp=2)[0], layer("tensorwise", tp=2)[0]
    assert bf16 - fp8 == S * (H + H + F) / 2


def test_blockwise_adds_a_fp32_scale_per_128_values():
    tw, bw = layer("tensorwise")[0], layer("blockwise")[0]
    assert bw - tw == pytest.approx(S * (H + H + F) * 4 / 128)


def test_delayed_scaling_keeps_an_fp8_copy_of_the_attention_output_too():
    # delayed: linear_proj saves its fp8 copy while flash attention keeps the 16-bit output
    assert layer("delayed")[0] - layer("tensorwise")[0] == S * H
    # unfused attention does not keep its output: the fp8 copy replaces the 16-bit input
    assert layer("tensorwise", flash=False)[0] - layer("delayed", flash=False)[0] == S * H
    # the attention core recomputed (checkpoint): its output is not kept by the attention
    full, _ = layer("delayed", recompute="selective", recompute_modules=("core_attn",))
    assert full == layer("tensorwise")[0] - S * H


def test_16bit_runs_and_gpus_without_fp8_are_unchanged():
    slow = HardwareSpec("h", GPUSpec("A100-SXM4-80GB", 1e6 * GB, {"bf16": 1e15}, 2e12),
                        8, 1, FAST, FAST, 0.0)
    w = Workload("training", batch=8, seq_len=S, precision="fp8", fp8_recipe="tensorwise")
    p = Problem(GPT, slow, w)
    s = Strategy(1)
    assert layer_cost(p, s, 0, MoEState(), strategy_groups(p, s)).act_bytes == layer(None)[0]


@pytest.mark.parametrize("mods,gone", [
    (("layernorm",), S * (H + H) * 1),  # the norms' outputs: QKV's and FC1's fp8 inputs
    # the checkpointed MLP keeps its input; FC1's 16-bit output and FC2's fp8 input go
    (("mlp",), S * (2 * F + F)),
])
def test_a_rerun_module_keeps_none_of_its_fp8_inputs(mods, gone):
    kept, none = layer("tensorwise", recompute="selective", recompute_modules=mods)
    assert none == layer("tensorwise")[0]
    assert none - kept == gone


def test_moe_layer_expert_inputs_in_fp8_and_moe_act_drops_them():
    m = load_model(PROBLEMS / "models" / "mixtral-8x7b.yaml").model
    bf16, fp8 = layer(None, 2, m, ep=2)[0], layer("tensorwise", 2, m, ep=2)[0]
    routed = S * m.top_k / 2  # copies on the EP rank (TP 2 splits the tokens, balanced)
    # QKV input (h / SP), each routed copy's FC1 input (h) and FC2 input (f_e); the router
    # keeps its 16-bit input
    assert bf16 - fp8 == pytest.approx(S * m.hidden / 2 + routed * (m.hidden
                                                                    + m.expert_ffn_hidden))
    kept, none = layer("tensorwise", 2, m, ep=2, recompute="selective",
                       recompute_modules=("moe_act",))
    assert none - kept == pytest.approx(routed * m.expert_ffn_hidden)  # 1 byte each, all gone


# --------------------------------------------------------------------------- check
def _plan(precision: str | None) -> dict:
    w = Workload("training", batch=16, seq_len=2048, precision=precision)
    hw = HardwareSpec("h", GPUSpec("H100-SXM5-80GB", 80 * GB, {"bf16": 989e12, "fp8": 1979e12},
                                   3.35e12), 8, 1, LinkSpec(450e9, 1e-6),
                      LinkSpec(50e9, 5e-6), 0.0)
    pins = {"tp": 2, "pp": 2, "dp": 2, "micro_batch": 1, "recompute": "selective",
            "recompute_modules": ["layernorm"]}
    model = ModelSpec(name="gpt", layers=4, hidden=H, heads=A, kv_heads=2, head_dim=H // A,
                      ffn_hidden=F, gated_mlp=True, vocab=32000)
    return json.loads(solve(model, hw, w, pins=pins, time_limit_s=5, seed=0,
                            workers=1).to_json())


@pytest.fixture(scope="module")
def plans() -> tuple[dict, dict]:
    return _plan("fp8"), _plan(None)


def test_check_recomputes_fp8_activations_and_catches_16bit_ones(plans):
    fp8, bf16 = plans
    errs = [x for x in check_plan(fp8) if x.severity == "error"]
    assert not errs, format_findings(errs)
    a8, a16 = (p["gpus"]["memory"][0]["memory"] for p in plans)
    assert a8["activations_bytes"] < a16["activations_bytes"]
    bad = copy.deepcopy(fp8)  # the 16-bit figure stated for the fp8 run, total kept coherent
    for g8, g16 in zip(bad["gpus"]["memory"], bf16["gpus"]["memory"], strict=True):
        mem, extra = g8["memory"], g16["memory"]["activations_bytes"]
        mem["total_bytes"] += extra - mem["activations_bytes"]
        mem["activations_bytes"] = extra
    paths = {x.path for x in check_plan(bad) if x.severity == "error"}
    assert any("activations_bytes" in x for x in paths), paths
