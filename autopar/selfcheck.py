"""Consistency checks a plan records about itself (`validation[]`).

Each is a pass/fail summary of the findings of one `autopar check` class (`check_layout`,
`check_figures`), so the plan's own validation and `autopar check` are one implementation.
They read only the plan document and the specs.
"""

from __future__ import annotations

from typing import Any

from . import check_figures as figures
from . import check_layout as layout
from .cost import Problem
from .echo import model_from_echo
from .finding import Findings
from .planformat import with_records
from .recompute import Layout, hardware_flops_per_step

REL_TOL = figures.IDENTITY_TOL


def _check(name: str, f: Findings, ok_detail: str) -> dict[str, Any]:
    problems = [x.message for x in f.items if x.severity == "error"]
    return {"name": name, "passed": not problems,
            "detail": "; ".join(problems[:3]) if problems else ok_detail}


def _layout(plan: dict) -> Layout:
    return Layout.from_strategy(plan["strategy"])


def _per_gpu(plan: dict) -> dict:
    """The plan with one record per GPU (a compact plan's patterns expanded)."""
    return plan if isinstance(plan.get("gpus"), list) else with_records(plan)


def check_degrees(plan: dict) -> dict[str, Any]:
    s, f = plan["strategy"], Findings()
    layout.check_degrees(f, s, s["num_gpus"], None)
    return _check("degrees_multiply", f,
                  f"tp*dp*pp = {s['tp']}*{s['dp']}*{s['pp']} = {s['tp'] * s['dp'] * s['pp']} "
                  f"(GPUs {s['num_gpus']}); ep*etp*edp = {s['ep']}*{s['etp']}*{s['edp']} "
                  f"(tp*dp {s['tp'] * s['dp']})")


def check_memory(plan: dict) -> dict[str, Any]:
    f, plan = Findings(), _per_gpu(plan)
    figures.check_capacity(f, plan["gpus"])
    worst = max(g["memory"]["total_bytes"] / g["memory"]["capacity_bytes"] for g in plan["gpus"])
    return _check("memory_within_capacity", f, f"max {worst:.1%} of capacity")


def check_stage_layers(plan: dict, layers: int) -> dict[str, Any]:
    f = Findings()
    layout.check_stages(f, _layout(plan), layers)
    return _check("stage_layers_cover", f,
                  f"stages {plan['strategy']['stage_layers']} over {layers} layers")


def shard_coverage(plan: dict) -> list[str]:
    """Problems with TP shards: per stage and replica every TP-split tensor of every layer is
    tiled exactly once by its TP ranks (replicated components are whole on every rank)."""
    f, plan = Findings(), _per_gpu(plan)
    layout.check_shards(f, plan, model_from_echo(plan["inputs"]["model"], "plan"),
                        _layout(plan))
    return [x.message for x in f.items]


def check_shards(plan: dict) -> dict[str, Any]:
    f = Findings()
    for msg in shard_coverage(plan):
        f.error("shards", "gpus", msg)
    return _check("shards_cover_once", f,
                  "every TP-split tensor is covered exactly once per replica")


def check_experts(plan: dict, model: dict) -> dict[str, Any]:
    m = model_from_echo(model, "plan")
    if not m.is_moe:
        return _check("experts_placed", Findings(), "dense model")
    f, plan = Findings(), _per_gpu(plan)
    layout.check_experts(f, plan, m, _layout(plan))
    return _check("experts_placed", f, f"all {m.experts} experts of {m.moe_layer_count} MoE "
                  "layers in every EP group")


def expected_flops(p: Problem, plan: dict) -> float:
    """Hardware FLOPs per step from the model alone: tokens x FLOPs/token x passes, with
    recompute and TP replication of the replicated components."""
    s = plan["strategy"]
    return hardware_flops_per_step(p.model, p.workload, s["recompute"], s["tp"],
                                   s["sequence_parallel"], p.flash_attention)


def check_flops(p: Problem, plan: dict) -> dict[str, Any]:
    f, plan = Findings(), _per_gpu(plan)
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


def validations(p: Problem, plan: dict) -> list[dict[str, Any]]:
    return [
        check_degrees(plan),
        check_stage_layers(plan, p.model.layers),
        check_memory(plan),
        check_shards(plan),
        check_experts(plan, plan["inputs"]["model"]),
        check_flops(p, plan),
        check_throughput(plan),
        check_metrics(p, plan),
    ]
