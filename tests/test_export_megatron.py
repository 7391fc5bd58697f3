"""`autopar export --to megatron`: the flags parse back (argparse, Megatron's names) to the
plan's layout, and the wrong plan kind for a target is a one-line error."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from autopar.cli.app import main
from autopar.export import megatron_entry, megatron_text

GOLDEN = Path(__file__).parent / "golden"
TRAINING = ["mixtral-training", "deepseek-v3-training-megatron", "llama3-70b-training",
            "gpt3-175b-training", "seed-training", "mixtral-tp-overlap"]


def parser() -> argparse.ArgumentParser:
    """The Megatron-LM flags the exporter writes, as Megatron's own argparse spells them."""
    p = argparse.ArgumentParser()
    for name in ("tensor-model-parallel-size", "pipeline-model-parallel-size",
                 "context-parallel-size", "expert-model-parallel-size",
                 "expert-tensor-parallel-size", "num-layers-per-virtual-pipeline-stage",
                 "num-virtual-stages-per-pipeline-rank", "decoder-first-pipeline-num-layers",
                 "decoder-last-pipeline-num-layers", "micro-batch-size", "global-batch-size",
                 "recompute-num-layers", "num-layers", "hidden-size", "num-attention-heads",
                 "kv-channels", "seq-length", "max-position-embeddings", "ffn-hidden-size",
                 "num-query-groups", "num-experts", "moe-router-topk", "moe-ffn-hidden-size",
                 "moe-shared-expert-intermediate-size", "kv-lora-rank", "q-lora-rank",
                 "qk-head-dim", "qk-pos-emb-head-dim", "v-head-dim", "mtp-num-layers",
                 "moe-deepep-num-sms", "moe-router-num-groups", "moe-router-group-topk"):
        p.add_argument(f"--{name}", type=int, default=None)
    for name in ("cp-comm-type", "recompute-granularity", "recompute-method", "fp8-format",
                 "fp8-recipe", "moe-token-dispatcher-type", "data-parallel-sharding-strategy",
                 "moe-layer-freq"):
        p.add_argument(f"--{name}", default=None)
    p.add_argument("--recompute-modules", nargs="*", default=None)
    for name in ("sequence-parallel", "use-distributed-optimizer", "use-megatron-fsdp",
                 "overlap-grad-reduce", "overlap-param-gather", "tp-comm-overlap",
                 "overlap-moe-expert-parallel-comm", "moe-enable-deepep", "bf16", "fp16",
                 "group-query-attention", "swiglu", "untie-embeddings-and-output-weights",
                 "multi-latent-attention", "account-for-embedding-in-pipeline-split",
                 "account-for-loss-in-pipeline-split", "grad-reduce-in-bf16"):
        p.add_argument(f"--{name}", action="store_true")
    return p


def load(name: str) -> dict:
    return json.loads((GOLDEN / f"{name}.json").read_text())


def parse(plan: dict):
    line = [ln for ln in megatron_text(plan).splitlines() if not ln.startswith("#")][0]
    argv = shlex.split(line)
    return parser().parse_args(argv[argv.index("pretrain_gpt.py") + 1:])


@pytest.mark.parametrize("name", TRAINING)
def test_flags_parse_back_to_the_plans_layout(name):
    plan = load(name)
    s, w = plan["strategy"], plan["inputs"]["workload"]
    a = parse(plan)
    cp = a.context_parallel_size or 1
    assert (a.tensor_model_parallel_size, a.pipeline_model_parallel_size, cp) == (
        s["tp"], s["pp"], s.get("cp", 1))
    assert s["num_gpus"] // (a.tensor_model_parallel_size * a.pipeline_model_parallel_size
                             * cp) == s["dp"]  # Megatron's derived DP
    if plan["inputs"]["model"].get("experts"):
        assert (a.expert_model_parallel_size, a.expert_tensor_parallel_size) == (s["ep"],
                                                                                 s["etp"])
    assert a.micro_batch_size == s["micro_batch"]
    assert a.global_batch_size == w["batch"]
    assert a.global_batch_size // (a.micro_batch_size * s["dp"]) == s["num_micro_batches"]
    assert (a.recompute_granularity or "none") == s["recompute"]
    if s["recompute"] == "selective":
        assert a.recompute_modules == list(s["recompute_modules"])
    if s["recompute"] == "full":
        assert (a.recompute_method, a.recompute_num_layers) == ("uniform", 1)
    v = a.num_virtual_stages_per_pipeline_rank or (
        a.num_layers // (a.pipeline_model_parallel_size * a.num_layers_per_virtual_pipeline_stage)
        if a.num_layers_per_virtual_pipeline_stage else 1)
    assert v == s["virtual_stages"]
    assert a.use_distributed_optimizer == (s["zero"] in (1, 2))
    assert a.use_megatron_fsdp == (s["zero"] == 3)
    assert a.sequence_parallel == bool(s["sequence_parallel"] and s["tp"] > 1)
    assert a.tp_comm_overlap == s["overlap_tp_comm"]
    assert a.overlap_moe_expert_parallel_comm == bool(s.get("a2a_overlap"))
    assert a.moe_enable_deepep == (s.get("moe_dispatcher") == "deepep")
    if s.get("cp", 1) > 1:
        assert a.cp_comm_type == s["cp_comm"]
    assert a.seq_length == w["seq_len"] and a.num_layers == plan["inputs"]["model"]["layers"]


@pytest.mark.parametrize("name", TRAINING)
def test_the_pipeline_flags_give_the_plans_stage_layers(name):
    """Megatron's split from the written flags equals the plan's cut, unless marked inexact."""
    plan = load(name)
    s, layers = plan["strategy"], plan["inputs"]["model"]["layers"]
    a, entry = parse(plan), megatron_entry(plan)
    pp = s["pp"]
    first, last = a.decoder_first_pipeline_num_layers or 0, a.decoder_last_pipeline_num_layers or 0
    rest = layers - first - last
    even = rest // (pp - bool(first) - bool(last)) if pp - bool(first) - bool(last) else 0
    split = [first or even] + [even] * (pp - 2) + [last or even] if pp > 1 else [layers]
    want = [b - a_ + 1 for a_, b in s["stage_layers"]]
    assert (split == want) == entry["exact"] or "ZeRO-2" in entry["why"]
    if entry["exact"]:
        assert split == want


def test_inexact_cases_say_why():
    # a Megatron run states its cut with split flags: 61 layers on PP 8 as 8 x 7 + 5
    ds = megatron_entry(load("deepseek-v3-training-megatron"))
    assert ds["exact"] and ds["args"]["decoder-last-pipeline-num-layers"] == 5
    plan = load("llama3-70b-training")  # searched under any: a free cut
    plan["strategy"]["stage_layers"] = [[0, 20], [21, 39], [40, 59], [60, 79]]
    assert "not a Megatron split" in megatron_entry(plan)["why"]
    plan = load("deepseek-v3-training-megatron")
    plan["strategy"]["zero"] = 2  # ZeRO-2 with PP: Megatron's rule table refuses it
    e = megatron_entry(plan)
    assert "ZeRO-2" in e["why"] and "rule zero23-is-fsdp-without-pp" in e["why"]
    llama = megatron_entry(load("llama3-70b-training"))  # searched under any: ZeRO-3 + PP 4
    assert not llama["exact"] and "zero23-is-fsdp-without-pp" in llama["why"]
    assert megatron_entry(load("mixtral-training"))["exact"]


def test_mla_and_mtp_dimensions_come_from_the_model():
    plan = load("deepseek-v3-training-megatron")  # the bundled model: MTP depth 1
    a, mla = parse(plan), plan["inputs"]["model"]["mla"]
    assert a.multi_latent_attention and a.mtp_num_layers == 1
    assert (a.kv_lora_rank, a.q_lora_rank, a.qk_head_dim, a.qk_pos_emb_head_dim,
            a.v_head_dim) == (mla["kv_lora_rank"], mla["q_lora_rank"], mla["qk_nope_head_dim"],
                              mla["qk_rope_head_dim"], mla["v_head_dim"])
    assert "--kv-channels" not in megatron_text(plan)


def test_deepep_routing_and_gradient_flags_come_from_the_plan():
    """DeepEP's SMs, node-limited routing as Megatron's group-limited router (one group per
    NVLink domain the EP group spans) and bf16 gradient reduction."""
    plan = load("deepseek-v3-training-megatron")  # EP 32 over 8-GPU domains: 4 domains
    a = parse(plan)  # the model's own router groups, as Megatron's group-limited router
    assert (a.moe_router_num_groups, a.moe_router_group_topk) == (8, 4)
    for k in ("router_groups", "router_group_topk"):
        del plan["inputs"]["model"][k]
    plan["strategy"] |= {"a2a_node_limit": 2, "a2a_sms": 24}
    plan["inputs"]["workload"]["grad_dtype"] = "bf16"
    a = parse(plan)
    assert a.moe_deepep_num_sms == 24 and a.grad_reduce_in_bf16
    assert (a.moe_router_num_groups, a.moe_router_group_topk) == (4, 2)
    plan["strategy"]["a2a_node_limit"] = 5  # more domains than the EP group spans
    e = megatron_entry(plan)
    assert not e["exact"] and "a2a_node_limit 5" in e["why"]
    assert parse(load("llama3-70b-training")).grad_reduce_in_bf16 is False  # fp32 grads


def test_fp8_writes_the_recipe():
    plan = load("gpt3-175b-training")
    plan["inputs"]["workload"] |= {"precision": "fp8", "fp8_recipe": "blockwise"}
    a = parse(plan)
    assert (a.fp8_format, a.fp8_recipe) == ("hybrid", "blockwise")


@pytest.mark.parametrize("plan,to,needle", [
    ("mixtral-decode", "megatron", "exports training plans"),
    ("mixtral-training", "vllm", "--to megatron"),
    ("mixtral-training", "sglang", "--to megatron"),
])
def test_the_wrong_kind_is_a_one_line_error(plan, to, needle):
    r = CliRunner().invoke(main, ["export", str(GOLDEN / f"{plan}.json"), "--to", to])
    assert r.exit_code != 0
    assert needle in r.output and len(r.output.strip().splitlines()) == 1
