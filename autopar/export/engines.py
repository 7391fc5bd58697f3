"""Launch configuration of a serving plan for vLLM and SGLang, and its command line / YAML.

Both engines put an MoE model's experts on all `TP x DP` GPUs of an instance: vLLM shards
them by tensor parallelism over the whole group, or by experts with `--enable-expert-
parallel`; SGLang splits them into `--ep-size` expert groups, each tensor-parallel over the
rest. A layout the engine cannot express (experts replicated across EDP groups, for instance)
is still written, with `exact: false` and the reason, so nothing is silently changed.
"""

from __future__ import annotations

import math
from typing import Any

import yaml

from ..schema.gpus import gpu_records

ENGINES = ("vllm", "sglang")
# Above this fraction an engine has little room of its own (CUDA graphs, NCCL buffers,
# sampler); vLLM's default gpu-memory-utilization is 0.90.
TIGHT_FRACTION = 0.95


class KindError(ValueError):
    """A plan of the wrong kind for the target (training to a server, serving to Megatron)."""


def _fraction(nbytes: float, capacity: float) -> float:
    """Memory fraction covering `nbytes`, rounded up to a hundredth (never below what the
    plan needs, never above the whole GPU)."""
    return min(1.0, math.ceil(nbytes / capacity * 100) / 100)


def _vllm(d: dict[str, int], moe: bool, seqs: int, frac: float, max_len: int,
          nodes: int) -> dict[str, Any]:
    W = d["tp"] * d["dp"]
    args: dict[str, Any] = {"tensor-parallel-size": d["tp"], "pipeline-parallel-size": d["pp"],
                            "data-parallel-size": d["dp"]}
    why = ""
    if moe:
        if d["ep"] == W and d["etp"] == 1 and W > 1:
            args["enable-expert-parallel"] = True
        elif not (d["ep"] == 1 and d["etp"] == W):
            why = (f"vLLM places experts on all TP x DP = {W} GPUs, by expert parallelism "
                   f"(EP = {W}) or tensor parallelism (ETP = {W}); the plan has EP "
                   f"{d['ep']} x ETP {d['etp']}")
    args |= {"max-num-seqs": seqs, "gpu-memory-utilization": frac, "max-model-len": max_len}
    if nodes > 1:
        args["distributed-executor-backend"] = "ray"
    return {"exact": not why, "why": why, "args": args,
            "max_num_seqs_scope": "per data-parallel engine"}


def _sglang(d: dict[str, int], moe: bool, seqs: int, frac: float, max_len: int,
            nodes: int) -> dict[str, Any]:
    W = d["tp"] * d["dp"]
    why = ""
    if moe and d["dp"] > 1:  # data-parallel attention inside one TP x DP engine
        args: dict[str, Any] = {"tp-size": W, "dp-size": d["dp"], "enable-dp-attention": True}
        running = seqs * d["dp"]  # the engine divides it over its attention DP ranks
    else:  # dense (or DP = 1): DP independent replicas of TP GPUs each
        args = {"tp-size": d["tp"], "dp-size": d["dp"]}
        running = seqs
    if moe:
        if d["ep"] * d["etp"] != W:
            why = (f"SGLang splits the experts into EP groups, each tensor-parallel over the "
                   f"rest (EP x ETP = {W}); the plan has EP {d['ep']} x ETP {d['etp']}")
        if d["ep"] > 1:
            args["ep-size"] = d["ep"]
        if d.get("moe_dispatcher") == "deepep":  # [deepep] DeepEP's dispatch and combine
            args["moe-a2a-backend"] = "deepep"
    args |= {"pp-size": d["pp"], "max-running-requests": running,
             "mem-fraction-static": frac, "context-length": max_len}
    if nodes > 1:
        args |= {"nnodes": nodes, "node-rank": "$NODE_RANK", "dist-init-addr": "$MASTER:5000"}
    return {"exact": not why, "why": why, "args": args,
            "max_running_requests_scope": "whole engine"}


def launch_section(degrees: dict[str, int], moe: bool, per_replica: int, memory_bytes: float,
                   static_bytes: float, capacity_bytes: float, max_model_len: int,
                   nodes: int, token_budget: int | None = None,
                   two_batch_overlap: bool = False) -> dict[str, Any]:
    """The `launch` section of a serving plan: one entry per engine.

    `memory_bytes` is the plan's fullest GPU (vLLM's utilization covers everything it
    allocates); `static_bytes` its weights and KV cache (SGLang's static pool)."""
    d: dict = {k: int(degrees[k]) for k in ("tp", "pp", "dp", "ep", "etp")}
    d["moe_dispatcher"] = degrees.get("moe_dispatcher", "alltoall")
    out = {
        "vllm": _vllm(d, moe, per_replica, _fraction(memory_bytes, capacity_bytes),
                      max_model_len, nodes),
        "sglang": _sglang(d, moe, per_replica, _fraction(static_bytes, capacity_bytes),
                          max_model_len, nodes),
    }
    _schedule_flags(out, token_budget, two_batch_overlap)
    used = memory_bytes / capacity_bytes
    for entry in out.values():
        entry["note"] = "" if used <= TIGHT_FRACTION else (
            f"the plan fills {used:.1%} of each GPU, leaving the engine little room for CUDA "
            "graphs and NCCL buffers (vLLM's default utilization is 0.90); raise the "
            "hardware file's reserved_gb and plan again for more headroom")
    return out


def _schedule_flags(out: dict[str, Any], budget: int | None, tbo: bool) -> None:
    """The scheduler the plan priced [serving-chunked, serving-tbo]: vLLM's token budget
    (decode tokens included, mixed with prefill chunks in V1); SGLang's chunk size with
    prefill mixed into decode batches (--enable-mixed-chunk, off by its default), -1 for
    whole prefills; SGLang's two-batch overlap when the plan turned it on."""
    v, s = out["vllm"], out["sglang"]
    if budget:
        v["args"]["max-num-batched-tokens"] = budget
        s["args"] |= {"chunked-prefill-size": budget, "enable-mixed-chunk": True}
    elif budget == 0:
        s["args"]["chunked-prefill-size"] = -1
    if tbo:
        s["args"]["enable-two-batch-overlap"] = True
        why = ("the plan prices SGLang's two-batch overlap; vLLM's counterpart (--enable-dbo, "
               "DP + EP on a DeepEP all-to-all backend) is not written")
        v["exact"] = False
        v["why"] = f"{v['why']}; {why}" if v["why"] else why


def launch_from_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """The plan's own launch section, or one derived from its strategy and memory (for a
    plan written without serving search: max sequences = its batch per replica)."""
    if plan.get("launch"):
        return plan["launch"]
    s, w = plan["strategy"], plan["inputs"]["workload"]
    fullest = max((g["memory"] for g in gpu_records(plan)), key=lambda x: x["total_bytes"])
    static = fullest["weights_bytes"] + fullest["kv_cache_bytes"]
    hw = plan["inputs"]["hardware"]
    return launch_section(s, bool(plan["inputs"]["model"].get("experts")),
                          s.get("samples_per_replica", 1), fullest["total_bytes"], static,
                          fullest["capacity_bytes"],
                          w.get("input_len", 0) + w.get("output_len", 0),
                          -(-s["num_gpus"] // hw["gpus_per_node"]))


def command(engine: str, entry: dict[str, Any], model_path: str) -> str:
    """The engine's launch command for one entry of the launch section."""
    head = (["vllm", "serve", model_path] if engine == "vllm"
            else ["python", "-m", "sglang.launch_server", "--model-path", model_path])
    parts = list(head)
    for k, v in entry["args"].items():
        if v is True:
            parts.append(f"--{k}")
        elif v is not False:
            parts += [f"--{k}", str(v)]
    return " ".join(parts)


def config_yaml(entry: dict[str, Any], model_path: str, engine: str) -> str:
    """The same settings as a YAML file for the engine's `--config` option."""
    key = "model" if engine == "vllm" else "model-path"
    return yaml.safe_dump({key: model_path, **entry["args"]}, sort_keys=False)


def export_text(plan: dict[str, Any], engine: str, fmt: str = "command",
                model_path: str | None = None) -> str:
    kind = plan["inputs"]["workload"].get("kind")
    if kind == "training":
        raise KindError(f"workload.kind is 'training': {engine} serves plans; export a "
                        "training plan --to megatron or --to torchtitan")
    entry = launch_from_plan(plan)[engine]
    model = plan["inputs"]["model"]  # the HF id where the model came from an HF config
    name = model_path or model.get("hf_id") or model["name"]
    body = command(engine, entry, name) if fmt == "command" else config_yaml(entry, name, engine)
    if entry.get("note"):
        body = f"# note: {entry['note']}\n" + body
    if not entry["exact"]:
        body = f"# not exact: {entry['why']}\n" + body
    return body


__all__ = ["ENGINES", "KindError", "launch_section", "launch_from_plan", "command", "config_yaml",
           "export_text"]
