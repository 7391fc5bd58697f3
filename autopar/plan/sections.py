"""The plan's plan-wide sections that restate what went in and what the search found: the
`inputs` echo (what `autopar check` rebuilds the specs from), the `experts` placement per MoE
layer, the `flops` totals, the `solver` record and the `formulas` index. Each is a pure
function of the problem, the placement or the search result."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ..cost.capacity import capacity_terms, plan_fields
from ..cost.fp8 import gemm_key
from ..cost.fused_moe import moe_shape
from ..cost.layer import MoEState, Problem, micro_batch_tokens
from ..cost.strategy import Strategy
from ..search import SearchOptions, SearchResult
from ..search.placement import Placement


def inputs_echo(p: Problem, opts: SearchOptions, zero3: bool = False) -> dict[str, Any]:
    m, hw, w = p.model, p.hw, p.workload
    model = asdict(m)
    model["dense_layers"] = list(m.dense_layers)
    if not m.mtp_layers:  # [mtp] echoed only where a model has them (older plans lack it)
        del model["mtp_layers"]
    if not m.router_groups:  # [deepep] likewise group-limited routing
        del model["router_groups"], model["router_group_topk"]
    if m.hf_id is None:  # likewise the HF id the exporters launch
        del model["hf_id"]
    if m.expert_weight_dtype is None:  # [mxfp4] likewise the experts' own format
        del model["expert_weight_dtype"]
    if not m.window_layers:  # [attention-window] likewise attention windows
        del model["attention_window"], model["window_layers"], model["window_kind"]
    else:
        model["window_layers"] = list(m.window_layers)
    return {
        "model": model,
        "hardware": {
            "name": hw.name,
            "gpu": {"name": hw.gpu.name, "memory_bytes": hw.gpu.memory_bytes,
                    "peak_flops": hw.gpu.peak_flops, "hbm_bytes_per_s": hw.gpu.hbm_bytes_per_s,
                    "sources": list(hw.gpu.sources),
                    # what the catalogue adds by name, stated so the echo is complete
                    **{k: v for k in ("sms", "gemm_eff", "nvlink_eff")
                       if (v := getattr(hw.gpu, k)) is not None}},
            "nodes": hw.nodes, "gpus_per_node": hw.gpus_per_node, "num_gpus": hw.num_gpus,
            "nvlink_domain": hw.nvlink_domain,
            "intra_node": {**asdict(hw.intra), "topology": hw.intra_topology},
            "inter_node": asdict(hw.inter),
            "reserved_bytes": hw.reserved_bytes,
        },
        "workload": w.echo(),
        "options": {"pins": dict(opts.pins), "time_limit_s": opts.time_limit_s,
                    "seed": opts.seed, "workers": opts.workers,
                    "flash_attention": p.flash_attention,
                    "fused_grad_accumulation": p.fused_grad_accumulation,
                    "async_tp_allreduce": p.async_tp_allreduce,
                    # [fsdp] stated where it prices something: a ZeRO-3 plan
                    **({"zero3_gather": p.zero3_gather} if zero3 else {})},
        "calibration": p.calib.echo((gemm_key(p, p.gemm_dtype), p.model.dtype),
                                    moe_shape(m), not p.training),
    }


def _expert_section(p: Problem, s: Strategy, placed: list[Placement] | None) -> dict | None:
    m = p.model
    if not m.is_moe:
        return None
    layers = [x for x in range(m.layers) if m.is_moe_layer(x)]
    out: dict[str, Any] = {"ep": s.ep, "etp": s.etp, "edp": s.edp,
                           "load_profile": p.workload.expert_load, "layers": []}
    for i, layer in enumerate(layers):
        if placed is None:
            out["layers"].append({"layer": layer, "max_over_mean": 1.0, "cross_node_share": 0.0,
                                  "replicas": 0, "solver": None,
                                  "gpu_experts": [list(range(m.experts))],
                                  **_capacity(p, s, layer, MoEState(1.0, m.experts))})
            continue
        pl = placed[i]
        phy2log = [e for slots in pl.gpu_experts for e in slots]
        log2phy: dict[int, list[int]] = {}
        for slot, e in enumerate(phy2log):
            log2phy.setdefault(e, []).append(slot)
        out["layers"].append({
            "layer": layer, "max_over_mean": pl.max_over_mean,
            "cross_node_share": pl.cross_node_share,
            "replicas": len(phy2log) - m.experts,
            "gpu_experts": [list(x) for x in pl.gpu_experts],
            "gpu_load": list(pl.gpu_load),
            "phy2log": phy2log,
            "log2phy": [log2phy.get(e, []) for e in range(m.experts)],
            "logcnt": [len(log2phy.get(e, [])) for e in range(m.experts)],
            "solver": {"method": pl.method, "status": pl.status, "objective": pl.objective,
                       "best_bound": pl.best_bound, "gap": pl.gap,
                       "solve_time_s": pl.solve_time_s},
            **_capacity(p, s, layer, MoEState(pl.max_over_mean,
                                              max(len(e) for e in pl.gpu_experts))),
        })
    return out


def _capacity(p: Problem, s: Strategy, layer: int, moe: MoEState) -> dict[str, Any]:
    """[capacity] The layer's capacity in tokens, dropped and padding shares and the busiest
    EP rank's rows (nothing when dropless, so those plans are unchanged)."""
    c = capacity_terms(p, s, micro_batch_tokens(p, s), layer, moe)
    return {} if c is None else {"capacity": plan_fields(c, s)}


def _flops_section(p: Problem, gpus: list[dict]) -> dict[str, Any]:
    per_component: dict[str, float] = {}
    for g in gpus:
        for c in g["components"]:
            per_component[c["name"]] = per_component.get(c["name"], 0.0) + c["flops_per_step"]
        for e in g["experts"]:
            per_component["experts"] = per_component.get("experts", 0.0) + e["flops_per_step"]
    return {"per_component": per_component,
            "per_gpu": [g["flops_per_step"] for g in gpus],
            "total": sum(per_component.values()),
            "formula": "flops"}


def _solver_section(r: SearchResult, opts: SearchOptions) -> dict[str, Any]:
    gap = 0.0 if r.objective == r.best_bound else (r.objective - r.best_bound) / max(
        abs(r.objective), 1e-30)
    return {"status": r.status, "objective": r.objective, "objective_name": "step_time_s",
            "best_bound": r.best_bound, "gap": gap, "solve_time_s": r.solve_time_s,
            "seed": opts.seed, "time_limit_s": opts.time_limit_s, "workers": opts.workers,
            "candidates": r.candidates, "pruned_by_bound": r.pruned_by_bound,
            "memory_infeasible": r.infeasible, "cpsat_models": r.cpsat_models,
            "time_limit_reached": r.timed_out, "unbounded": r.unbounded,
            "method": "enumerate degrees; CP-SAT expert placement and stage cut"}


def formula_index(cp: bool = False, capacity: bool = False,
                  dualpipe: bool = False) -> dict[str, str]:
    """Names used in the plan's `formula` fields; each is written out in docs/cost-model.md
    (`cp`: the layout has context parallelism, whose exchange is named too; `capacity`:
    token dropping, likewise; `dualpipe`: its pipeline schedule is DualPipe's)."""
    extra = {"capacity": "capacity = ceil(T/tp x top_k / experts x factor) per expert and "
                         "router rank; the busiest EP rank computes min(imbalance x mean, "
                         "slots x capacity x ep x etp) rows, all of them padded; dropped "
                         "copies run no expert FLOPs and send no bytes"} if capacity else {}
    extra |= {"dualpipe": "m x slowest stage + (PP/2 - 1) x max over stages of (busy + B - "
                          "3 W) per chunk (PP: p stages DualPipe, 2p DualPipeV) + exposed DP "
                          "sync + optimizer step"} if dualpipe else {}
    extra |= {"cp-attention": "tokens / cp per GPU; ring p2p: cp - 1 KV chunks of T*kv_bytes "
                             "forward, 2(cp - 1) backward, each hidden behind 1/cp of the "
                             "attention kernel; all_gather / a2a exposed"} if cp else {}
    return {**extra,
        "roofline": "time = max(FLOPs / (peak x eff), bytes / (HBM BW x hbm_eff), "
                    "kernel_floor) + the memory-bound elementwise kernels at HBM speed (each "
                    "at least kernel_floor); backward 2x GEMMs, 1.5x elementwise",
        "tp-comm": "2 all-reduces (or RS+AG) of T*h*bytes per layer forward, 2 backward, "
                   "ring: 2(n-1)/n S/B + 2(n-1) alpha",
        "ep-comm": "dispatch + combine all-to-all of T/tp*top_k*h*bytes per GPU, "
                   "(n-1)/n S/B, busiest rank x imbalance",
        "p2p": "S/B + alpha per micro-batch per chunk boundary (v per stage interleaved), "
               "S = T*h*bytes/tp, + a TP all-gather without sequence parallelism",
        "dp-comm": "all-reduce of grads, or reduce-scatter grads + all-gather params (ZeRO>=1); "
                   "exposed = max(0, sync - backward of the last micro-batch), all of it "
                   "without overlap; rings across NVLink domains run at members-per-domain x NIC; "
                   "ZeRO-3 all-gathers the parameters before each forward and backward",
        "memory-training": "weights + grads + optimizer (ZeRO-sharded) + in-flight micro-batches"
                           " x activations (Korthikanti 2022) + workspace + reserved",
        "memory": "weights + KV cache + one layer's activations + workspace + reserved",
        "1f1b": "sum over stages of one micro-batch / v + (m - 1/v) x slowest stage + exposed "
                "DP sync + optimizer step (v: interleaved chunks per stage)",
        "forward-pipeline": "sum over stages + (m-1) x slowest stage",
        "flops": "per GPU: sum over its components of tokens x FLOPs/token x (3 training, "
                 "+1 forward with full recompute)",
        "metrics": "MFU = model FLOPs / (step x GPUs x peak of the GEMM precision, "
                   "peak_dtype); HFU counts recompute",
    }


__all__ = ["inputs_echo", "formula_index"]
