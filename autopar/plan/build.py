"""Build the deployment plan (DESIGN sec. 5) from a solved layout: the metrics, the strategy
and the model summary here, the sections from their modules (gpus, memory, timing, sections),
then the plan's self-check (`selfcheck.validations`).

Everything here is derived from `evaluate` and the placement: no figure is set by hand, and
each cost figure carries the name of the formula that produced it (`docs/cost-model.md`).
"""

from __future__ import annotations

import math
from typing import Any

from ..cost.capacity import capacity_terms
from ..cost.fp8 import peak_dtype
from ..cost.layer import MoEState, Problem, kv_bytes_per_token_layer, micro_batch_tokens
from ..model.components import head_components, layer_components, param_count
from ..model.mtp import mtp_layer_index
from ..schema.gpus import read_gpus
from ..search import SearchOptions, SearchResult
from ..search.placement import Placement
from ..spec.frameworks import load_framework
from .alternatives import runner_ups_section
from .document import Plan
from .gpus import gpus_section
from .sections import _expert_section, _flops_section, _solver_section, formula_index, inputs_echo
from .timing import _communication, _timing

SCHEMA_VERSION = "2.0"  # 2.x: `gpus` as patterns (autopar.schema.gpus); 1.x: records


def build_plan(p: Problem, opts: SearchOptions, result: SearchResult,
               placed: list[Placement] | None) -> Plan:
    best = result.best
    s, ev = best.strategy, best.evaluation
    m, hw, w = p.model, p.hw, p.workload
    section = gpus_section(p, s, ev, placed)
    table = read_gpus({"gpus": section, "strategy": s.to_dict()})
    gpus = table.records  # one per GPU
    flops_sum = math.fsum(g["flops_per_step"] for g in gpus)
    T_step = w.batch * w.tokens_per_sample
    fwd_per_token = _fwd_flops_per_token(p) - _dropped_flops_per_token(p, s)  # [capacity]
    model_flops = fwd_per_token * T_step * (3 if p.training else 1)
    step = ev.step_time
    # [metrics] MFU and HFU against the peak of the precision the GEMMs run at (fp8 when
    # the workload or checkpoint asks for it), so that neither can pass 1
    peak = hw.gpu.flops(peak_dtype(p)) * hw.num_gpus  # [mxfp4] fp4 experts: the fp4 peak
    loads = [pl.max_over_mean for pl in placed] if placed else [1.0]
    busy = [x.busy for x in ev.stages]
    compute_time = sum(
        sum(c.compute_fwd + (c.compute_bwd + c.recompute if p.training else 0)
            for c in st.layer_costs + st.edges) * s.num_micro_batches
        for st in ev.stages) * s.stage_width
    metrics = {
        "step_time_s": step,
        "flops_per_step": flops_sum,
        "model_flops_per_step": model_flops,
        "throughput_samples_per_s": w.batch / step,
        "throughput_tokens_per_s": T_step / step,
        "achieved_flops_per_s": flops_sum / step,
        "peak_flops_per_s": peak,
        "peak_dtype": peak_dtype(p),
        "mfu": model_flops / (step * peak),
        "hfu": flops_sum / (step * peak),
        "expert_load_max_over_mean": max(loads),
        "compute_load_balance_max_over_mean": max(busy) / (sum(busy) / len(busy)),
        "scaling_efficiency": compute_time / (hw.num_gpus * step),
        "memory_max_over_capacity": max(x["memory"]["total_bytes"]
                                        for x in section["memory"]) / hw.gpu.memory_bytes,
        "formula": "metrics",
    }
    timing = _timing(p, s, ev)
    metrics["dominant_term"] = timing["dominant_term"]
    if not p.training:
        metrics["tokens_per_s_per_gpu"] = T_step / step / hw.num_gpus
        if w.phase == "prefill":
            metrics["ttft_s"] = step
        else:
            metrics["tpot_s"] = step
    counts = param_count(m)
    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "generator": {"name": "autopar", "version": _version()},
        "name": f"{m.name}-{hw.name}",
        "inputs": inputs_echo(p, opts, p.training and s.zero >= 3),
        "model_summary": {"params_total": counts["total"], "params_active": counts["active"],
                          "forward_flops_per_token": fwd_per_token,
                          "moe_layers": m.moe_layer_count,
                          "kv_cache_bytes_per_token_per_layer": kv_bytes_per_token_layer(m, 1)},
        "strategy": {**s.to_dict(), "num_gpus": hw.num_gpus, "stage_width": s.stage_width,
                     "schedule": timing["schedule"],
                     "samples_per_replica": -(-w.batch // s.dp),
                     "stage_layers": [[x.first_layer, x.end_layer - 1] for x in ev.stages],
                     **_framework(opts)},
        "gpus": section,
        "experts": _expert_section(p, s, placed),
        "flops": _flops_section(p, gpus),
        "communication": _communication(p, s, ev),
        "timing": timing,
        "metrics": metrics,
        "solver": _solver_section(result, opts),
        "formulas": formula_index(s.cp > 1, bool(s.moe_capacity_factor),
                                  s.dualpipe and p.training),
    }
    ups = runner_ups_section(p, result, timing)
    if ups is not None:
        data["runner_ups"] = ups
    from .selfcheck import validations

    data["validation"] = validations(p, data, table)  # per pattern, not per GPU
    return Plan(data)


def _framework(opts: SearchOptions) -> dict[str, Any]:
    """The framework the plan was searched for, with the version range of its rules; stated
    only for one (plans searched over the whole space stay as they were)."""
    fw = load_framework(opts.framework)
    return {} if fw is None else {"framework": fw.record()}


def _fwd_flops_per_token(p: Problem) -> float:
    from ..model.components import model_flops_per_token

    f = model_flops_per_token(p.model, p.workload.context_len, p.workload.causal,
                              p.workload.decoding)
    if not p.training and p.workload.phase == "prefill":
        head = sum(c.flops_per_token for c in head_components(p.model))
        f -= head * (1 - 1 / p.workload.input_len)  # logits for the last position only
    if p.training:  # [mtp] model FLOPs include the MTP modules, as Megatron-Bridge counts
        from ..model.mtp import mtp_flops_per_token

        f += mtp_flops_per_token(p.model, p.workload.context_len, p.workload.causal)
    return f


def _dropped_flops_per_token(p, s) -> float:
    """[capacity] Forward expert FLOPs per token that dropped copies do not run: top_k x the
    layer's dropped share x its experts' FLOPs per copy, over the MoE layers (and the MTP
    modules' layers, the last layer's type, when training); model FLOPs leave them out."""
    m, w = p.model, p.workload
    if not s.moe_capacity_factor or not m.is_moe:
        return 0.0
    T = micro_batch_tokens(p, s)
    runs = list(range(m.layers)) + ([mtp_layer_index(m)] * m.mtp_layers if p.training else [])
    out = 0.0
    for layer in runs:
        if not m.is_moe_layer(layer):
            continue
        c = capacity_terms(p, s, T, layer, MoEState())
        per_copy = sum(x.flops_per_token for x in layer_components(
            m, layer, w.context_len, w.causal, p.flash_attention, w.decoding) if x.is_expert)
        out += m.top_k * c.dropped * per_copy
    return out


def _version() -> str:
    from ..version import __version__

    return __version__


__all__ = ["SCHEMA_VERSION", "build_plan"]
