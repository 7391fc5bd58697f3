"""Export of a mixed-group plan (`plan.mixed`): one Megatron-LM job over every group, with
per group the node ranks, GPUs, stage and layers it runs, and the cut stated layer by layer
(`--pipeline-model-parallel-layout`, since a stage on a slower group holds fewer layers than
Megatron's even or first / last split can say). torchtitan and the serving engines are
refused in one line: torchtitan's split points name modules the plan does not know, and
mixed groups are planned for training only."""

from __future__ import annotations

import shlex
from typing import Any

import yaml

from .engines import KindError
from .megatron import _flags, megatron_entry

SPLIT_FLAGS = ("num-layers-per-virtual-pipeline-stage", "num-virtual-stages-per-pipeline-rank",
               "decoder-first-pipeline-num-layers", "decoder-last-pipeline-num-layers",
               "account-for-embedding-in-pipeline-split", "account-for-loss-in-pipeline-split")


def _chunks(n: int, v: int) -> list[int]:
    """A stage's n layers over its v chunks as evenly as possible, the extra layers to the
    middle chunks first, then the last and the first (as Megatron splits them)."""
    base, extra = divmod(n, v)
    out = [base] * v
    for i in (list(range(1, v - 1)) + [v - 1, 0])[:extra]:
        out[i] += 1
    return out


def layout(counts: list[int], v: int) -> str:
    """The p x v virtual stages in Megatron's order (chunk j of stage k is virtual stage
    j p + k): E the embedding, t a decoder layer, L the loss, `|` between virtual stages."""
    p = len(counts)
    chunks = [_chunks(n, v) for n in counts]
    parts = []
    for j in range(v):
        for k in range(p):
            parts.append(("E" if j == 0 and k == 0 else "") + "t" * chunks[k][j]
                         + ("L" if j == v - 1 and k == p - 1 else ""))
    return "|".join(parts)


def where_lines(plan: dict[str, Any]) -> list[str]:
    """# comment lines: per group its GPU type, GPUs (the global ranks), stages and layers."""
    out = ["# mixed GPU groups: one job, global ranks in stage order (TP fastest, then CP, DP)"]
    for g in plan["runs_where"]:
        if g["stages"]:
            out.append(f"# group {g['group']} ({g['gpu_type']}): GPUs {g['gpus']} = ranks "
                       f"{g['gpus_used']}, stages {g['stages']}, layers {g['layers']}; "
                       f"{g['per_stage']}")
        else:
            out.append(f"# group {g['group']} ({g['gpu_type']}): GPUs {g['gpus']} idle")
    return out


def mixed_export(plan: dict[str, Any], engine: str, fmt: str = "command") -> str:
    if engine != "megatron":
        why = ("its split points name modules, not layer counts" if engine == "torchtitan"
               else "a serving engine runs one GPU type per engine; the serving search on a "
               "mixed file gives one-type plans")
        raise KindError(f"a mixed-group plan exports --to megatron only ({engine}: {why}); "
                        "the plan's runs_where says per group what runs where")
    if plan.get("mode") == "ep_slots":
        raise KindError("a plan with uneven expert slots has no Megatron launch (each EP rank "
                        "holds num_experts / EP experts); plan with --framework megatron")
    if plan.get("mode") == "dp_shares" and len({x["micro_batches"] for x in
                                                 plan["shares"].values()}) > 1:
        raise KindError("a plan with uneven data-parallel shares has no Megatron launch (every "
                        "DP rank takes the same micro-batches); plan with --framework megatron")
    entry = megatron_entry(plan)
    s = plan["strategy"]
    args = {k: v for k, v in entry["args"].items() if k not in SPLIT_FLAGS}
    counts = [b - a + 1 for a, b in s["stage_layers"]]
    if int(s["pp"]) > 1:
        args["pipeline-model-parallel-layout"] = layout(counts, int(s.get("virtual_stages", 1)))
    why = [x for x in entry["why"].split("; ") if x and "not a Megatron split" not in x
           and "equal model chunks" not in x]
    gpn = min(int(g["hardware"]["gpus_per_node"])
              for g in plan["inputs"]["hardware"]["groups"])
    nodes = -(-int(s["num_gpus"]) // gpn)
    head = where_lines(plan) + ([f"# not exact: {'; '.join(why)}"] if why else [])
    if fmt != "command":
        return "\n".join(head) + "\n" + yaml.safe_dump(args, sort_keys=False)
    if "pipeline-model-parallel-layout" in args:  # `|` is a shell pipe: quote it
        args["pipeline-model-parallel-layout"] = shlex.quote(
            args["pipeline-model-parallel-layout"])
    run = ["torchrun", f"--nproc-per-node={gpn}", f"--nnodes={nodes}",
           "--node-rank=$NODE_RANK", "--master-addr=$MASTER", "--master-port=6000",
           "pretrain_gpt.py", *_flags(args)]
    return "\n".join(head) + "\n" + " ".join(run) + "\n"
