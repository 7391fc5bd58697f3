"""The chosen layout of a plan, back as the cost model's objects: the problem from the
plan's `inputs` echo (read back through the spec loaders by `check.echo`), the `Strategy`
from `strategy`, the stage cut from `stage_layers` and each MoE layer's placement state from
`experts`. Evaluating them gives the plan's own figures (a check of the rebuild: the step
time must agree), and per-component times the plan does not state."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any

from ..api import make_problem
from ..check.echo import inputs_from_echo
from ..cost.bundled import default_calibration
from ..cost.calibration import Calibration
from ..cost.evaluate import Evaluation, evaluate, layer_costs
from ..cost.layer import MoEState, Problem
from ..cost.strategy import Strategy
from ..errors import InputError
from ..search.experts import ep_geometry
from ..spec import HardwareSpec
from ..spec.hardware import gpu_catalogue

AGREE_REL = 1e-6  # the rebuilt evaluation against the plan's step time
_NOT_FIELDS = {"edp", "samples_per_replica", "schedule", "stage_layers", "stage_width"}


@dataclass
class Rebuilt:
    problem: Problem
    strategy: Strategy
    bounds: list[int]
    moe: list[MoEState]

    def evaluate(self, problem: Problem | None = None) -> Evaluation:
        """The layout's cost on `problem` (default: the plan's own), cut and placement kept."""
        p = problem or self.problem
        return evaluate(p, self.strategy, self.bounds, self.moe,
                        layer_costs(p, self.strategy, self.moe))


def _calibration(echo: dict, gpu: str, source: str) -> Calibration:
    """The flat figures as echoed, or the bundled tables the echo's `source` names."""
    src = echo.get("source", "defaults") if isinstance(echo, dict) else "defaults"
    if src == "defaults":
        flat = ("gemm_peak", "gemm_half_dim", "attention_eff", "hbm_eff", "kernel_floor_s")
        kw: dict[str, Any] = {k: echo[k] for k in flat if k in echo}
        kw["link_eff"] = dict(echo.get("link_eff") or Calibration().link_eff)
        kw["gemm_table"] = tuple(tuple(r) for r in echo.get("gemm_table") or ())
        kw["collectives"] = {k: tuple(tuple(r) for r in v)
                             for k, v in (echo.get("collectives") or {}).items()}
        return Calibration(**kw)
    bundled = default_calibration(gpu)
    if bundled is not None and bundled.source == src:
        return bundled
    raise InputError(source, "inputs.calibration.source", f"{src!r}: only plans made with the "
                     "default or bundled calibration can be re-evaluated")


def _with_catalogue(hw: HardwareSpec) -> HardwareSpec:
    """What the catalogue adds by name (the SM count reserved communication SMs share, the
    measured GEMM and NVLink fractions a calibration resolves to), as `spec.hardware` reads
    them: older plans' echoes do not state them."""
    base = gpu_catalogue().get(hw.gpu.name)
    if not base:
        return hw
    g = hw.gpu
    nvlink = base.get("nvlink_gbps")
    return replace(hw, gpu=replace(
        g, sms=g.sms or base.get("sms"),
        gemm_eff=g.gemm_eff or (base["gemm_tflops"] / base["tflops"]["bf16"]
                                if "gemm_tflops" in base else None),
        nvlink_eff=g.nvlink_eff or (base["allreduce_busbw_gbps"] / nvlink
                                    if "allreduce_busbw_gbps" in base and nvlink else None)))


def _hardware(inputs: dict, hw: HardwareSpec) -> HardwareSpec:
    """The echoed hardware; a plan made before the echo stated the catalogue's measured
    figures (none of them in it) gets them back from the catalogue by the GPU's name."""
    gpu = (inputs.get("hardware") or {}).get("gpu") or {}
    if any(k in gpu for k in ("sms", "gemm_eff", "nvlink_eff")):
        return hw
    return _with_catalogue(hw)


def strategy_of(plan: dict[str, Any], num_gpus: int) -> Strategy:
    """The plan's `strategy` section as the cost model's layout."""
    names = {f.name for f in dataclasses.fields(Strategy)}
    d = {k: v for k, v in plan["strategy"].items() if k in names and k not in _NOT_FIELDS}
    if "recompute_modules" in d:
        d["recompute_modules"] = tuple(d["recompute_modules"])
    d["num_gpus"] = num_gpus
    return Strategy(**d)


def rebuild(plan: dict[str, Any], source: str = "plan") -> Rebuilt:
    """The plan's layout on its inputs; an InputError if the plan lacks what that needs or if
    the cost model no longer gives the plan's step time."""
    inputs = plan.get("inputs")
    if not isinstance(inputs, dict) or "strategy" not in plan:
        raise InputError(source, "inputs", "the plan has no inputs echo or strategy to rebuild")
    if "mixed_groups" in plan:  # its stages sit on several GPU types: no one-type rebuild
        form = plan.get("mode", "pipeline")
        raise InputError(source, "mixed_groups", f"a mixed-group plan ({form}): trace, "
                         "explain and plot rebuild one-type plans; `autopar check` "
                         "recomputes this one and its stages state each group's times and "
                         "memory")
    inp = inputs_from_echo(inputs, source)
    if inp.model is None or inp.hardware is None or inp.workload is None:
        raise InputError(source, "inputs", "model, hardware and workload are all needed")
    opts = inputs.get("options", {})
    cal = _calibration(inputs.get("calibration", {}), inp.hardware.gpu.name, source)
    p = make_problem(inp.model, _hardware(inputs, inp.hardware), inp.workload, cal,
                     bool(opts.get("flash_attention", True)),
                     bool(opts.get("fused_grad_accumulation", True)),
                     bool(opts.get("async_tp_allreduce", True)),
                     opts.get("zero3_gather", "prefetch"))
    s = strategy_of(plan, p.hw.num_gpus)
    bounds = [a for a, _ in plan["strategy"]["stage_layers"]] + [p.model.layers]
    rb = Rebuilt(p, s, bounds, _moe_states(plan, p, s))
    got, want = rb.evaluate().step_time, plan["metrics"]["step_time_s"]
    if abs(got - want) > AGREE_REL * want:
        raise InputError(source, "metrics.step_time_s", f"{want:.6g} s, but the cost model "
                         f"gives {got:.6g} s for its layout (a plan of another autopar?)")
    return rb


def _moe_states(plan: dict, p: Problem, s: Strategy) -> list[MoEState]:
    """Each layer's placement as the search priced it (`search.experts.moe_states`)."""
    m = p.model
    layers = {x["layer"]: x for x in (plan.get("experts") or {}).get("layers", [])}
    nodes = ep_geometry(p, s)[0]
    out = []
    for i in range(m.layers):
        x = layers.get(i)
        if not m.is_moe_layer(i) or x is None:
            out.append(MoEState())
            continue
        out.append(MoEState(imbalance=float(x["max_over_mean"]),
                            max_slots=max(len(g) for g in x["gpu_experts"]),
                            cross_node_share=float(x["cross_node_share"]) if nodes > 1
                            else None))
    return out
