"""The library entry point: `autopar.solve(model, hardware, workload, ...) -> Plan`.

The CLI is a thin shell over this module; other planners call it directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .cost.bundled import default_calibration
from .cost.calibration import Calibration
from .cost.fp8 import check_recipe, check_weights
from .cost.fsdp import ZERO3_GATHERS
from .cost.layer import Problem
from .errors import InfeasibleError, InputError
from .plan import Plan, build_plan
from .search import PIN_KEYS, SearchOptions, check_cp_pins, search
from .search.deadline import Deadline, check_time_limit
from .search.degrees import check_capacity_pins, recompute_modules_pin
from .search.experts import placements_for
from .search.infeasible import explain_infeasible
from .search.placement import check_budget
from .spec import GB, HardwareSpec, ModelFile, ModelSpec, Workload, load_hardware, load_model
from .spec.files import load_any_hardware
from .spec.frameworks import load_framework
from .spec.groups import MixedHardware, refuse_mixed
from .spec.hardware import default_nodes

__all__ = ["solve", "check", "place", "verify_plan", "load_model", "load_hardware", "Plan",
           "make_problem"]


def make_problem(model: ModelSpec | ModelFile | str | Path,
                 hardware: HardwareSpec | str | Path,
                 workload: Workload | None = None,
                 calibration: Calibration | str | None = None,
                 flash_attention: bool = True,
                 fused_grad_accumulation: bool = True,
                 async_tp_allreduce: bool = True,
                 zero3_gather: str = "prefetch") -> Problem:
    """The validated instance. The four switches describe the training software, not the
    layout (`docs/calibration.md`, software-stack switches). `calibration`: None plans with
    the measured tables autopar ships for the hardware's GPU type where it has them and the
    catalogue's flat fractions elsewhere; "bundled" insists on the tables (an error for a
    GPU type without); "defaults" keeps the flat fractions everywhere (`cost.bundled`)."""
    mf = model if isinstance(model, ModelFile) else (
        ModelFile(model) if isinstance(model, ModelSpec) else load_model(model))
    hw = one_type(hardware, "make_problem")
    if calibration is None:
        calibration = default_calibration(hw.gpu.name)
    elif isinstance(calibration, str):
        calibration = _named_calibration(calibration, hw)
    wl = workload or mf.workload
    if wl is None:
        raise InputError(mf.source or "model", "workload",
                         "no workload: add a workload section or pass one")
    m = mf.model
    if wl.kind == "training" and m.weight_dtype not in (None, m.dtype):
        raise InputError(mf.source or "model", "model.weight_dtype",
                         f"{m.weight_dtype} weights are a serving checkpoint; training keeps "
                         f"{m.dtype} weights (workload.precision: fp8 runs fp8 GEMMs)")
    if wl.kind == "training" and m.expert_weight_dtype not in (None, m.dtype):
        raise InputError(mf.source or "model", "model.expert_weight_dtype",
                         f"{m.expert_weight_dtype} experts are a serving checkpoint; training "
                         f"keeps {m.dtype} weights (set expert_weight_dtype: {m.dtype}, or "
                         "plan the HF config without its quantization_config)")
    check_recipe(wl, hw, mf.source or "workload")
    check_weights(m, hw, mf.source or "model")
    if zero3_gather not in ZERO3_GATHERS:
        raise InputError("options", "zero3_gather", f"{zero3_gather!r} is not one of "
                                                    f"{', '.join(ZERO3_GATHERS)}")
    return Problem(mf.model, hw, wl, calibration or Calibration(), flash_attention,
                   fused_grad_accumulation, async_tp_allreduce, zero3_gather)


def one_type(hardware: Any, what: str) -> HardwareSpec:
    """A one-type spec from a spec or a file; a mixed one is refused in one line."""
    if isinstance(hardware, MixedHardware):
        raise refuse_mixed(hardware, what)
    return hardware if isinstance(hardware, HardwareSpec) else load_hardware(hardware)


def _named_calibration(name: str, hw: HardwareSpec) -> Calibration:
    """A calibration given by name rather than as a `Calibration`: "bundled" or "defaults"."""
    from .cost.bundled import BUNDLED, DEFAULTS, bundled_calibration

    if name == DEFAULTS:
        return Calibration()
    if name != BUNDLED:
        raise InputError("calibration", "", f"{name!r} is not a calibration name "
                                            f"({BUNDLED!r} or {DEFAULTS!r}; read a file with "
                                            "cost.parse_calibration)")
    return bundled_calibration(hw.gpu.name)


TBO_ENGINES = ("sglang",)  # two-batch overlap is SGLang's (--enable-two-batch-overlap)


def _without_tbo(p: Problem, framework: str) -> Problem:
    """A serving engine without two-batch overlap never plans it: searched (None) becomes
    off; pinned on is refused in one line."""
    w = p.workload
    if w.kind == "training" or framework in TBO_ENGINES or w.two_batch_overlap is False:
        return p
    if w.two_batch_overlap:
        raise InputError("workload", "two_batch_overlap", f"is SGLang's; {framework} has none "
                         "(drop it or use --framework sglang)")
    return replace(p, workload=replace(w, two_batch_overlap=False))


def solve(model: ModelSpec | ModelFile | str | Path,
          hardware: HardwareSpec | str | Path,
          workload: Workload | None = None,
          *,
          pins: dict[str, Any] | None = None,
          time_limit_s: float = 10.0,
          seed: int = 0,
          workers: int = 1,
          calibration: Calibration | str | None = None,
          flash_attention: bool = True,
          fused_grad_accumulation: bool = True,
          async_tp_allreduce: bool = True,
          zero3_gather: str = "prefetch",
          progress: Callable[[str], None] | None = None,
          frontier: bool = False,
          disaggregate: bool = False,
          decode_hw: HardwareSpec | str | Path | None = None,
          framework: str = "any", placement_budget_s: float | None = None) -> Plan:
    """Find the fastest layout and return its plan; raise InfeasibleError (with the smallest
    change that would fit) when no layout fits.

    `time_limit_s` bounds the whole call (search, placements and the plan), not one solver
    call: the search stops in time to build the plan, and a search cut short returns its
    best layout with status FEASIBLE and its bound (`docs/ARCHITECTURE.md`).
    `placement_budget_s` caps each MoE layer's expert placement (the anytime placement, then
    CP-SAT in what is left; 0: the anytime placement alone, `docs/expert-load.md`).

    Serving (an inference workload with phase both or TTFT / TPOT targets, or any of
    `frontier`, `disaggregate`, `decode_hw`) goes to `serveplan.serve`: the most tokens/s
    per GPU under the targets, the Pareto frontier, the disaggregated comparison.

    `framework` (`spec.frameworks.FRAMEWORKS`): only layouts that framework runs are
    searched (its rules in `data/frameworks/`); "any" is the whole space.

    Hardware of several GPU groups (a `groups:` file, or `spec.groups.MixedHardware`) plans
    a training step or one prefill / decode step over the groups (`plan.mixed_solve`); the
    serving search on it (phase both, targets, `frontier`, `disaggregate`) gives the plan
    paced by the slowest type with the groups apart and the pools by type beside it
    (`serve.mixed`; docs/hardware.md); a calibration or `decode_hw` refuse it in one line."""
    deadline = Deadline.after(check_time_limit(time_limit_s))
    fw = load_framework(framework)
    say = progress or (lambda msg: None)
    say("reading the inputs")
    pins = dict(pins or {})
    bad = [k for k in pins if k not in PIN_KEYS]
    if bad:
        raise InputError("pins", bad[0], f"unknown option; known: {', '.join(PIN_KEYS)}")
    if not isinstance(hardware, HardwareSpec):  # a `groups:` file may hold several types
        hardware = hardware if isinstance(hardware, MixedHardware) else \
            load_any_hardware(hardware)
    if isinstance(hardware, MixedHardware):
        if calibration is not None or decode_hw is not None:
            raise refuse_mixed(hardware, "a calibration or --decode-hw (name the groups "
                               "in the file instead)")
        mp = make_problem(model, hardware.groups[0].hw, workload, None, flash_attention,
                          fused_grad_accumulation, async_tp_allreduce, zero3_gather)
        mopts = SearchOptions(pins=pins, time_limit_s=time_limit_s, seed=seed,
                              workers=workers, framework=framework)
        if mp.workload.wants_serving or frontier or disaggregate:
            from .serve.mixed import serve_mixed

            if fw is not None:
                fw.check_kind(mp.workload.kind)
                mp = _without_tbo(mp, fw.name)
            say("searching serving layouts paced by the slowest group")
            return serve_mixed(mp, hardware, mopts, frontier, disaggregate,
                               deadline.sooner(plan_reserve_s(mp, deadline.limit_s)))
        from .plan.mixed_solve import solve_mixed_plan

        return solve_mixed_plan(mp, hardware, mopts, deadline, say)
    p = make_problem(model, hardware, workload, calibration, flash_attention,
                     fused_grad_accumulation, async_tp_allreduce, zero3_gather)
    if "recompute_modules" in pins:
        pins["recompute_modules"] = recompute_modules_pin(pins, p.model)
    check_cp_pins(p, pins)
    check_capacity_pins(p, pins)  # [capacity] pinned only; serving has none
    if fw is not None:
        fw.check_kind(p.workload.kind)
        p = _without_tbo(p, fw.name)
    budget = None if placement_budget_s is None else check_budget(placement_budget_s)
    opts = SearchOptions(pins=pins, time_limit_s=time_limit_s, seed=seed, workers=workers,
                         framework=framework, placement_budget_s=budget)
    from .serve.plan import serve, wants_serving

    if wants_serving(p.workload) or frontier or disaggregate or decode_hw is not None:
        dhw = None if decode_hw is None else one_type(decode_hw, "the decode pool")
        if dhw is not None:  # the decode pool serves the same checkpoint
            check_weights(p.model, dhw, "decode hardware")
        say("searching serving layouts")
        return serve(p, opts, frontier, disaggregate, dhw,
                     deadline.sooner(plan_reserve_s(p, deadline.limit_s)))
    result = search(p, opts, say, deadline.sooner(plan_reserve_s(p, deadline.limit_s)))
    if result.best is None:
        raise InfeasibleError(*explain_infeasible(p, opts, result, deadline))
    placed = placements_for(p, result.best.strategy, result.placement, seed, workers,
                            deadline=deadline, budget_s=budget)
    say(f"building the plan ({p.hw.num_gpus} GPUs)")
    return build_plan(p, opts, result, placed)


# Plan building + JSON + writing per GPU, worst case: DeepSeek-V3 on 10,000 H800 takes 0.31 s
# with 400 expert patterns (TP8 PP2 EP200) and 0.95 s with one per GPU (TP8 PP50 EP200); the
# reserve is set aside before the layout is known, so it takes the worst case
# (benchmarks/time_limit.py; the self-check costs per pattern, `selfcheck.PlanView`)
PLAN_S_PER_GPU = 1e-4


def plan_reserve_s(p: Problem, limit_s: float) -> float:
    """The part of the time limit kept back from the search for building and writing the
    plan, which cannot stop half-way: its measured cost per GPU, at most half the limit."""
    return min(0.5 * limit_s, PLAN_S_PER_GPU * p.hw.num_gpus)


def check(plan: Plan | dict | str | Path,
          model: ModelSpec | ModelFile | str | Path | None = None,
          hardware: HardwareSpec | str | Path | None = None,
          workload: Workload | None = None, framework: str | None = None) -> list:
    """Verify a plan (a `Plan`, its parsed JSON or a plan file) against its inputs,
    independently of the search: the findings `autopar check` prints, errors first.

    Model, hardware and workload default to the plan's own `inputs`."""
    from .check.verify import check_plan
    from .plan import read_plan

    base, source = None, "plan"
    if isinstance(plan, Plan):
        data = plan.data
    elif isinstance(plan, dict):
        data = plan
    else:
        data, base, source = read_plan(plan), Path(plan).parent, str(plan)
    return check_plan(data, model, hardware, workload, base_dir=base, source=source,
                      framework=framework)


def verify_plan(plan: Plan | dict | str | Path, seed: int = 0) -> Any:
    """Run a plan (`autopar verify`, docs/verify.md): a shrunken model with the plan's
    structure on one CPU process per GPU, placed as the plan says, against one process. The
    Report (`.passed`, `.text()`, `.to_dict()`); needs the `verify` extra (torch)."""
    from .plan import read_plan
    from .verify import verify_plan as run

    if isinstance(plan, Plan):
        return run(plan.data, "plan", seed)
    if isinstance(plan, dict):
        return run(plan, "plan", seed)
    return run(read_plan(plan), str(plan), seed)


# --------------------------------------------------------------------------- autopar place


def place(loads: str | Path, ep: int, gpus_per_node: int | None = None, spare_slots: int = 0,
          placement_budget_s: float = 1.0, engine: str = "sglang",
          model: str | Path | None = None, hardware: str | Path | None = None,
          current: str | Path | None = None, horizon_steps: int = 3000,
          tokens_per_step: float | None = None, map_path: str = "FILE") -> dict[str, Any]:
    """Place every MoE layer of a measured load file (`spec.engine_loads` formats) over an EP
    group and return the engine's map (`export.placement_maps`), its launch settings, the
    per-layer figures and, with a model, whether it is worth a rebalance from `current` (a
    map file) or the engine's default map (`search.placement.rebalance`).

    `placement_budget_s` bounds all layers together (anytime placement, then CP-SAT in what
    is left); `tokens_per_step` rescales every layer to that many routed tokens (tokens x
    top-k) per step, else the file's counts over its recorded passes."""
    from .export.placement_maps import MAP_ENGINES, check_layout, engine_map, read_map, split_gpus
    from .search.placement import PlacementProblem, place_layers, route_loads
    from .search.placement.rebalance import ExpertCost, fill_slots, rebalance
    from .spec import parse_hardware
    from .spec.engine_loads import read_engine_loads

    src = str(loads)
    budget = check_budget(placement_budget_s, "--placement-budget")
    if engine not in MAP_ENGINES:
        raise InputError("--to", "", f"{engine!r} is not one of {', '.join(MAP_ENGINES)}")
    if type(ep) is not int or ep < 1:
        raise InputError("--ep", "", f"must be an integer >= 1, got {ep!r}")
    ml = read_engine_loads(src)
    E = ml.num_experts
    mf = load_model(model) if model is not None else None
    m = mf.model if mf is not None else None
    hw = one_type(hardware, "autopar place") if hardware is not None else None
    ids, total = _layer_ids(ml, m, src)
    gpn = min(ep, gpus_per_node or (hw.nvlink_domain if hw else 8))
    cap = -(-E // ep) + spare_slots
    if cap > E:
        raise InputError("--spare-slots", "", f"{cap} slots per GPU for {E} experts: a GPU "
                         "would hold one expert twice")
    rows = ml.per_step()
    if tokens_per_step is not None:
        rows = rows / rows.sum(axis=1, keepdims=True) * float(tokens_per_step)
    problems = [PlacementProblem(tuple(float(v) for v in r), ep, gpn, cap, spare_slots)
                for r in rows]
    t0 = time.perf_counter()
    placed = place_layers(problems, budget_s=budget, deadline=Deadline.after(max(budget, 1e-3)))
    took = time.perf_counter() - t0
    filled = [fill_slots(p, pl.gpu_experts) for p, pl in zip(problems, placed, strict=True)]
    for lid, gx in zip(ids, filled, strict=True):  # what every engine's table requires
        check_layout(gx, E, "placement", f"layer {lid}")
    emap = engine_map(engine, filled, ids, total, E, map_path)
    layers = []
    for lid, p, pl, gx in zip(ids, problems, placed, filled, strict=True):
        lo, cross = route_loads(p, gx)
        mean = sum(p.loads) / ep
        layers.append({"layer": lid, "max_over_mean": float(lo.max()) / mean,
                       "bound_over_mean": pl.best_bound / mean,
                       "cross_node_share": cross / sum(p.loads), "method": pl.method,
                       "status": pl.status, "gpus": [list(g) for g in gx]})
    out: dict[str, Any] = {
        "loads": {"path": src, "format": ml.fmt, "moe_layers": len(ids), "experts": E,
                  "steps": ml.steps, "layer_ids": "model layers" if ml.layer_ids or m
                  else "MoE-layer ordinals (give --model for model layer indices)"},
        "engine": engine, "ep": ep, "gpus_per_node": gpn, "spare_slots": spare_slots,
        "slots_per_gpu": cap, "physical_experts": ep * cap, "args": emap.args,
        "note": emap.note, "placement_s": took, "layers": layers, "rebalance": None}
    if current is not None and m is None:
        raise InputError("--current", "", "pricing a rebalance needs --model (the experts' "
                         "bytes and FLOPs)")
    if m is None:
        return {**out, "map_text": emap.text, "map_suffix": emap.suffix}
    if current is not None:
        got = read_map(str(current))
        keys = ids if got.keyed_by == "layer" else list(range(len(ids)))
        missing = [k for k in keys if k not in got.rows]
        if missing:
            raise InputError(str(current), "", f"no row for layer {missing[0]}")
        cur = [split_gpus(got.rows[k], ep, str(current), f"layer {k}") for k in keys]
        for k, c in zip(keys, cur, strict=True):
            check_layout(c, E, str(current), f"layer {k}")
        cur_name = str(current)
    else:  # the engines' start: slot i holds expert i % E
        cur = [split_gpus([i % E for i in range(ep * cap)], ep, "default", "")] * len(ids)
        cur_name = "the engine default map (slot i -> expert i % E)"
    pricing = hw or parse_hardware(default_nodes(), "default hardware")  # stated in the verdict
    cost = ExpertCost.of(m, training=bool(mf.workload and mf.workload.kind == "training"))
    verdict = rebalance(problems, cur, filled, cost, pricing.gpu.flops(m.weight_dtype or m.dtype),
                        pricing.intra.bytes_per_s, pricing.inter.bytes_per_s, horizon_steps,
                        f"{pricing.name}: intra {pricing.intra.bytes_per_s / GB:g} GB/s, "
                        f"inter {pricing.inter.bytes_per_s / GB:g} GB/s")
    return {**out, "rebalance": {**verdict.to_dict(), "current": cur_name},
            "map_text": emap.text, "map_suffix": emap.suffix}


def _layer_ids(ml, m: ModelSpec | None, src: str) -> tuple[list[int], int]:
    """The model layer of each row and the layers of the engine's full table: from the file
    (SGLang records every layer), else the model's MoE layers, else the rows themselves."""
    n = ml.counts.shape[0]
    if m is not None:
        if not m.is_moe or m.experts != ml.num_experts:
            raise InputError(src, "", f"{ml.num_experts} experts per layer, the model has "
                             f"{m.experts}")
        moe = [i for i in range(m.layers) if m.is_moe_layer(i)]
        if ml.layer_ids is None and len(moe) != n:
            raise InputError(src, "", f"{n} MoE layers, the model has {len(moe)}")
        if ml.layer_ids is not None and not set(ml.layer_ids) <= set(moe):
            bad = sorted(set(ml.layer_ids) - set(moe))[0]
            raise InputError(src, f"layer {bad}", "has counts but is dense in the model")
        ids = list(ml.layer_ids) if ml.layer_ids is not None else moe
        return ids, m.layers
    if ml.layer_ids is not None:
        return list(ml.layer_ids), ml.total_layers or max(ml.layer_ids) + 1
    return list(range(n)), n
