"""Consistency checks a plan records about itself (`validation[]`).

Each is a pass/fail summary of the findings of one `autopar check` class (`check.layout`,
`check.placement`, `check.figures`), so the plan's own validation and `autopar check` are one
implementation. They read only the plan document and the specs.

A compact plan (schema 2.x) states each distinct shard, expert and memory part once as a
pattern; GPUs given the same patterns hold the same record. So the self-checks walk one GPU
group (TP, ETP, EP group, or single GPU) per distinct combination of its members' patterns
and its place in the layout, not every group: what they detect is unchanged (any fault is
in some pattern, and every pattern's combinations are walked), and their cost follows the
patterns, not the GPU count. `autopar check` still walks every GPU.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..check import capacity as capacity
from ..check import figures as figures
from ..check import layout as layout
from ..check import placement as placement
from ..check.echo import model_from_echo
from ..check.finding import Findings
from ..check.flops import hardware_flops_per_step
from ..check.recompute import Layout
from ..cost.layer import Problem
from ..schema.gpus import GpuTable, gpu_records, is_compact, read_gpus

REL_TOL = figures.IDENTITY_TOL


@dataclass(frozen=True)
class PlanView:
    """A plan as the self-checks read it: `plan` with one record per GPU, and for a compact
    plan its patterns and which pattern gives each GPU each part (`where`)."""

    plan: dict[str, Any]
    section: dict[str, Any] | None = None
    where: dict[int, dict[str, int]] | None = None

    @staticmethod
    def of(plan: dict | PlanView, table: GpuTable | None = None) -> PlanView:
        """The view of `plan`; `table` is its `gpus` already read (as the builder has it)."""
        if isinstance(plan, PlanView):
            return plan
        if not is_compact(plan):
            return PlanView(plan)
        if table is None or table.problems:
            table = read_gpus(plan)
        if table.problems:  # a broken section: the same one-line error as the reader's
            gpu_records(plan)
        return PlanView({**plan, "gpus": table.records}, plan["gpus"], table.where)

    def pick(self, lay: Layout) -> placement.Pick:
        """One group per distinct (stage, pattern of each member; for single GPUs also the
        EP rank): every group of a compact plan, checked once per kind of group."""
        where = self.where
        if where is None:
            return placement.every

        def pick(kind: str, groups: Iterable[list[int]]) -> list[list[int]]:
            part = "shards" if kind == "tp" else "experts"
            seen: set[tuple] = set()
            out = []
            for grp in groups:
                c = lay.coords(grp[0])
                key = (c["stage"], c["ep_rank"] if kind == "gpu" else -1,
                       tuple(where[g][part] if g in where else ("gpu", g) for g in grp))
                if key not in seen:
                    seen.add(key)
                    out.append(grp)
            return out
        return pick


def _check(name: str, f: Findings, ok_detail: str) -> dict[str, Any]:
    problems = [x.message for x in f.items if x.severity == "error"]
    return {"name": name, "passed": not problems,
            "detail": "; ".join(problems[:3]) if problems else ok_detail}


def _layout(plan: dict) -> Layout:
    return Layout.from_strategy(plan["strategy"])


def check_degrees(plan: dict) -> dict[str, Any]:
    s, f = plan["strategy"], Findings()
    layout.check_degrees(f, s, s["num_gpus"], None)
    cp = s.get("cp", 1)
    if cp > 1:  # context parallelism: a stage is tp x cp x dp GPUs
        w = s["tp"] * cp * s["dp"]
        return _check("degrees_multiply", f,
                      f"tp*cp*dp*pp = {s['tp']}*{cp}*{s['dp']}*{s['pp']} = {w * s['pp']} "
                      f"(GPUs {s['num_gpus']}); ep*etp*edp = {s['ep']}*{s['etp']}*{s['edp']} "
                      f"(tp*cp*dp {w})")
    return _check("degrees_multiply", f,
                  f"tp*dp*pp = {s['tp']}*{s['dp']}*{s['pp']} = {s['tp'] * s['dp'] * s['pp']} "
                  f"(GPUs {s['num_gpus']}); ep*etp*edp = {s['ep']}*{s['etp']}*{s['edp']} "
                  f"(tp*dp {s['tp'] * s['dp']})")


def check_memory(plan: dict | PlanView) -> dict[str, Any]:
    v, f = PlanView.of(plan), Findings()
    mems = ([{"memory": x["memory"]} for x in v.section["memory"]] if v.section
            else v.plan["gpus"])  # a compact plan: each memory pattern once
    figures.check_capacity(f, mems)
    worst = max(g["memory"]["total_bytes"] / g["memory"]["capacity_bytes"] for g in mems)
    return _check("memory_within_capacity", f, f"max {worst:.1%} of capacity")


def check_stage_layers(plan: dict, layers: int) -> dict[str, Any]:
    f = Findings()
    layout.check_stages(f, _layout(plan), layers)
    return _check("stage_layers_cover", f,
                  f"stages {plan['strategy']['stage_layers']} over {layers} layers")


def shard_coverage(plan: dict | PlanView) -> list[str]:
    """Problems with TP shards: per stage and replica every TP-split tensor of every layer is
    tiled exactly once by its TP ranks (replicated components are whole on every rank)."""
    v, f = PlanView.of(plan), Findings()
    lay = _layout(v.plan)
    placement.check_shards(f, v.plan, model_from_echo(v.plan["inputs"]["model"], "plan"),
                           lay, v.pick(lay))
    return [x.message for x in f.items]


def check_shards(plan: dict | PlanView) -> dict[str, Any]:
    f = Findings()
    for msg in shard_coverage(plan):
        f.error("shards", "gpus", msg)
    return _check("shards_cover_once", f,
                  "every TP-split tensor is covered exactly once per replica")


def check_experts(plan: dict | PlanView, model: dict) -> dict[str, Any]:
    m = model_from_echo(model, "plan")
    if not m.is_moe:
        return _check("experts_placed", Findings(), "dense model")
    v, f = PlanView.of(plan), Findings()
    lay = _layout(v.plan)
    placement.check_experts(f, v.plan, m, lay, v.pick(lay))
    return _check("experts_placed", f, f"all {m.experts} experts of {m.moe_layer_count} MoE "
                  "layers in every EP group")


def expected_flops(p: Problem, plan: dict) -> float:
    """Hardware FLOPs per step from the model alone: tokens x FLOPs/token x passes, with
    recompute and TP replication of the replicated components; a capacity's dropped copies
    and padding rows [capacity]."""
    s = plan["strategy"]
    terms = capacity.plan_terms(plan, p.model, p.workload, _layout(plan))
    return hardware_flops_per_step(p.model, p.workload, s["recompute"], s["tp"],
                                   s["sequence_parallel"], p.flash_attention,
                                   tuple(s.get("recompute_modules", ("core_attn",))),
                                   capacity.computed(terms))


def check_flops(p: Problem, plan: dict | PlanView) -> dict[str, Any]:
    f, plan = Findings(), PlanView.of(plan).plan
    figures.check_flops(f, plan, p.model, p.workload, _layout(plan), p.flash_attention)
    return _check("flops_conserved", f, f"sum over GPUs {plan['flops']['total']:.6g} vs model "
                  f"{expected_flops(p, plan):.6g} FLOPs per step")


def check_throughput(plan: dict) -> dict[str, Any]:
    mt, f = plan["metrics"], Findings()
    if mt["achieved_flops_per_s"] > mt["peak_flops_per_s"] * (1 + REL_TOL):
        f.error("throughput", "metrics.achieved_flops_per_s", "above the GPUs' peak")
    if mt["hfu"] > 1 + REL_TOL:
        f.error("throughput", "metrics.hfu", "utilization above 100%")
    return _check("throughput_within_peak", f,
                  f"{mt['achieved_flops_per_s'] / 1e12:.1f} TFLOP/s achieved of "
                  f"{mt['peak_flops_per_s'] / 1e12:.1f} peak ({mt['hfu']:.1%})")


def check_metrics(p: Problem, plan: dict) -> dict[str, Any]:
    f = Findings()
    figures.check_metrics(f, plan, p.workload, plan["metrics"].get("peak_flops_per_s"),
                          p.hw.num_gpus)
    figures.check_timing(f, plan, _layout(plan))
    return _check("metrics_consistent", f, "throughput, step time, MFU and timing agree")


def validations(p: Problem, plan: dict,
                table: GpuTable | None = None) -> list[dict[str, Any]]:
    """Every self-check of `plan`; `table`: its `gpus` already read (the builder's)."""
    v = PlanView.of(plan, table)
    return [
        check_degrees(v.plan),
        check_stage_layers(v.plan, p.model.layers),
        check_memory(v),
        check_shards(v),
        check_experts(v, v.plan["inputs"]["model"]),
        check_flops(p, v),
        check_throughput(v.plan),
        check_metrics(p, v.plan),
    ]
