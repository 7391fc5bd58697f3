"""TensorRT-LLM launch configuration of a serving plan: the LLM API options YAML that
`trtllm-serve MODEL --extra_llm_api_options FILE` (alias `--config`) reads, and the command.

Names are the LLM API's (NVIDIA/TensorRT-LLM 0004396, `tensorrt_llm/llmapi/llm_args.py`:
BaseLlmArgs `tensor_parallel_size`, `pipeline_parallel_size`, `moe_tensor_parallel_size`,
`moe_expert_parallel_size`, `enable_attention_dp`, `max_batch_size`, `max_num_tokens`,
`max_seq_len`, `enable_chunked_prefill`, `pp_partition` (layers per PP rank); KvCacheConfig
`free_gpu_memory_fraction`, the share of the memory left free after weights and buffers
that the KV cache takes). Its Mapping splits an MoE layer's `tp_size` GPUs into
`moe_ep_size` expert groups, each tensor-parallel over `moe_tp_size` (`tensorrt_llm/
mapping.py`: moe_tp x moe_ep = tp); with attention DP the `tp_size` covers the attention-DP
ranks, each running attention unsharded. A layout it cannot express is still written, with
`exact: false` and the reason, as the vLLM and SGLang exports do.
"""

from __future__ import annotations

import math
from typing import Any

import yaml

from ..schema.gpus import gpu_records
from .engines import TIGHT_FRACTION, KindError

CONFIG_FILE = "autopar-trtllm.yaml"


def kv_fraction(memory: dict[str, float]) -> tuple[float, float]:
    """(free_gpu_memory_fraction, what the plan needs of the free memory): the plan's KV
    cache over what its fullest GPU leaves free after everything else it holds (weights,
    activations, workspace and the hardware's reserved bytes, the margin kept for CUDA and
    NCCL), rounded up to a hundredth and capped at TIGHT_FRACTION: never 1.0."""
    kv = float(memory["kv_cache_bytes"])
    free = float(memory["capacity_bytes"]) - (float(memory["total_bytes"]) - kv)
    need = kv / free if free > 0 else math.inf
    return min(TIGHT_FRACTION, math.ceil(need * 100) / 100), need


def _scheduler(plan: dict[str, Any]) -> tuple[int | None, bool]:
    """The token budget and two-batch overlap the serving search priced (None, False for a
    plan written without it)."""
    it = ((plan.get("serving") or {}).get("point") or {}).get("iteration") or {}
    return it.get("token_budget"), bool(it.get("two_batch_overlap"))


def trtllm_entry(plan: dict[str, Any]) -> dict[str, Any]:
    """{exact, why, note, instances, args}: the LLM API options of one server; KindError for
    a training plan."""
    inputs = plan["inputs"]
    w, m, s = inputs["workload"], inputs["model"], plan["strategy"]
    if w.get("kind") == "training":
        raise KindError("workload.kind is 'training': trtllm serves plans; export a training "
                        "plan --to megatron or --to torchtitan")
    tp, pp, dp = int(s.get("tp", 1)), int(s.get("pp", 1)), int(s.get("dp", 1))
    ep, etp = int(s.get("ep", 1)), int(s.get("etp", 1))
    moe = bool(m.get("experts"))
    why, note = [], []
    instances = 1
    if moe and dp > 1:  # attention DP: one server over TP x DP GPUs, experts over all
        args: dict[str, Any] = {"tensor_parallel_size": tp * dp, "enable_attention_dp": True}
        if tp > 1:
            why.append(f"attention DP runs attention unsharded on each of the {tp * dp} ranks "
                       "(_torch/modules/attention.py: tp_size = 1 under enable_attention_dp); "
                       f"the plan shards it TP {tp} within each of {dp} DP groups")
    else:  # dense (or DP 1): DP independent servers of TP x PP GPUs each
        args = {"tensor_parallel_size": tp}
        instances = dp
    args["pipeline_parallel_size"] = pp
    if pp > 1:  # the plan's stage cut (its default is torch.tensor_split's even one)
        args["pp_partition"] = [b - a + 1 for a, b in s.get("stage_layers", [])]
    if moe:
        width = args["tensor_parallel_size"]
        args |= {"moe_expert_parallel_size": ep, "moe_tensor_parallel_size": etp}
        if ep * etp != width:
            why.append(f"TensorRT-LLM splits the experts over tp_size = {width} GPUs as "
                       f"moe_ep x moe_tp = {width}; the plan has EP {ep} x ETP {etp}")
        if int(s.get("spare_slots", 0)) and ep > 1:
            why.append(f"{s['spare_slots']} redundant expert slot(s) per EP rank: TensorRT-LLM "
                       "takes them as moe_config.load_balancer with an initial assignment, "
                       "not written here")
        if s.get("moe_dispatcher") == "deepep":
            note.append("the plan prices DeepEP's all-to-all; TensorRT-LLM picks its MoE "
                        "communication with moe_config.backend (not written)")
    seqs = int(s.get("samples_per_replica", 1))
    max_len = int(w.get("input_len", 0)) + int(w.get("output_len", 0))
    budget, tbo = _scheduler(plan)
    args |= {"max_batch_size": seqs, "max_seq_len": max_len}
    if budget:  # chunked prefill mixed into decode iterations under a token budget
        args |= {"max_num_tokens": int(budget), "enable_chunked_prefill": True}
    else:  # whole prompts (budget 0) or no scheduler priced: one whole prompt and the batch
        args |= {"max_num_tokens": max(seqs, int(w.get("input_len", 0)), 1),
                 "enable_chunked_prefill": False}
    if tbo:
        why.append("the plan prices SGLang's two-batch overlap; not written for TensorRT-LLM")
    fullest = max((g["memory"] for g in gpu_records(plan)), key=lambda x: x["total_bytes"])
    frac, need = kv_fraction(fullest)
    args["kv_cache_config"] = {"free_gpu_memory_fraction": frac}
    if need > TIGHT_FRACTION:
        note.append(f"the plan's KV cache needs {need:.1%} of the memory left free after its "
                    f"weights and buffers; written as {frac}, which holds less: raise the "
                    "hardware file's reserved_gb or plan fewer sequences")
    if int(s.get("cp", 1)) > 1:
        why.append("context parallelism in serving is not written")
    return {"exact": not why, "why": "; ".join(why), "note": "; ".join(note),
            "instances": instances, "args": args,
            "max_batch_size_scope": ("per attention-DP rank" if args.get("enable_attention_dp")
                                     else "per server")}


def trtllm_text(plan: dict[str, Any], fmt: str = "command",
                model_path: str | None = None) -> str:
    """The options YAML (fmt `yaml`), or a shell script writing it and starting
    trtllm-serve (fmt `command`), with `# not exact:` / `# note:` comments first."""
    if fmt == "toml":
        raise KindError("trtllm reads a YAML options file: use --format yaml (or command)")
    e = trtllm_entry(plan)
    head = f"# not exact: {e['why']}\n" if not e["exact"] else ""
    head += f"# note: {e['note']}\n" if e["note"] else ""
    body = yaml.safe_dump(e["args"], sort_keys=False)
    if fmt == "yaml":
        return head + body
    name = model_path or plan["inputs"]["model"]["name"]
    s, hw = plan["strategy"], plan["inputs"]["hardware"]
    ranks = int(e["args"]["tensor_parallel_size"]) * int(e["args"]["pipeline_parallel_size"])
    serve = f"trtllm-serve {name} --extra_llm_api_options {CONFIG_FILE}"
    if ranks > int(hw["gpus_per_node"]):  # multi-node: one MPI rank per GPU
        serve = f"mpirun -n {ranks} --hostfile $HOSTFILE trtllm-llmapi-launch {serve}"
    if e["instances"] > 1:
        head += (f"# DP {e['instances']}: start {e['instances']} such servers, each on "
                 f"{ranks} of the {s['num_gpus']} GPUs, behind one load balancer\n")
    return f"{head}cat > {CONFIG_FILE} <<'EOF'\n{body}EOF\n{serve}"


__all__ = ["kv_fraction", "trtllm_entry", "trtllm_text"]
