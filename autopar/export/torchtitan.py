"""torchtitan job config (TOML) of a training plan, for `torchrun -m torchtitan.train
--job.config_file FILE`.

Key names are torchtitan v0.2.2's (pytorch/torchtitan 73a0e69, the release the `--framework
torchtitan` rule table names): `torchtitan/config/job_config.py` (`[training]`,
`[parallelism]`, `[activation_checkpoint]`, `[quantize]`, `[compile]`), with the degrees
checked as `torchtitan/distributed/parallel_dims.py` builds its meshes (FSDP over
data_parallel_shard x CP, the expert mesh pp x replicate x efsdp x EP x ETP inside
shard x CP x TP) and the stage cut as `torchtitan/distributed/pipeline_parallel.py` reads
`module_fqns_per_model_part` (looped schedules: rank r holds parts r, r + PP, ...; DualPipeV
parts r and 2 PP - 1 - r). What torchtitan cannot express is still written, with `exact:
false` and the reasons, as the Megatron export does.
"""

from __future__ import annotations

import json
from typing import Any

from ..spec.frameworks import plan_refusals
from .engines import KindError

VERSION = "torchtitan v0.2.2"
CONFIG_FILE = "autopar-torchtitan.toml"
# autopar's fp8 recipe -> torchtitan's converter and recipe (job_config.py Float8Linear /
# MXLinear); DeepSeek's 128 x 128 blockwise and delayed scaling have none in v0.2.2
_FP8 = {"tensorwise": ("float8", "tensorwise"), "mxfp8": ("mx", "mxfp8_cublas")}
_CP_ROTATE = {"p2p": "alltoall", "all_gather": "allgather"}  # the KV ring / the KV gather


def _parts(sizes: list[int], v: int, schedule: str) -> tuple[list[int], str]:
    """The model parts (layer counts in model order) that give PP rank r the plan's
    `sizes[r]` layers under torchtitan's stage placement, and the reason they differ from
    the plan's contiguous ranges ("" when they do not)."""
    pp = len(sizes)
    if schedule == "dualpipev":  # V style: rank r holds parts r and 2p - 1 - r
        parts = [0] * (2 * pp)
        for r, n in enumerate(sizes):
            parts[r], parts[2 * pp - 1 - r] = (n + 1) // 2, n // 2
        return parts, ("DualPipeV folds the model into a V (rank r holds parts r and "
                       f"{2 * pp - 1} - r, the LM head beside the embedding on rank 0): each "
                       "rank has the plan's layer count, not its contiguous range")
    if v == 1:
        return list(sizes), ""
    parts = [0] * (pp * v)  # looped: rank r holds parts r, r + pp, ..., its layers split v ways
    for r, n in enumerate(sizes):
        for j in range(v):
            parts[r + j * pp] = n // v + (j < n % v)
    if len(set(parts)) == 1:
        return parts, ""
    return parts, (f"interleaving places rank r's {v} chunks at parts r, r + {pp}, ...: with "
                   f"the plan's uneven stage layers {sizes} each rank has its layer count, not "
                   "its contiguous range")


def module_fqns(parts: list[int]) -> list[list[str]]:
    """`module_fqns_per_model_part`: torchtitan's module names (`tok_embeddings`,
    `layers.i`, `norm`, `output`, as its generate_llm_fqn_per_model_part writes them)."""
    out, first = [], 0
    for k, n in enumerate(parts):
        names = [f"layers.{i}" for i in range(first, first + n)]
        first += n
        if k == 0:
            names.insert(0, "tok_embeddings")
        if k == len(parts) - 1:
            names += ["norm", "output"]
        out.append(names)
    return out


def _pipeline(s: dict[str, Any], layers: int, why: list[str]) -> dict[str, Any]:
    pp, v = int(s.get("pp", 1)), int(s.get("virtual_stages", 1))
    sched = s.get("pipeline_schedule", "1f1b")
    out: dict[str, Any] = {"pipeline_parallel_degree": pp}
    if pp == 1:
        return out
    name = {"dualpipev": "DualPipeV", "dualpipe": "DualPipeV"}.get(
        sched, "Interleaved1F1B" if v > 1 else "1F1B")
    sizes = [b - a + 1 for a, b in s.get("stage_layers", [])] or [layers // pp] * pp
    parts, reason = _parts(sizes, v, "dualpipev" if sched.startswith("dualpipe") else sched)
    if reason:
        why.append(reason)
    out |= {"pipeline_parallel_schedule": name,
            "pipeline_parallel_microbatch_size": int(s["micro_batch"]),
            "module_fqns_per_model_part": module_fqns(parts)}
    return out


def _data(s: dict[str, Any], moe: bool, why: list[str]) -> dict[str, Any]:
    """DDP replicas (ZeRO-0) or FSDP2 (ZeRO-3: resharded after forward; ZeRO-2: never)."""
    dp, cp, tp = int(s.get("dp", 1)), int(s.get("cp", 1)), int(s.get("tp", 1))
    ep, etp, zero = int(s.get("ep", 1)), int(s.get("etp", 1)), int(s.get("zero", 0))
    if zero == 0 and moe and ep > 1 and (cp * tp) % (ep * etp):
        why.append(f"torchtitan's expert mesh lies inside data_parallel_shard x CP x TP: EP "
                   f"{ep} x ETP {etp} needs FSDP over the data-parallel ranks, written for "
                   "the plan's DDP replicas")
        zero = 3
    if zero == 0:
        if cp > 1:
            why.append(f"torchtitan applies FSDP over the CP ranks ({cp}) whenever CP > 1; "
                       "the plan keeps whole weights (ZeRO-0)")
        return {"data_parallel_replicate_degree": dp, "data_parallel_shard_degree": 1}
    return {"data_parallel_replicate_degree": 1, "data_parallel_shard_degree": dp,
            "fsdp_reshard_after_forward": "always" if zero == 3 else "never"}


def _moe(m: dict[str, Any], s: dict[str, Any], why: list[str]) -> dict[str, Any]:
    if not m.get("experts"):
        return {}
    out = {"expert_parallel_degree": int(s.get("ep", 1)),
           "expert_tensor_parallel_degree": int(s.get("etp", 1)),
           "expert_parallel_comm_backend": ("deepep" if s.get("moe_dispatcher") == "deepep"
                                            else "standard")}
    if s.get("a2a_fp8"):
        why.append("a2a_fp8: torchtitan has no fp8 dispatch setting")
    if s.get("a2a_node_limit") and not m.get("router_groups"):
        why.append(f"a2a_node_limit {s['a2a_node_limit']}: torchtitan's group-limited routing "
                   "is the model flavor's (MoEArgs num_expert_groups / num_limited_groups)")
    if s.get("moe_capacity_factor"):
        why.append("moe_capacity_factor: torchtitan's MoE is dropless")
    if m.get("mtp_layers"):
        why.append(f"mtp_layers {m['mtp_layers']}: torchtitan's deepseek_v3 has no "
                   "multi-token prediction module")
    return out


def _recompute(s: dict[str, Any], why: list[str]) -> dict[str, Any]:
    rc = s.get("recompute", "none")
    if rc != "selective":
        return {"mode": rc}
    mods = list(s.get("recompute_modules") or ["core_attn"])
    why.append(f"selective recompute: torchtitan's op-level SAC saves every other matmul and "
               f"the attention outputs, not Megatron's modules {mods} the plan priced")
    return {"mode": "selective", "selective_ac_option": "op"}


def _precision(w: dict[str, Any], moe: bool, why: list[str]) -> tuple[dict, dict]:
    """([model] converters, [quantize] tables) of an fp8 plan."""
    if w.get("precision") != "fp8":
        return {}, {}
    recipe = w.get("fp8_recipe") or "tensorwise"
    kind, name = _FP8.get(recipe, ("float8", "rowwise"))
    if recipe not in _FP8:
        why.append(f"fp8_recipe {recipe}: torchtitan v0.2.2 has tensorwise, rowwise and "
                   "mxfp8 recipes; written as rowwise")
    conv = [f"quantize.linear.{kind}"]
    quant: dict[str, Any] = {"linear": {kind: {"recipe_name": name}}}
    if moe:
        conv.append(f"quantize.grouped_mm.{kind}")
        quant["grouped_mm"] = {kind: {"fqns": ["experts"]}}
    return {"converters": conv}, quant


def torchtitan_entry(plan: dict[str, Any]) -> dict[str, Any]:
    """{exact, why, config}: the job config as nested tables; KindError for a serving plan."""
    inputs = plan["inputs"]
    w, m, s = inputs["workload"], inputs["model"], plan["strategy"]
    if w.get("kind") != "training":
        raise KindError(f"workload.kind is {w.get('kind')!r}: torchtitan trains; export a "
                        "serving plan --to vllm, --to sglang or --to trtllm")
    why: list[str] = []
    moe = bool(m.get("experts"))
    tp, cp = int(s.get("tp", 1)), int(s.get("cp", 1))
    par: dict[str, Any] = _data(s, moe, why)
    par["tensor_parallel_degree"] = tp
    if tp > 1 and not s.get("sequence_parallel"):
        why.append("torchtitan's TP plan always shards the norms' sequence (SP); the plan "
                   "has sequence_parallel off")
    compile_: dict[str, Any] = {}
    if s.get("overlap_tp_comm") and tp > 1:  # micro-pipelined TP: only under torch.compile
        par["enable_async_tensor_parallel"] = True
        compile_ = {"enable": True, "components": ["model", "loss"]}
    par |= _pipeline(s, int(m["layers"]), why)
    par["context_parallel_degree"] = cp
    if cp > 1:
        comm = s.get("cp_comm", "p2p")
        if comm in _CP_ROTATE:
            par["context_parallel_rotate_method"] = _CP_ROTATE[comm]
        else:
            why.append(f"cp_comm {comm}: torchtitan's CP rotates KV shards (ring), no "
                       "Ulysses all-to-all")
    par |= _moe(m, s, why)
    dp, mb, n = int(s.get("dp", 1)), int(s["micro_batch"]), int(s["num_micro_batches"])
    local = mb * n if int(s.get("pp", 1)) > 1 else mb  # PP: the pipeline's micro-batches;
    training = {"local_batch_size": local, "global_batch_size": mb * n * dp,  # else grad
                "seq_len": int(w["seq_len"])}                                 # accumulation
    if mb * n * dp != int(w["batch"]):
        why.append(f"micro {mb} x {n} micro-batches x DP {dp} != the workload's batch "
                   f"{w['batch']}")
    if w.get("grad_dtype") not in (None, "fp32"):
        why.append(f"grad_dtype {w['grad_dtype']}: torchtitan reduces gradients in fp32 "
                   "(training.mixed_precision_reduce)")
    if w.get("state_dtype") not in (None, "fp32"):
        why.append(f"state_dtype {w['state_dtype']}: torchtitan's AdamW keeps fp32 states")
    model, quant = _precision(w, moe, why)
    why += plan_refusals(plan, "torchtitan")  # its --framework torchtitan rules
    config: dict[str, Any] = {
        "job": {"description": f"autopar plan: {m.get('name', 'model')} on "
                               f"{s['num_gpus']} GPUs"},
        "model": model, "training": training, "parallelism": par,
        "activation_checkpoint": _recompute(s, why), "compile": compile_, "quantize": quant}
    return {"exact": not why, "why": "; ".join(why),
            "config": {k: v for k, v in config.items() if v}}


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string is a JSON string
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


def to_toml(tables: dict[str, Any], prefix: str = "") -> str:
    """Nested tables as TOML: scalars and arrays first, then each sub-table as [a.b]."""
    lines = [f"{k} = {_value(v)}" for k, v in tables.items() if not isinstance(v, dict)]
    out = [f"[{prefix}]\n" + "".join(f"{x}\n" for x in lines)] if prefix and lines else (
        ["".join(f"{x}\n" for x in lines)] if lines else [])
    for k, v in tables.items():
        if isinstance(v, dict):
            out.append(to_toml(v, f"{prefix}.{k}" if prefix else k))
    return "\n".join(x for x in out if x)


def torchtitan_text(plan: dict[str, Any], fmt: str = "command") -> str:
    """The TOML job config (fmt `toml`), or a shell script writing it and launching torchrun
    (fmt `command`), with a `# not exact:` comment first when torchtitan cannot express the
    plan as it is."""
    if fmt == "yaml":
        raise KindError("torchtitan reads a TOML job config: use --format toml (or command)")
    entry = torchtitan_entry(plan)
    head = f"# not exact: {entry['why']}\n" if not entry["exact"] else ""
    head += (f"# {VERSION} job config (torchtitan/config/job_config.py); set [model] name, "
             f"flavor and hf_assets_path for {plan['inputs']['model'].get('name', 'the model')}\n")
    body = to_toml(entry["config"])
    if fmt == "toml":
        return head + body
    hw, gpus = plan["inputs"]["hardware"], int(plan["strategy"]["num_gpus"])
    per_node = min(gpus, int(hw["gpus_per_node"]))
    nodes = -(-gpus // per_node)
    run = ["torchrun", f"--nproc_per_node={per_node}", f"--nnodes={nodes}"]
    if nodes > 1:
        run += ["--node_rank=$NODE_RANK", "--rdzv_backend=c10d",
                "--rdzv_endpoint=$MASTER:29500"]
    run += ["-m", "torchtitan.train", "--job.config_file", CONFIG_FILE]
    return (f"{head}cat > {CONFIG_FILE} <<'EOF'\n{body}EOF\n" + " ".join(run))


__all__ = ["module_fqns", "to_toml", "torchtitan_entry", "torchtitan_text"]
