"""`autopar check` of an `ep_slots` plan (`plan.mixed_slots`): EP groups across GPU types
with uneven expert slots. Independently of the search: the slots give every EP group all E
experts and each group its share of every EP group's ranks; each stage's memory is
recomputed term by term on each type with that type's experts per rank (and the tokens
they route) and held to that type's GPU; each stage's busy time is at least every type's
FLOPs at its own peak (a rank with more experts routes more tokens); the step is the
pipeline of the stage times; a framework whose rules forbid more than E / EP slots on a
rank refuses the plan."""

from __future__ import annotations

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
    peak_s = []
    for idx, st in enumerate(plan["stages"]):
        path = f"stages[{idx}]"
        floors = []
        for g, hw in groups:
            e = int(slots[g["name"]]["experts_per_rank"])
            want = expected_memory(m, hw, w, lay, idx, {x: e for x in moe},
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
            floors.append(stage_floor_s(m, w, lay, idx, hw.gpu.flops(gemm_dtype(m, w)),
                                        flash, e / mean))
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
