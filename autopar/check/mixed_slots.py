"""`autopar check` of an `ep_slots` plan (`plan.mixed_slots`): EP groups across GPU types
with uneven expert slots. Independently of the search: the slots give every EP group all E
experts and each group its share of every EP group's ranks; each stage's memory is
recomputed term by term on each type with that type's experts per rank (and the tokens
they route) and held to that type's GPU; each stage's busy time is at least every type's
FLOPs at its own peak (a rank with more experts routes more tokens); the step is the
pipeline of the stage times; a framework whose rules forbid more than E / EP slots on a
rank refuses the plan.

An inference plan may share its sequences by speed (`sequence_shares`: per group, its
attention-DP replicas and the sequences on each): the replicas must be the group's (PP 1,
one micro-batch, TP x CP GPUs each inside the group) and cover the batch exactly; a type's
memory is recomputed at the larger of its share and the mean (its own KV cache, at least
the mean's expert tokens) and its FLOP floor at the smaller (a lower bound either way)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..spec import ModelSpec, Workload, load_model
from ..spec.frameworks import layout_values, load_framework
from .echo import model_from_echo, workload_from_echo
from .finding import Finding, Findings, close
from .mixed import MEMORY_KEYS, TOL, _groups, check_rates, stage_floor_s
from .pipeline import pipeline_time
from .recompute import Layout, expected_memory, gemm_dtype


def check_slots_plan(plan: dict, source: str = "plan", framework: str | None = None,
                     model: Any = None, hw: Any = None, workload: Workload | None = None
                     ) -> list[Finding]:
    """The findings of an ep_slots plan; `model`, `hw` (a mixed hardware file) and
    `workload` override the plan's echo, as for `check.mixed.check_mixed`."""
    inputs = plan.get("inputs", {})
    if isinstance(model, (str, Path)):
        model = load_model(model)
    m = getattr(model, "model", model) or model_from_echo(inputs.get("model"), source)
    w = workload or workload_from_echo(inputs.get("workload"), source)
    return check_slots(Findings(), plan, m, w, _groups(plan, source, hw), framework, source)


def check_slots(f: Findings, plan: dict, m: ModelSpec, w: Workload, groups: list,
                framework: str | None, source: str) -> list[Finding]:
    s = plan["strategy"]
    lay = Layout.from_strategy(s)
    flash = bool(plan["inputs"].get("options", {}).get("flash_attention", True))
    n = sum(g["count"] for g, _ in groups)
    slots = plan.get("expert_slots", {})
    total = 0
    for g, _ in groups:
        x = slots.get(g["name"])
        if not isinstance(x, dict):
            f.error("shards", f"expert_slots.{g['name']}", "no slots for the group")
            return f.items
        r, e = int(x["ranks_per_ep_group"]), int(x["experts_per_rank"])
        if r * n != lay.ep * g["count"]:
            f.error("shards", f"expert_slots.{g['name']}.ranks_per_ep_group", "not the "
                    "group's share of an EP group's ranks", r, lay.ep * g["count"] / n)
        if e < 1:
            f.error("shards", f"expert_slots.{g['name']}.experts_per_rank", "a rank with no "
                    "expert", e, ">= 1")
        total += r * e
    if total != m.experts:
        f.error("shards", "expert_slots", "an EP group's ranks do not hold every expert "
                "once", total, m.experts)
    if n != lay.num_gpus:
        f.error("degrees", "strategy.num_gpus", "not the groups' GPUs", lay.num_gpus, n)
    mean = m.experts / lay.ep
    moe = [x for x in range(m.layers) if m.is_moe_layer(x)]
    seqs = _shares(f, plan, groups, lay, w)
    per = -(-w.batch // lay.dp)
    peak_s = []
    for idx, st in enumerate(plan["stages"]):
        path = f"stages[{idx}]"
        floors = []
        for g, hw in groups:
            e = int(slots[g["name"]]["experts_per_rank"])
            b = seqs.get(g["name"], per)
            w_mem, lay_mem = _at(w, lay, max(b, per))
            w_low, lay_low = _at(w, lay, min(b, per))
            want = expected_memory(m, hw, w_mem, lay_mem, idx, {x: e for x in moe},
                                   {x: e / mean for x in moe}, flash)
            mem = st["memory"].get(g["name"], {})
            for key in MEMORY_KEYS:
                if key in mem and not close(mem[key], want[key], TOL):
                    f.error("memory", f"{path}.memory.{g['name']}.{key}", "recomputed on the "
                            "group's type with its experts differs", mem[key], want[key])
            if want["total_bytes"] > hw.gpu.memory_bytes * (1 + TOL):
                f.error("memory", f"{path}.memory.{g['name']}.total_bytes", f"exceeds the "
                        f"{hw.gpu.name} capacity", want["total_bytes"],
                        f"<= {hw.gpu.memory_bytes:.6g}")
            peak_s.append(want["total_bytes"] / hw.gpu.memory_bytes)
            floors.append(stage_floor_s(m, w_low, lay_low, idx,
                                        hw.gpu.flops(gemm_dtype(m, w)), flash, e / mean))
        if st["busy_s"] < max(floors) * (1 - TOL):
            f.error("timing", f"{path}.busy_s", "faster than a type's FLOPs at its peak",
                    st["busy_s"], f">= {max(floors):.6g}")
        if not close(st["busy_s"], st["fwd_s"] + st["bwd_s"], TOL):
            f.error("timing", f"{path}.busy_s", "not forward + backward", st["busy_s"],
                    st["fwd_s"] + st["bwd_s"])
    st = plan["stages"]
    counts = [b - a + 1 for a, b in lay.stage_layers]
    step = pipeline_time([x["busy_s"] for x in st], lay.num_micro_batches,
                         lay.virtual_stages, counts) + max(x["dp_exposed_s"] for x in st) + \
        max(x["optimizer_s"] for x in st)
    if not close(plan["metrics"]["step_time_s"], step, TOL):
        f.error("timing", "metrics.step_time_s", "pipeline of the stage times + the largest "
                "exposed sync + the largest optimizer step", plan["metrics"]["step_time_s"],
                step)
    check_rates(f, plan, w, lay.num_gpus)
    if peak_s and not close(plan["metrics"].get("memory_max_over_capacity", 0.0),
                            max(peak_s), TOL):
        f.error("metrics", "metrics.memory_max_over_capacity", "the fullest stage of any "
                "type over its capacity", plan["metrics"].get("memory_max_over_capacity"),
                max(peak_s))
    name = framework or plan.get("framework")
    fw = load_framework(name) if name and name != "any" else None
    uneven = len({int(x["experts_per_rank"]) for x in slots.values()}) > 1
    if fw is not None and uneven and fw.refuses(layout_values(
            {**s, "spare_slots": max(1, int(s.get("spare_slots", 0)))}, m.layers, m.experts,
            w.seq_len, m.heads)):
        f.error("framework", "expert_slots", f"{name} holds E / EP experts on every EP rank "
                "(its rules forbid spare slots): no uneven expert slots")
    return sorted(f.items, key=lambda x: x.severity != "error")


def _at(w: Workload, lay: Layout, seqs: int) -> tuple[Workload, Layout]:
    """The workload and layout with `seqs` sequences on every attention-DP replica."""
    if seqs == -(-w.batch // lay.dp):
        return w, lay
    return replace(w, batch=seqs * lay.dp), replace(lay, micro_batch=seqs)


def _shares(f: Findings, plan: dict, groups: list, lay: Layout, w: Workload) -> dict[str, int]:
    """The sequences on each replica of each group a plan states (none: the mean), checked:
    an inference step, PP 1 and one micro-batch, each group's replicas its own TP x CP GPUs,
    the shares covering the batch."""
    shares = plan.get("sequence_shares")
    if not shares:
        return {}
    width = lay.tp * lay.cp
    if w.kind == "training" or lay.pp != 1 or lay.num_micro_batches != 1:
        f.error("shards", "sequence_shares", "sequence shares split one inference step of "
                "PP 1 and one micro-batch", [w.kind, lay.pp, lay.num_micro_batches])
        return {}
    out, covered = {}, 0
    for g, _ in groups:
        x = shares.get(g["name"])
        if not isinstance(x, dict):
            f.error("shards", f"sequence_shares.{g['name']}", "no share for the group")
            return {}
        r, b = int(x["replicas"]), int(x["sequences_per_replica"])
        if g["count"] % width or g["first_gpu"] % width or r != g["count"] // width:
            f.error("shards", f"sequence_shares.{g['name']}.replicas", "not the group's "
                    f"attention-DP replicas of {width} GPUs", r, g["count"] / width)
        if b < 1:
            f.error("shards", f"sequence_shares.{g['name']}.sequences_per_replica",
                    "a replica with no sequence", b, ">= 1")
        out[g["name"]] = max(b, 1)
        covered += r * b
    if covered != w.batch:
        f.error("shards", "sequence_shares", "the replicas' sequences do not cover the batch",
                covered, w.batch)
    return out
