"""FLOPs, parameters and memory of a tiny model against hand calculations."""

from __future__ import annotations

from dataclasses import replace

import pytest
from conftest import ONE_GPU, TINY_MODEL

from autopar.api import make_problem
from autopar.cost.evaluate import evaluate
from autopar.cost.layer import FLASH_BWD, MoEState
from autopar.cost.strategy import Strategy
from autopar.model.components import EW_BWD, layer_components, model_flops_per_token, param_count
from autopar.spec import ModelSpec, parse_hardware, parse_model

h, a, kv, d, f, V, s = 64, 4, 2, 16, 128, 100, 32


def tiny():
    return parse_model(TINY_MODEL, "tiny.yaml")


def test_params_by_hand():
    qkv = h * (a * d + 2 * kv * d)  # 64 * 128
    out = a * d * h
    fc1 = h * 2 * f  # gated: gate and up
    fc2 = f * h
    norms = 2 * h
    per_layer = qkv + out + fc1 + fc2 + norms
    total = 2 * per_layer + V * h + V * h + h  # embedding, LM head, final norm
    assert param_count(tiny().model)["total"] == total == 86848


def test_forward_flops_by_hand():
    qkv = 2 * h * (a * d + 2 * kv * d)
    attn = 2 * a * (d + d) * s * 0.5  # QK^T and AV, causal halves
    out = 2 * a * d * h
    mlp = 2 * h * f * 3  # gated: three matrices
    norms = 2 * 5 * h
    layer = qkv + attn + out + mlp + norms
    head = 2 * h * V + 5 * h
    assert model_flops_per_token(tiny().model, s) == pytest.approx(2 * layer + head)
    assert layer == 78464


def test_korthikanti_activation_formula_for_gpt_layer():
    """GPT layer with dropout and no flash attention: s b h (34 + 5 a s / h) bytes."""
    m = ModelSpec("gpt", 1, 2304, 24, 24, 96, 9216, False, 51200, dropout=True)
    seq = 2048
    comps = layer_components(m, 0, seq, causal=False, flash=False)
    per_token = sum(c.act_bytes_sharded + c.act_bytes_replicated for c in comps)
    assert per_token == pytest.approx(m.hidden * (34 + 5 * m.heads * seq / m.hidden))


def test_training_memory_by_hand():
    p = make_problem(tiny(), parse_hardware(ONE_GPU, "one.yaml"))
    st = Strategy(1, 1, 1, 1, 1, 1, 1, 1)
    ev = evaluate(p, st, [0, 2], [MoEState(), MoEState()])
    mem = ev.stages[0].memory
    params = 86848
    assert mem.weights == 2 * params
    assert mem.gradients == 4 * params  # fp32 main gradients
    assert mem.optimizer == 12 * params  # fp32 master, Adam m and v
    # saved activations per token per layer (bf16, flash attention, no dropout):
    # attention norm 2h, QKV input 2h, Q/K/V 2(ad + 2 kv d), out-proj input 2ad,
    # MLP norm 2h, FC1 input 2h, gate+up 2*2f, activation output 2f
    per_layer = 2 * h + 2 * h + 2 * (a * d + 2 * kv * d) + 2 * a * d + 2 * h + 2 * h \
        + 2 * (2 * f + f)
    head = 2 * h + 4 * V + 2 * h  # final norm input, fp32 logits, LM head input
    assert mem.activations == s * (2 * per_layer + head)
    assert mem.total == mem.weights + mem.gradients + mem.optimizer + mem.activations


def test_zero1_divides_optimizer_states_by_dp():
    hw = dict(ONE_GPU, gpus_per_node=4, intra_node={"bandwidth_gbps": 100})
    base = make_problem(tiny(), parse_hardware(hw, "four.yaml"))
    p = make_problem(tiny(), base.hw, replace(base.workload, batch=4))
    z0 = evaluate(p, Strategy(4, 1, 1, 4, 1, 1, 1, 1, zero=0), [0, 2], [MoEState()] * 2)
    z1 = evaluate(p, Strategy(4, 1, 1, 4, 1, 1, 1, 1, zero=1), [0, 2], [MoEState()] * 2)
    assert z1.stages[0].memory.optimizer == pytest.approx(z0.stages[0].memory.optimizer / 4)
    assert z1.stages[0].memory.gradients == z0.stages[0].memory.gradients


def test_full_recompute_adds_one_forward():
    p = make_problem(tiny(), parse_hardware(ONE_GPU, "one.yaml"))
    none = evaluate(p, Strategy(1), [0, 2], [MoEState()] * 2).stages[0].layer_costs[0]
    full = evaluate(p, Strategy(1, recompute="full"), [0, 2], [MoEState()] * 2)
    lc = full.stages[0].layer_costs[0]
    assert lc.recompute == pytest.approx(none.compute_fwd)
    # GEMMs: dgrad + wgrad = 2x the forward, the fused attention core 2.5x (it recomputes
    # the scores); memory-bound kernels EW_BWD x theirs
    gemm = sum((FLASH_BWD if c.role == "heads" else 2) * (c.time_s - c.ew_s)
               for c in lc.components)
    ew = sum(c.ew_s for c in lc.components)
    assert ew > 0 and lc.compute_bwd == pytest.approx(gemm + EW_BWD * ew)
    assert any(c.role == "heads" for c in lc.components) and p.flash_attention
    assert lc.act_bytes == s * h * 2  # only the layer input survives


def test_moe_memory_counts_all_experts_compute_only_active():
    m = ModelSpec("moe", 1, 64, 4, 4, 16, 0, True, 100, experts=8, top_k=2,
                  expert_ffn_hidden=32)
    counts = param_count(m)
    expert = 3 * 64 * 32
    assert counts["total"] - counts["active"] == (8 - 2) * expert
