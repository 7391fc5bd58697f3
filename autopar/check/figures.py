"""Checks of a plan's figures: memory, FLOPs, communication, timing, throughput and metrics,
each recomputed from the specs (`autopar.check.recompute`) or tested against the identities that
tie them together (tokens/s = samples/s x tokens per sample, and so on).
"""

from __future__ import annotations

from ..spec import GB, HardwareSpec, ModelSpec, Workload
from . import capacity, zero3
from .finding import Findings, close, is_num
from .flops import hardware_flops_per_step, model_flops_per_step
from .pipeline import check_stage_terms, dualpipe_time
from .recompute import Layout, expected_collectives, expected_memory, pipeline_time

IDENTITY_TOL = 1e-6  # figures the plan derives from each other: only float noise
RECOMPUTE_TOL = 1e-4  # figures recomputed here from the formulas of docs/cost-model.md
MEMORY_KEYS = ("weights_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes",
               "activations_no_recompute_bytes", "kv_cache_bytes", "workspace_bytes",
               "tp_overhead_bytes", "reserved_bytes", "total_bytes", "fp8_weights_bytes")
PARTS = ("weights_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes",
         "kv_cache_bytes", "workspace_bytes", "reserved_bytes")


# --------------------------------------------------------------------------- memory
def check_capacity(f: Findings, gpus: list[dict], capacity: float | None = None) -> None:
    """Plan-only: each GPU's parts add up to its total, which fits its capacity."""
    for i, g in enumerate(gpus):
        mem, p = g["memory"], f"gpus[{i}].memory"
        cap = mem["capacity_bytes"]
        if capacity is not None and not close(cap, capacity, IDENTITY_TOL):
            f.error("memory", f"{p}.capacity_bytes", "the hardware's memory per GPU", cap,
                    capacity)
        if mem["total_bytes"] > cap * (1 + IDENTITY_TOL):
            f.error("memory", f"{p}.total_bytes", f"over capacity by "
                    f"{(mem['total_bytes'] - cap) / GB:.2f} GB", mem["total_bytes"], f"<= {cap}")
        if all(k in mem for k in PARTS):
            parts = sum(mem[k] for k in PARTS) + mem.get("fp8_weights_bytes", 0.0)
            if not close(parts, mem["total_bytes"], IDENTITY_TOL):
                f.error("memory", f"{p}.total_bytes", "the sum of its parts",
                        mem["total_bytes"], parts)
        if "headroom_bytes" in mem and not close(mem["headroom_bytes"],
                                                 cap - mem["total_bytes"], IDENTITY_TOL):
            f.error("memory", f"{p}.headroom_bytes", "capacity - total",
                    mem["headroom_bytes"], cap - mem["total_bytes"])


def _own_experts(plan: dict, m: ModelSpec, lay: Layout, gpu: int) -> dict[int, int]:
    """Expert slots this GPU's EP rank holds per MoE layer, from the experts section."""
    sec = plan.get("experts")
    out: dict[int, int] = {}
    if isinstance(sec, dict) and lay.ep > 1:
        rank = lay.coords(gpu)["ep_rank"]
        for e in sec.get("layers", []):
            ge = e.get("gpu_experts")
            if isinstance(ge, list) and rank < len(ge):
                out[e["layer"]] = len(ge[rank])
    return out


def _imbalance(plan: dict) -> dict[int, float]:
    sec = plan.get("experts")
    if not isinstance(sec, dict):
        return {}
    return {e["layer"]: float(e.get("max_over_mean", 1.0)) for e in sec.get("layers", [])}


def check_memory(f: Findings, plan: dict, m: ModelSpec, hw: HardwareSpec, w: Workload,
                 lay: Layout, flash: bool) -> None:
    """Every term of every GPU's memory recomputed [memory-training, memory] and compared;
    then the recomputed total against the capacity."""
    gpus = plan["gpus"]
    check_capacity(f, gpus, hw.gpu.memory_bytes)
    terms = capacity.plan_terms(plan, m, w, lay)  # [capacity] the busiest rank's rows
    imb = capacity.busiest(terms, _imbalance(plan))
    sent = max(capacity.computed(terms).values(), default=1.0)
    cache: dict[tuple, dict[str, float]] = {}
    worst = 0.0
    for i, g in enumerate(gpus[:lay.num_gpus]):
        stage = lay.coords(i)["stage"]
        own = _own_experts(plan, m, lay, i)
        key = (stage, tuple(sorted(own.items())))
        if key not in cache:
            cache[key] = expected_memory(m, hw, w, lay, stage, own, imb, flash, sent)
        want = cache[key]
        mem = g["memory"]
        for k in MEMORY_KEYS:
            if k in mem and not close(mem[k], want[k], RECOMPUTE_TOL):
                f.error("memory", f"gpus[{i}].memory.{k}", "recomputed from the model, "
                        "layout and workload differs", mem[k], want[k])
        worst = max(worst, want["total_bytes"])
        if want["total_bytes"] > hw.gpu.memory_bytes * (1 + IDENTITY_TOL) and \
                mem["total_bytes"] <= mem["capacity_bytes"]:  # else reported above
            f.error("memory", f"gpus[{i}].memory.total_bytes", "recomputed memory exceeds "
                    "the GPU's capacity", mem["total_bytes"],
                    f"{want['total_bytes']:.6g} > {hw.gpu.memory_bytes:.6g}")
    mt = plan.get("metrics")
    if isinstance(mt, dict) and "memory_max_over_capacity" in mt:
        claimed = max(g["memory"]["total_bytes"] for g in gpus) / hw.gpu.memory_bytes
        if not close(mt["memory_max_over_capacity"], claimed, RECOMPUTE_TOL):
            f.error("memory", "metrics.memory_max_over_capacity", "the fullest GPU's total "
                    "over capacity", mt["memory_max_over_capacity"], claimed)


# --------------------------------------------------------------------------- FLOPs
def check_flops_sums(f: Findings, plan: dict) -> None:
    """Plan-only: per-GPU FLOPs are the sum of their components', and add up to the total."""
    fl, gpus = plan["flops"], plan["gpus"]
    per_gpu = [g["flops_per_step"] for g in gpus]
    for i, g in enumerate(gpus):
        parts = sum(c["flops_per_step"] for c in g["components"]) + sum(
            e["flops_per_step"] for e in g["experts"])
        if not close(parts, g["flops_per_step"], IDENTITY_TOL):
            f.error("flops", f"gpus[{i}].flops_per_step", "the sum over its components and "
                    "experts", g["flops_per_step"], parts)
    if isinstance(fl.get("per_gpu"), list):
        for i, (a, b) in enumerate(zip(fl["per_gpu"], per_gpu, strict=False)):
            if not close(a, b, IDENTITY_TOL):
                f.error("flops", f"flops.per_gpu[{i}]", f"gpus[{i}].flops_per_step", a, b)
    if not close(sum(per_gpu), fl["total"], IDENTITY_TOL):
        f.error("flops", "flops.total", "the sum over GPUs", fl["total"], sum(per_gpu))
    if isinstance(fl.get("per_component"), dict) and not close(
            sum(fl["per_component"].values()), fl["total"], IDENTITY_TOL):
        f.error("flops", "flops.per_component", "sums to the total",
                sum(fl["per_component"].values()), fl["total"])
    mt = plan.get("metrics")
    if isinstance(mt, dict) and not close(mt["flops_per_step"], fl["total"], IDENTITY_TOL):
        f.error("flops", "metrics.flops_per_step", "flops.total", mt["flops_per_step"],
                fl["total"])


def check_flops(f: Findings, plan: dict, m: ModelSpec, w: Workload, lay: Layout,
                flash: bool = True) -> None:
    """FLOPs conserved [flops]: the plan's total is the model's FLOPs x recompute and TP
    replication overheads, and its model FLOPs (no overheads) match the model's."""
    check_flops_sums(f, plan)
    terms = capacity.plan_terms(plan, m, w, lay)  # [capacity] dropped copies, padding rows
    want = hardware_flops_per_step(m, w, lay.recompute, lay.tp, lay.sequence_parallel, flash,
                                   lay.modules, capacity.computed(terms))
    model = model_flops_per_step(m, w, capacity.kept(terms))
    if not close(plan["flops"]["total"], want, RECOMPUTE_TOL):
        f.error("flops", "flops.total", "model FLOPs x passes x recompute and replication "
                "overheads", plan["flops"]["total"], want)
    mt = plan.get("metrics")
    if isinstance(mt, dict) and not close(mt["model_flops_per_step"], model, RECOMPUTE_TOL):
        f.error("flops", "metrics.model_flops_per_step", "the model's FLOPs per step, no "
                "recompute", mt["model_flops_per_step"], model)


# --------------------------------------------------------------------------- communication
def check_communication(f: Findings, plan: dict, m: ModelSpec, hw: HardwareSpec,
                        w: Workload, lay: Layout) -> None:
    """Collective sizes and counts follow from the degrees [tp-comm, ep-comm, p2p, dp-comm];
    none is faster than its link allows."""
    want = expected_collectives(m, hw, w, lay, _fullest(plan), zero3.mode_of(plan),
                                capacity.computed(capacity.plan_terms(plan, m, w, lay)))
    seen = set()
    for i, c in enumerate(plan["communication"]):
        key = (c["group"], c.get("stage", 0), c.get("direction") or c.get("part", ""))
        p = f"communication[{i}]"
        if key not in want or key in seen:
            f.error("communication", p, f"{'duplicate' if key in seen else 'unexpected'} "
                    f"{c['group']} collective for stage {key[1]} under these degrees",
                    c["collective"], None)
            continue
        seen.add(key)
        e = want[key]
        if c["collective"] != e.collective:
            f.error("communication", f"{p}.collective", "kind of collective", c["collective"],
                    e.collective)
        if c["group_size"] != e.group_size:
            f.error("communication", f"{p}.group_size", f"the {c['group']} degree",
                    c["group_size"], e.group_size)
        if not close(c["bytes_per_call"], e.bytes_per_call, RECOMPUTE_TOL):
            f.error("communication", f"{p}.bytes_per_call", f"{_COMM_FORMULA[key[0]]}",
                    c["bytes_per_call"], e.bytes_per_call)
        if c["calls_per_step"] != e.calls_per_step:
            f.error("communication", f"{p}.calls_per_step", "per layer, micro-batch and pass",
                    c["calls_per_step"], e.calls_per_step)
        if "bytes_per_step" in c and not close(
                c["bytes_per_step"], c["bytes_per_call"] * c["calls_per_step"], IDENTITY_TOL):
            f.error("communication", f"{p}.bytes_per_step", "bytes_per_call x calls_per_step",
                    c["bytes_per_step"], c["bytes_per_call"] * c["calls_per_step"])
        if "time_per_call_s" in c:
            if not close(c["time_per_step_s"], c["time_per_call_s"] * c["calls_per_step"],
                         IDENTITY_TOL):
                f.error("communication", f"{p}.time_per_step_s", "time_per_call_s x "
                        "calls_per_step", c["time_per_step_s"],
                        c["time_per_call_s"] * c["calls_per_step"])
            if c["time_per_call_s"] < e.min_time_per_call_s * (1 - RECOMPUTE_TOL):
                f.error("communication", f"{p}.time_per_call_s", "faster than the link's "
                        "nominal bandwidth allows", c["time_per_call_s"],
                        f">= {e.min_time_per_call_s:.6g}")
        if "exposed_s" in c:  # the part of the link time the step waits for
            if c["exposed_s"] > c["time_per_step_s"] * (1 + IDENTITY_TOL) + 1e-12:
                f.error("communication", f"{p}.exposed_s", "more exposed than the collective "
                        "takes on the link", c["exposed_s"], f"<= {c['time_per_step_s']:.6g}")
            if "exposed" in c and c["exposed"] != (c["exposed_s"] > 0):
                f.error("communication", f"{p}.exposed", "exposed_s > 0", c["exposed"],
                        c["exposed_s"] > 0)
    for key, e in want.items():
        if key not in seen:
            f.error("communication", "communication", f"no {key[0]} collective listed for "
                    f"stage {key[1]}{' ' + key[2] if key[2] else ''}", None,
                    f"{e.collective} of {e.bytes_per_call:.6g} B x {e.calls_per_step}")


def _fullest(plan: dict) -> dict[int, int]:
    """Expert copies on the fullest EP rank of each MoE layer, from the experts section."""
    sec = plan.get("experts")
    if not isinstance(sec, dict):
        return {}
    return {e["layer"]: max(len(x) for x in e["gpu_experts"]) for e in sec.get("layers", [])
            if e.get("gpu_experts")}


def check_exposed(f: Findings, plan: dict) -> None:
    """Plan-only: per stage, the collectives' exposed parts add up to the stage's exposed
    communication in `timing.per_stage` (per micro-batch) x micro-batches, and the critical
    stage's to the step's phases [tp-async, tp-overlap, dp-comm]."""
    comm, t = plan["communication"], plan["timing"]
    if not all("exposed_s" in c for c in comm):
        return  # a plan from before exposed_s: nothing to add up
    m = t.get("micro_batches", 1)

    def phase_of(c: dict) -> str:  # the per-stage timing figure a collective's exposure is in
        if c.get("part") in ("parameters", "gradients"):  # [fsdp] ZeRO-3's per-unit traffic
            return "param_gather_s"
        return {"tp": "tp_comm_s", "ep": "ep_comm_s", "pp": "pp_comm_s", "cp": "cp_comm_s",
                "dp": "dp_exposed_s"}.get(c["group"], "")

    keys = ("tp_comm_s", "ep_comm_s", "pp_comm_s", "param_gather_s", "cp_comm_s",
            "dp_exposed_s")
    for k, st in enumerate(t["per_stage"]):
        for key in keys:
            if key not in st:
                continue
            listed = sum(c["exposed_s"] for c in comm
                         if phase_of(c) == key and c.get("stage", 0) == k)
            want = st[key] * (1 if key == "dp_exposed_s" else m)
            if not close(listed, want, IDENTITY_TOL):
                f.error("communication", f"timing.per_stage[{k}].{key}", "the exposed_s of "
                        "this stage's collectives add up to it"
                        f"{'' if key == 'dp_exposed_s' else ' x micro-batches'}", want, listed)
    crit = t.get("critical_stage")
    if isinstance(crit, int) and 0 <= crit < len(t["per_stage"]):
        st = t["per_stage"][crit]
        for key in keys[:5]:
            name = key.removesuffix("_s") + "_exposed_s"
            if name in t and key in st and not close(t[name], st[key] * m, IDENTITY_TOL):
                f.error("timing", f"timing.{name}", f"the critical stage's {key} x "
                        "micro-batches", t[name], st[key] * m)
    if all("dp_exposed_s" in st for st in t["per_stage"]) and not close(
            t["dp_exposed_s"], max(st["dp_exposed_s"] for st in t["per_stage"]), IDENTITY_TOL):
        f.error("timing", "timing.dp_exposed_s", "the largest stage's exposed DP sync",
                t["dp_exposed_s"], max(st["dp_exposed_s"] for st in t["per_stage"]))
    zero3.check_exposed(f, plan)  # [fsdp] what no overlap hides


_COMM_FORMULA = {"tp": "T x hidden x dtype bytes", "ep": "T / tp x top_k x hidden x dtype bytes",
                 "pp": "T x hidden x dtype bytes / tp", "dp": "stage parameters x grad bytes",
                 "edp": "stage expert parameters x bytes (ZeRO-3 gathers)",
                 "cp": "T / cp x K and V bytes per token on one GPU (x cp gathered; + Q and "
                       "output for a2a)"}


# --------------------------------------------------------------------------- timing
PHASES = ("forward_s", "backward_s", "recompute_s", "tp_comm_exposed_s", "ep_comm_exposed_s",
          "pp_comm_exposed_s", "param_gather_exposed_s", "bubble_s", "dp_exposed_s",
          "optimizer_s")  # the step's phases (docs/cost-model.md, timing phases)
STAGE_PARTS = ("forward_compute_s", "backward_compute_s", "recompute_s", "tp_comm_s",
               "ep_comm_s", "pp_comm_s", "param_gather_s")
CP_PHASE, CP_PART = "cp_comm_exposed_s", "cp_comm_s"  # in plans with CP only [cp-attention]


def check_timing(f: Findings, plan: dict, lay: Layout | None) -> None:
    """[1f1b, forward-pipeline] step = pipeline + exposed DP sync + optimizer, pipeline =
    sum over stages + (m - 1) x the slowest stage."""
    t = plan["timing"]
    stages = t["per_stage"]
    m = lay.num_micro_batches if lay else t.get("micro_batches", 1)
    v = lay.virtual_stages if lay else 1
    if lay and len(stages) != lay.pp:
        f.error("timing", "timing.per_stage", "one entry per stage", len(stages), lay.pp)
    busy = [st.get("per_micro_batch_s") for st in stages]
    pipeline = t.get("pipeline_s")
    sched = lay.pipeline_schedule if lay else "1f1b"
    if busy and all(isinstance(x, (int, float)) for x in busy):
        counts = [b - a + 1 for a, b in lay.stage_layers] if lay else None
        rule = "sum over stages / v + (m - 1/v) x slowest"
        if sched != "1f1b" and counts and check_stage_terms(f, stages):  # [dualpipe]
            pipeline = dualpipe_time(sched, busy, [st["backward_s"] for st in stages],
                                     [st["weight_grad_s"] for st in stages], counts, m)[0]
            rule = "m x slowest + (PP/2 - 1) x max chunk (F&B + B - 3W)"
        elif sched == "1f1b":
            pipeline = pipeline_time(busy, m, v, counts)
        if "pipeline_s" in t and not close(t["pipeline_s"], pipeline, IDENTITY_TOL):
            f.error("timing", "timing.pipeline_s", rule, t["pipeline_s"], pipeline)
        if not close(t["bubble_s"], pipeline - m * max(busy), IDENTITY_TOL):
            f.error("timing", "timing.bubble_s", "pipeline - m x slowest", t["bubble_s"],
                    pipeline - m * max(busy))
    mt = plan.get("metrics")
    if isinstance(mt, dict) and "step_time_s" in mt and not close(
            t["step_time_s"], mt["step_time_s"], IDENTITY_TOL):
        f.error("timing", "timing.step_time_s", "metrics.step_time_s", t["step_time_s"],
                mt["step_time_s"])
    if pipeline is not None:
        step = pipeline + t["dp_exposed_s"] + t["optimizer_s"]
        if not close(t["step_time_s"], step, IDENTITY_TOL):
            f.error("timing", "timing.step_time_s", "pipeline + exposed DP sync + optimizer",
                    t["step_time_s"], step)
    for k, st in enumerate(stages):  # a micro-batch's time is its compute and exposed comm
        if all(is_num(st.get(x)) for x in (*STAGE_PARTS, "per_micro_batch_s")):
            parts = sum(st[x] for x in STAGE_PARTS) + st.get(CP_PART, 0.0)
            if not close(st["per_micro_batch_s"], parts, IDENTITY_TOL):
                f.error("timing", f"timing.per_stage[{k}].per_micro_batch_s", "the sum of its "
                        "compute and exposed communication", st["per_micro_batch_s"], parts)
    if all(is_num(t.get(x)) for x in PHASES):  # [timing phases] they add up to the step
        total = sum(t[x] for x in PHASES) + t.get(CP_PHASE, 0.0)
        if not close(total, t["step_time_s"], IDENTITY_TOL):
            f.error("timing", "timing", f"the phases {', '.join(PHASES)} add up to the step "
                    "time", total, t["step_time_s"])


# --------------------------------------------------------------------------- throughput
def check_throughput(f: Findings, plan: dict, peaks: list[float], num_gpus: int,
                     model_flops: float | None, tokens_per_step: float | None,
                     dtype: str | None = None) -> float:
    """Claimed rates reachable: no more FLOP/s than GPUs x peak, by the plan's own FLOPs and
    by the model's (the reachable tokens/s is GPUs x peak / model FLOPs per token).

    `peaks` are the per-GPU peaks the plan may quote, the first the one [metrics] names
    (that of `dtype`, the precision the GEMMs run at); bounds use the highest. Returns the
    total peak the plan's utilization figures refer to."""
    mt = plan["metrics"]
    if dtype is not None and "peak_dtype" in mt and mt["peak_dtype"] != dtype:
        f.error("throughput", "metrics.peak_dtype", "the precision the GEMMs run at",
                mt["peak_dtype"], dtype)
    peak_per_gpu = max(peaks)
    peak = peak_per_gpu * num_gpus
    step = mt["step_time_s"]
    quoted = peaks[0] * num_gpus
    if "peak_flops_per_s" in mt:
        match = [x * num_gpus for x in peaks if close(mt["peak_flops_per_s"], x * num_gpus,
                                                      IDENTITY_TOL)]
        if match:
            quoted = match[0]
        else:
            f.error("throughput", "metrics.peak_flops_per_s", "GPUs x the GPU's peak FLOP/s "
                    f"at the GEMM precision{f' ({dtype})' if dtype else ''}",
                    mt["peak_flops_per_s"], quoted)
    if model_flops and tokens_per_step:
        per_token = model_flops / tokens_per_step
        reachable = peak / per_token
        if mt["throughput_tokens_per_s"] > reachable * (1 + IDENTITY_TOL):
            f.error("throughput", "metrics.throughput_tokens_per_s",
                    f"needs {mt['throughput_tokens_per_s'] * per_token / 1e12:.4g} TFLOP/s, "
                    f"the GPUs peak at {peak / 1e12:.4g}: reachable at 100% utilization",
                    mt["throughput_tokens_per_s"], f"<= {reachable:.6g}")
    if step > 0 and mt["flops_per_step"] / step > peak * (1 + IDENTITY_TOL):
        f.error("throughput", "metrics.step_time_s", "shorter than the plan's FLOPs take at "
                "peak", step, f">= {mt['flops_per_step'] / peak:.6g}")
    if "achieved_flops_per_s" in mt and mt["achieved_flops_per_s"] > peak * (1 + IDENTITY_TOL):
        f.error("throughput", "metrics.achieved_flops_per_s", "above the GPUs' peak",
                mt["achieved_flops_per_s"], f"<= {peak:.6g}")
    for key in ("mfu", "hfu"):
        if key in mt and mt[key] > 1 + IDENTITY_TOL:
            f.error("throughput", f"metrics.{key}", "utilization above 100%", mt[key], "<= 1")
    gpus = plan.get("gpus")
    if isinstance(gpus, list) and gpus and step > 0:
        busiest = max(range(len(gpus)), key=lambda i: gpus[i]["flops_per_step"])
        need = gpus[busiest]["flops_per_step"] / peak_per_gpu
        if need > step * (1 + IDENTITY_TOL):
            f.error("throughput", f"gpus[{busiest}].flops_per_step", "this GPU's FLOPs take "
                    "longer than the step even at peak", step, f">= {need:.6g} s")
    return quoted


# --------------------------------------------------------------------------- metrics
def check_metrics(f: Findings, plan: dict, w: Workload | None, peak: float | None,
                  num_gpus: int) -> None:
    """The metrics agree with each other, with the timing and with the workload."""
    mt = plan["metrics"]
    step = mt["step_time_s"]

    def same(key: str, value: float, why: str, tol: float = IDENTITY_TOL) -> None:
        if key in mt and not close(mt[key], value, tol):
            f.error("metrics", f"metrics.{key}", why, mt[key], value)

    if w is not None:
        same("throughput_tokens_per_s", mt["throughput_samples_per_s"] * w.tokens_per_sample,
             f"samples/s x {w.tokens_per_sample} tokens per sample")
        same("throughput_samples_per_s", w.batch / step, f"batch {w.batch} / step time")
        if w.kind != "training" and "serving" not in plan:
            same("ttft_s" if w.phase == "prefill" else "tpot_s", step, "the step time")
    same("achieved_flops_per_s", mt["flops_per_step"] / step, "flops_per_step / step time")
    if peak:
        same("hfu", mt["flops_per_step"] / (step * peak), "flops_per_step / (step x peak)")
        same("mfu", mt["model_flops_per_step"] / (step * peak),
             "model_flops_per_step / (step x peak)")
    if isinstance(plan.get("serving"), dict):  # serving figures (docs/serving.md)
        from .serving import serving_expectations, serving_mismatches

        for key, value, why in serving_expectations(plan):
            same(key, value, why)
        for field, why, got, want in serving_mismatches(plan):
            f.error("metrics", field, why, got, want)
    else:
        same("tokens_per_s_per_gpu", mt["throughput_tokens_per_s"] / num_gpus,
             "tokens/s / GPUs")
    if "hfu" in mt and mt["mfu"] > mt["hfu"] * (1 + IDENTITY_TOL):
        f.error("metrics", "metrics.mfu", "MFU counts no recompute, so mfu <= hfu", mt["mfu"],
                f"<= {mt['hfu']:.6g}")
