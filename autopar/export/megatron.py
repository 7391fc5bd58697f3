"""Megatron-LM / Megatron-Core training flags of a training plan (`pretrain_gpt.py`).

Megatron derives DP itself (GPUs / (TP x PP x CP)) and the expert data-parallel degree from
EP x ETP, so only the degrees it takes are written. What Megatron cannot express exactly
(ZeRO-2, an uneven interleaved split, a stage cut it has no flag for) is still written, with
`exact: false` and the reasons, so nothing is silently changed.
"""

from __future__ import annotations

from typing import Any

import yaml

from ..spec.frameworks import plan_refusals
from .engines import KindError


def _pipeline(s: dict[str, Any], layers: int, why: list[str]) -> dict[str, Any]:
    """Pipeline flags: the plan's pinned Megatron split, else the split its stage_layers show."""
    pp, v = int(s.get("pp", 1)), int(s.get("virtual_stages", 1))
    args: dict[str, Any] = {"pipeline-model-parallel-size": pp}
    if pp == 1:
        return args
    sizes = [b - a + 1 for a, b in s.get("stage_layers", [])] or [layers // pp] * pp
    first, last = int(s.get("first_stage_layers", 0)), int(s.get("last_stage_layers", 0))
    pinned = bool(first or last or s.get("embedding_in_split") or s.get("loss_in_split"))
    if not pinned and len(set(sizes)) > 1:  # the searched cut: a first / last pin if it fits
        mid = sizes[1:-1]
        if v == 1 and len(set(mid)) <= 1 and (not mid or mid[0] * len(mid) + sizes[0]
                                                + sizes[-1] == layers):
            base = mid[0] if mid else None
            first = sizes[0] if sizes[0] != base else 0
            last = sizes[-1] if sizes[-1] != base else 0
        else:
            why.append(f"the plan's stage layers {sizes} are not a Megatron split (even, or "
                       "even between a first and last stage pin"
                       + (", with interleaving" if v > 1 else "") + ")")
    if first:
        args["decoder-first-pipeline-num-layers"] = first
    if last:
        args["decoder-last-pipeline-num-layers"] = last
    if s.get("embedding_in_split"):
        args["account-for-embedding-in-pipeline-split"] = True
    if s.get("loss_in_split"):
        args["account-for-loss-in-pipeline-split"] = True
    if v > 1:
        rest = layers - first - last
        chunks = (pp - bool(first) - bool(last)) * v
        if not (first or last) and layers % (pp * v) == 0:
            args["num-layers-per-virtual-pipeline-stage"] = layers // (pp * v)
        else:
            args["num-virtual-stages-per-pipeline-rank"] = v
            if chunks <= 0 or rest % chunks or first % v or last % v:
                why.append(f"{layers} layers do not split into PP {pp} x v {v} = {pp * v} "
                           "equal model chunks (--num-layers-per-virtual-pipeline-stage)")
    return args


def _memory(s: dict[str, Any], why: list[str]) -> dict[str, Any]:
    """Recompute and ZeRO flags."""
    args: dict[str, Any] = {}
    rc = s.get("recompute", "none")
    if rc == "full":
        args |= {"recompute-granularity": "full", "recompute-method": "uniform",
                 "recompute-num-layers": 1}
    elif rc == "selective":
        args |= {"recompute-granularity": "selective",
                 "recompute-modules": list(s.get("recompute_modules") or ["core_attn"])}
    zero = int(s.get("zero", 0))
    if zero in (1, 2):
        args["use-distributed-optimizer"] = True
        if zero == 2:
            why.append("Megatron has no ZeRO-2: its distributed optimizer shards the optimizer "
                       "state (ZeRO-1); gradients stay whole between reductions")
    elif zero == 3:
        args |= {"use-megatron-fsdp": True,
                 "data-parallel-sharding-strategy": "optim_grads_params"}
    if s.get("overlap_grad_reduce", True) and int(s.get("dp", 1)) * int(s.get("cp", 1)) > 1:
        args["overlap-grad-reduce"] = True
        if zero >= 1:
            args["overlap-param-gather"] = True
    return args


def _moe(m: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    """Expert layout and model flags of an MoE model."""
    if not m.get("experts"):
        return {}
    args: dict[str, Any] = {"num-experts": m["experts"], "moe-router-topk": m["top_k"],
                            "moe-ffn-hidden-size": m["expert_ffn_hidden"]}
    if m.get("shared_experts"):
        args["moe-shared-expert-intermediate-size"] = (m["shared_expert_ffn_hidden"]
                                                        * m["shared_experts"])
    if m.get("dense_layers"):
        dense = set(m["dense_layers"])
        args["moe-layer-freq"] = "[" + ",".join("0" if i in dense else "1"
                                                for i in range(m["layers"])) + "]"
    if s.get("moe_dispatcher") == "deepep":
        args |= {"moe-token-dispatcher-type": "flex", "moe-enable-deepep": True,
                 "moe-deepep-num-sms": int(s.get("a2a_sms", 20))}
    else:
        args["moe-token-dispatcher-type"] = "alltoall"
    if s.get("a2a_overlap"):
        args["overlap-moe-expert-parallel-comm"] = True
    if s.get("moe_capacity_factor"):  # [capacity] token dropping (absent: dropless)
        args |= {"moe-expert-capacity-factor": float(s["moe_capacity_factor"]),
                 "moe-token-drop-policy": s.get("moe_token_drop_policy", "probs")}
        if s.get("moe_pad_to_capacity"):
            args["moe-pad-expert-input-to-capacity"] = True
    return args


def _routing(plan: dict[str, Any], why: list[str]) -> dict[str, Any]:
    """[deepep] Node-limited routing as Megatron's group-limited router: one group per NVLink
    domain the EP group spans (its experts), each token to the top `a2a_node_limit` groups;
    fp8 dispatch has no Megatron-LM flag."""
    s, hw = plan["strategy"], plan["inputs"]["hardware"]
    out: dict[str, Any] = {}
    if s.get("a2a_fp8"):
        why.append("a2a_fp8: Megatron-LM has no flag for an fp8 dispatch")
    limit = int(s.get("a2a_node_limit", 0))
    model = plan["inputs"]["model"]
    if model.get("router_groups"):  # the model's own group-limited routing
        out = {"moe-router-num-groups": int(model["router_groups"]),
               "moe-router-group-topk": int(model["router_group_topk"])}
        if limit:
            why.append(f"a2a_node_limit {limit} besides the model's router groups: Megatron "
                       "routes by one set of groups")
        return out
    if not limit:
        return out
    domain = int(hw.get("nvlink_domain") or hw.get("gpus_per_node") or 1)
    span = int(s.get("ep", 1)) * int(s.get("etp", 1))
    groups = span // domain if span >= domain else 1
    experts = int(plan["inputs"]["model"].get("experts") or 0)
    if groups < 2 or experts % groups or limit > groups:
        why.append(f"a2a_node_limit {limit}: the EP group spans {groups} NVLink domain(s) "
                   f"of {experts} experts, no group-limited routing matches it")
        return out
    return {"moe-router-num-groups": groups, "moe-router-group-topk": limit}


def megatron_entry(plan: dict[str, Any]) -> dict[str, Any]:
    """{exact, why, args} for a training plan; KindError for a serving plan."""
    inputs = plan["inputs"]
    w, m, s = inputs["workload"], inputs["model"], plan["strategy"]
    if w.get("kind") != "training":
        raise KindError(f"workload.kind is {w.get('kind')!r}: Megatron-LM exports training "
                         "plans; export a serving plan --to vllm, sglang or trtllm")
    sched = s.get("pipeline_schedule", "1f1b")
    if sched != "1f1b":  # [dualpipe]
        raise KindError(f"strategy.pipeline_schedule is {sched!r}: Megatron-LM has no "
                        "DualPipe schedule (plan it with --pipeline-schedule 1f1b)")
    why: list[str] = []
    args: dict[str, Any] = {"tensor-model-parallel-size": int(s.get("tp", 1))}
    args |= _pipeline(s, int(m["layers"]), why)
    if int(s.get("cp", 1)) > 1:
        args |= {"context-parallel-size": int(s["cp"]), "cp-comm-type": s.get("cp_comm", "p2p")}
    if m.get("experts"):
        args |= {"expert-model-parallel-size": int(s.get("ep", 1)),
                 "expert-tensor-parallel-size": int(s.get("etp", 1))}
    dp = int(s.get("dp", 1))
    mb, n = int(s["micro_batch"]), int(s["num_micro_batches"])
    args |= {"micro-batch-size": mb, "global-batch-size": mb * n * dp}
    if mb * n * dp != int(w["batch"]):
        why.append(f"micro {mb} x {n} micro-batches x DP {dp} != the workload's batch {w['batch']}")
    if s.get("sequence_parallel") and int(s.get("tp", 1)) > 1:
        args["sequence-parallel"] = True
    if s.get("overlap_tp_comm"):
        args["tp-comm-overlap"] = True
    args |= _routing(plan, why)
    if w.get("grad_dtype") == "bf16":  # Megatron keeps fp32 main gradients unless told
        args["grad-reduce-in-bf16"] = True
    elif w.get("grad_dtype") not in (None, "fp32"):
        why.append(f"grad_dtype {w['grad_dtype']}: Megatron-LM reduces gradients in fp32 "
                   "or bf16")
    args |= _memory(s, why)
    why += plan_refusals(plan, "megatron")  # its --framework megatron rules
    args |= {"num-layers": m["layers"], "hidden-size": m["hidden"],
             "num-attention-heads": m["heads"],
             "seq-length": w["seq_len"], "max-position-embeddings": w["seq_len"]}
    if not m.get("mla"):  # MLA's head dimensions are its own flags below
        args["kv-channels"] = m["head_dim"]
    if m.get("ffn_hidden"):
        args["ffn-hidden-size"] = m["ffn_hidden"]
    if m.get("kv_heads") and m["kv_heads"] != m["heads"]:
        args |= {"group-query-attention": True, "num-query-groups": m["kv_heads"]}
    if m.get("mla"):
        mla = m["mla"]
        args |= {"multi-latent-attention": True, "kv-lora-rank": mla["kv_lora_rank"],
                 "qk-head-dim": mla["qk_nope_head_dim"],
                 "qk-pos-emb-head-dim": mla["qk_rope_head_dim"],
                 "v-head-dim": mla["v_head_dim"]}
        if mla.get("q_lora_rank"):
            args["q-lora-rank"] = mla["q_lora_rank"]
    if m.get("mtp_layers"):
        args["mtp-num-layers"] = m["mtp_layers"]
    if m.get("gated_mlp"):
        args["swiglu"] = True
    if not m.get("tie_embeddings"):
        args["untie-embeddings-and-output-weights"] = True
    args |= _moe(m, s)
    args["bf16" if m.get("dtype", "bf16") == "bf16" else "fp16"] = True
    if w.get("precision") == "fp8":
        args |= {"fp8-format": "hybrid", "fp8-recipe": w.get("fp8_recipe") or "tensorwise"}
    return {"exact": not why, "why": "; ".join(why), "args": args}


def _flags(args: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for k, v in args.items():
        if v is True:
            out.append(f"--{k}")
        elif isinstance(v, list):
            out += [f"--{k}", *map(str, v)]
        elif v is not False:
            out += [f"--{k}", str(v)]
    return out


def megatron_text(plan: dict[str, Any], fmt: str = "command") -> str:
    """`torchrun ... pretrain_gpt.py FLAGS` (or the flags as YAML), with a `# not exact:`
    comment first when Megatron cannot express the plan as it is."""
    entry = megatron_entry(plan)
    hw, gpus = plan["inputs"]["hardware"], int(plan["strategy"]["num_gpus"])
    per_node = min(gpus, int(hw["gpus_per_node"]))
    nodes = -(-gpus // per_node)
    if fmt == "command":
        head = ["torchrun", f"--nproc-per-node={per_node}", f"--nnodes={nodes}"]
        if nodes > 1:
            head += ["--node-rank=$NODE_RANK", "--master-addr=$MASTER", "--master-port=6000"]
        body = " ".join([*head, "pretrain_gpt.py", *_flags(entry["args"])])
    else:
        body = yaml.safe_dump(entry["args"], sort_keys=False)
    return (f"# not exact: {entry['why']}\n" if not entry["exact"] else "") + body


__all__ = ["megatron_entry", "megatron_text"]
