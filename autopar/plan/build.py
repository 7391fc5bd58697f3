"""Build the deployment plan (DESIGN sec. 5) from a solved layout, and read/write it.

Everything here is derived from `evaluate` and the placement: no figure is set by hand, and
each cost figure carries the name of the formula that produced it (`docs/cost-model.md`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..cost.evaluate import Evaluation, Memory, StageCost, pipeline_time
from ..cost.layer import Problem, kv_bytes_per_token_layer
from ..cost.strategy import Strategy
from ..model.components import (
    EW_BWD,
    embedding_components,
    head_components,
    layer_components,
    param_count,
)
from ..model.shards import split, tp_shard
from ..schema.gpus import FORM, gpu_flops, gpu_records, patterns, read_gpus
from ..search.driver import SearchOptions, SearchResult
from ..search.placement import Placement
from ..spec import DTYPE_BYTES

SCHEMA_VERSION = "2.0"  # 2.x: `gpus` as patterns (autopar.schema.gpus); 1.x: records


@dataclass
class Plan:
    """A deployment plan: the JSON document plus the objects it was built from."""

    data: dict[str, Any]

    def to_json(self, indent: int | None = 1) -> str:
        """The plan as JSON; a NaN or infinity anywhere is a bug, raised here (ValueError)
        rather than written as the invalid JSON tokens `NaN` / `Infinity`."""
        return json.dumps(self.data, indent=indent, sort_keys=False, allow_nan=False)

    def write(self, path: str | Path) -> Path:
        return write_atomic(path, self.to_json())

    @property
    def strategy(self) -> dict[str, Any]:
        return self.data["strategy"]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.data["metrics"]

    @property
    def solver(self) -> dict[str, Any]:
        return self.data["solver"]

    def gpu_records(self) -> list[dict[str, Any]]:
        """One record per GPU: the `gpus` patterns expanded (`autopar.schema.gpus`)."""
        return gpu_records(self.data)


def write_atomic(path: str | Path, text: str) -> Path:
    """Write via a temp file and rename, so a reader never sees half a plan; only over a
    regular file or a new path (`output.check_target`), with the mode open() would give."""
    from .files import check_target, file_mode

    p = check_target(path)
    mode = file_mode(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    # The name is drawn before the file exists and the file is made inside the try, so an
    # interrupt at any point (KeyboardInterrupt, the CLI's SIGTERM) finds it and removes it;
    # 64 random bits make the name ours whenever it exists.
    tmp = str(p.parent / f".{p.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.write("\n")
        os.replace(tmp, p)
    except FileExistsError:
        raise  # another writer's temp file: not ours to remove
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return p


# --------------------------------------------------------------------------- inputs echo
def inputs_echo(p: Problem, opts: SearchOptions) -> dict[str, Any]:
    m, hw, w = p.model, p.hw, p.workload
    model = asdict(m)
    model["dense_layers"] = list(m.dense_layers)
    return {
        "model": model,
        "hardware": {
            "name": hw.name,
            "gpu": {"name": hw.gpu.name, "memory_bytes": hw.gpu.memory_bytes,
                    "peak_flops": hw.gpu.peak_flops, "hbm_bytes_per_s": hw.gpu.hbm_bytes_per_s,
                    "sources": list(hw.gpu.sources)},
            "nodes": hw.nodes, "gpus_per_node": hw.gpus_per_node, "num_gpus": hw.num_gpus,
            "intra_node": asdict(hw.intra), "inter_node": asdict(hw.inter),
            "reserved_bytes": hw.reserved_bytes,
        },
        "workload": asdict(w),
        "options": {"pins": dict(opts.pins), "time_limit_s": opts.time_limit_s,
                    "seed": opts.seed, "workers": opts.workers,
                    "flash_attention": p.flash_attention,
                    "fused_grad_accumulation": p.fused_grad_accumulation,
                    "async_tp_allreduce": p.async_tp_allreduce},
        "calibration": asdict(p.calib),
    }


# --------------------------------------------------------------------------- placement
def _runs(layers: list[int], key) -> list[tuple[int, int, Any]]:
    """Group consecutive layers with the same key: [(first, last, key)]."""
    out: list[tuple[int, int, Any]] = []
    for layer in layers:
        k = key(layer)
        if out and out[-1][2] == k and out[-1][1] == layer - 1:
            out[-1] = (out[-1][0], layer, k)
        else:
            out.append((layer, layer, k))
    return out


def _dims(p: Problem, name: str) -> dict[str, int]:
    m = p.model
    v_dim = m.mla.v_head_dim if m.mla else m.head_dim
    f = m.ffn_hidden
    if name.startswith("shared_"):
        f = m.shared_experts * m.shared_expert_ffn_hidden
    kv = {} if m.mla else {"kv_heads": m.kv_heads}
    return {
        "qkv": {"heads": m.heads, **kv}, "attn": {"heads": m.heads},
        "out": {"rows": m.heads * v_dim},
        "fc1": {"columns": f}, "fc2": {"rows": f},
        "shared_fc1": {"columns": f}, "shared_fc2": {"rows": f},
        "embedding": {"vocab": m.vocab}, "lm_head": {"vocab": m.vocab},
    }.get(name, {})


def _shard_entries(p: Problem, s: Strategy, ev: Evaluation, stage: int, tp_rank: int,
                   f_dense: float) -> list[dict[str, Any]]:
    """The non-expert components one GPU holds (grouped over identical consecutive layers):
    its TP shard of each, with FLOPs per step. They depend on the stage, the TP rank and the
    replica's share of the batch only, so equal GPUs share one pattern.

    When DP does not divide the batch, replicas take split(batch, dp) samples: `f_dense` is
    this replica's share of a full replica's work (the step time is set by the fullest).
    """
    m = p.model
    st = ev.stages[stage]
    passes = 3 if p.training else 1  # forward + backward (2x)
    entries = []
    for first, last, _is_moe in _runs(list(range(st.first_layer, st.end_layer)),
                                      m.is_moe_layer):
        lc = st.layer_costs[first - st.first_layer]
        comps = layer_components(m, first, p.workload.context_len, p.workload.causal,
                                 p.flash_attention, p.workload.decoding)
        for comp, cc in zip(comps, lc.components, strict=True):
            if comp.is_expert:
                continue
            n_layers = last - first + 1
            flops = cc.flops * s.num_micro_batches * n_layers * passes
            flops += _recompute_flops(s, comp.role, cc.flops) * s.num_micro_batches * n_layers
            entries.append({
                "name": comp.name, "role": comp.role, "layers": [first, last],
                "shard": tp_shard(comp.name, comp.role, _dims(p, comp.name), s.tp, tp_rank),
                "params": cc.params * n_layers, "flops_per_step": flops * f_dense,
                "forward_time_s_per_micro_batch": cc.time_s,
                "formula": "roofline",
            })
    for edge in st.edges:
        comps = embedding_components(m) if edge.components[0].name == "embedding" \
            else head_components(m)
        for comp, cc in zip(comps, edge.components, strict=True):
            entries.append({
                "name": comp.name, "role": comp.role, "layers": None,
                "shard": tp_shard(comp.name, comp.role, _dims(p, comp.name), s.tp, tp_rank),
                "params": cc.params,
                "flops_per_step": cc.flops * s.num_micro_batches * passes * f_dense,
                "forward_time_s_per_micro_batch": cc.time_s, "formula": "roofline",
            })
    return entries


def _expert_entries(p: Problem, s: Strategy, ev: Evaluation, stage: int, ep_rank: int,
                    etp_rank: int, placed: list[Placement] | None,
                    cache: dict | None = None) -> list[dict[str, Any]]:
    """The experts one GPU holds per run of MoE layers with equal placement, its ETP shard of
    their FFN columns and their FFN FLOPs per step: they depend on the stage, the EP and the
    ETP rank only (experts see every replica's tokens). `cache` keeps what every rank of a
    stage shares (its MoE runs and their expert FLOPs) across calls."""
    m = p.model
    key = ("stage", stage)
    if cache is None or key not in cache:
        st = ev.stages[stage]
        runs = []
        for first, last, is_moe in _runs(list(range(st.first_layer, st.end_layer)),
                                         m.is_moe_layer):
            if not is_moe:
                continue
            lc = st.layer_costs[first - st.first_layer]
            comps = layer_components(m, first, p.workload.context_len, p.workload.causal,
                                     p.flash_attention, p.workload.decoding)
            runs.append((first, last, sum(x.flops for comp, x in zip(comps, lc.components,
                                                                     strict=True)
                                          if comp.is_expert)))
        entry = (runs, {layer: i for i, layer in enumerate(
            [x for x in range(m.layers) if m.is_moe_layer(x)])})
        if cache is None:
            cache = {}
        cache[key] = entry
    runs, moe_index = cache[key]
    passes = 3 if p.training else 1
    per_replica = -(-p.workload.batch // s.dp)
    f_expert = p.workload.batch / (per_replica * s.dp)
    again = 1 if s.recompute == "full" else 0
    etp_shard = list(split(m.expert_ffn_hidden, s.etp, etp_rank))
    experts = []
    for first, last, exp_flops in runs:
        if placed is None:  # EP = 1: every expert on every GPU, columns split by ETP
            f = exp_flops * s.num_micro_batches * (last - first + 1)
            experts.append({"layers": [first, last], "experts": list(range(m.experts)),
                            "etp_shard": etp_shard, "load_over_mean": 1.0,
                            "flops_per_step": f * ((passes + again) * f_expert)})
            continue
        per_layer = {}
        for layer in range(first, last + 1):
            pl = placed[moe_index[layer]]
            share = pl.gpu_load[ep_rank] / (sum(pl.gpu_load) / len(pl.gpu_load))
            per_layer[layer] = (tuple(pl.gpu_experts[ep_rank]), share)
        for a, b, (mine, share) in _runs(list(per_layer), per_layer.__getitem__):
            # FLOPs follow this rank's routed tokens; cc.flops is the EP-group mean
            f = exp_flops * share * s.num_micro_batches * (b - a + 1)
            experts.append({"layers": [a, b], "experts": list(mine), "etp_shard": etp_shard,
                            "load_over_mean": share,
                            "flops_per_step": f * ((passes + again) * f_expert)})
    return experts


def _dense_share(p: Problem, s: Strategy, dp_rank: int) -> float:
    """A replica's share of a full replica's samples (1 unless DP does not divide the
    batch)."""
    lo, hi = split(p.workload.batch, s.dp, dp_rank)
    return (hi - lo) / -(-p.workload.batch // s.dp)


def gpu_record(p: Problem, s: Strategy, ev: Evaluation, gpu: int,
               placed: list[Placement] | None) -> dict[str, Any]:
    """One GPU's full record (the schema 1.0 form): what the patterns of `gpus_section`
    expand to for this GPU."""
    c = s.coords(gpu)
    st = ev.stages[c["stage"]]
    comps = _shard_entries(p, s, ev, st.index, c["tp_rank"], _dense_share(p, s, c["dp_rank"]))
    experts = _expert_entries(p, s, ev, st.index, c["ep_rank"], c["etp_rank"], placed)
    return {"id": gpu, "node": p.hw.node_of(gpu), "type": p.hw.gpu.name, "stage": st.index,
            "ranks": c, "layers": [st.first_layer, st.end_layer - 1],
            "memory": _memory(_gpu_memory(p, s, st, c["ep_rank"], placed),
                              p.hw.gpu.memory_bytes, p, s),
            "components": comps, "experts": experts,
            "flops_per_step": gpu_flops(comps, experts)}


def gpus_section(p: Problem, s: Strategy, ev: Evaluation,
                 placed: list[Placement] | None) -> dict[str, Any]:
    """The plan's `gpus` in the patterns form (schema 2.0, `autopar.schema.gpus`): shards,
    experts and memory each computed once per distinct rank and stated with its GPU ids, so
    the section grows with TP, EP and PP, not with the GPU count."""
    hw = p.hw
    # GPUs identical by construction: the key is everything a part depends on
    shards: dict[tuple, tuple[int, list[int]]] = {}
    experts: dict[tuple, tuple[int, list[int]]] = {}
    memory: dict[tuple, tuple[int, list[int]]] = {}
    for g in range(hw.num_gpus):
        c = s.coords(g)
        lo, hi = split(p.workload.batch, s.dp, c["dp_rank"])
        shards.setdefault((c["stage"], c["tp_rank"], hi - lo), (c["dp_rank"], []))[1].append(g)
        experts.setdefault((c["stage"], c["ep_rank"], c["etp_rank"]), (0, []))[1].append(g)
        memory.setdefault((c["stage"], c["ep_rank"]), (0, []))[1].append(g)

    def layers(stage: int) -> list[int]:
        st = ev.stages[stage]
        return [st.first_layer, st.end_layer - 1]

    slots = _Slots.of(p, placed) if placed and p.model.is_moe else None
    per_stage: dict = {}  # what the expert entries of one stage's ranks share
    memo: dict[tuple, dict[str, Any]] = {}  # memory by stage and the rank's slot counts

    def memory_of(stage: int, rank: int) -> dict[str, Any]:
        st = ev.stages[stage]
        key = (stage, slots.counts(placed, st, rank) if slots else ())
        if key not in memo:
            memo[key] = _memory(_gpu_memory(p, s, st, rank, placed, slots),
                                hw.gpu.memory_bytes, p, s)
        return memo[key]

    return {
        "form": FORM, "num_gpus": hw.num_gpus, "gpus_per_node": hw.gpus_per_node,
        "type": hw.gpu.name,
        "shards": patterns(
            (ids, {"stage": st, "layers": layers(st), "ranks": {"tp_rank": r},
                   "components": _shard_entries(p, s, ev, st, r, _dense_share(p, s, dp_rank))})
            for (st, r, _), (dp_rank, ids) in shards.items()),
        "experts": patterns(
            ((ids, {"stage": st, "ranks": {"ep_rank": e, "etp_rank": t},
                    "experts": _expert_entries(p, s, ev, st, e, t, placed, per_stage)})
             for (st, e, t), (_, ids) in experts.items()),
            merge=False),  # one pattern per (stage, EP rank, ETP rank): distinct already
        "memory": patterns(
            (ids, {"stage": st, "memory": memory_of(st, e)})
            for (st, e), (_, ids) in memory.items()),
    }


def _recompute_flops(s: Strategy, role: str, fwd: float) -> float:
    """FLOPs a backward pass spends recomputing this component's forward."""
    if s.recompute == "full" or (s.recompute == "selective" and role == "heads"):
        return fwd
    return 0.0


def _memory(mem: Memory, capacity: float, p: Problem | None = None,
            s: Strategy | None = None) -> dict[str, Any]:
    total = mem.total
    out = {
        "weights_bytes": mem.weights, "gradients_bytes": mem.gradients,
        "optimizer_bytes": mem.optimizer, "activations_bytes": mem.activations,
        "activations_no_recompute_bytes": mem.activations_no_recompute,
        "activation_saving_bytes": mem.activations_no_recompute - mem.activations,
        "kv_cache_bytes": mem.kv_cache, "workspace_bytes": mem.workspace,
        "tp_overhead_bytes": mem.tp_overhead, "reserved_bytes": mem.reserved,
        "total_bytes": total, "capacity_bytes": capacity, "headroom_bytes": capacity - total,
        "utilization": total / capacity,
        "formula": "memory-training" if mem.kv_cache == 0 and mem.gradients else "memory",
    }
    if p is not None and s is not None and p.training:
        out["optimizer_states"] = optimizer_states(p, s, mem.optimizer)
    return out


def optimizer_states(p: Problem, s: Strategy, optimizer_bytes: float) -> dict[str, Any]:
    """The optimizer bytes split into the fp32 master copy and Adam's two moments, with the
    ZeRO stage that shards them (1+: states over DP, experts' over EDP)."""
    w = p.workload
    master = 0 if w.master_dtype == "none" else DTYPE_BYTES[w.master_dtype]
    state = DTYPE_BYTES[w.state_dtype]
    per = optimizer_bytes / w.optimizer_bytes if w.optimizer_bytes else 0.0
    return {"master_bytes": per * master, "adam_m_bytes": per * state,
            "adam_v_bytes": per * state, "zero_stage": s.zero,
            "sharded_over": {"dense": s.dp if s.zero >= 1 else 1,
                             "expert": s.edp if s.zero >= 1 else 1},
            "bytes_per_param_unsharded": w.optimizer_bytes}


# --------------------------------------------------------------------------- communication
def _communication(p: Problem, s: Strategy, ev: Evaluation) -> list[dict[str, Any]]:
    """Every collective of every stage: its time on the link (`time_per_*_s`, what the
    transfer takes) and the part of it the step waits for (`exposed_s`, per step: less
    where it overlaps compute [tp-async, tp-overlap, dp-comm]). Per stage, the exposed
    parts add up to the stage's `timing.per_stage` communication x micro-batches."""
    from ..cost.layer import strategy_groups

    groups = strategy_groups(p, s)
    m_mb = s.num_micro_batches
    out = []
    full = s.recompute == "full"
    passes = 1 + (1 if p.training else 0) + (1 if full else 0)  # forward, backward, recompute
    for st in ev.stages:
        n_layers = len(st.layer_costs)
        if not n_layers:
            continue
        if s.tp > 1:
            lc = st.layer_costs[0]  # every layer's TP collectives move the same bytes
            exposed = sum(c.tp_fwd + (c.tp_bwd if p.training else 0.0)
                          for c in st.layer_costs) * m_mb
            out.append(_coll("reduce_scatter+all_gather" if s.sequence_parallel
                             else "all_reduce", "tp", groups["tp"], st.index, lc.tp_bytes,
                             2 * passes * n_layers * m_mb, lc.tp_link / 2, exposed,
                             "tp-comm"))
            for edge, part in zip(st.edges, _edge_parts(s, st.index), strict=True):
                # vocab-parallel embedding / loss: one all-reduce per pass, never hidden
                calls = m_mb * (2 if p.training else 1)
                out.append(_coll("all_reduce", "tp", groups["tp"], st.index, edge.tp_bytes,
                                 calls, edge.tp_link, edge.tp_link * calls, "tp-comm",
                                 part=part))
        moe_costs = [c for c in st.layer_costs if c.ep_bytes]
        if moe_costs and (s.ep > 1 or s.etp > 1):
            worst = max(moe_costs, key=lambda c: c.ep_fwd)
            per_call = sum(c.ep_fwd for c in moe_costs) / (2 * len(moe_costs))
            calls = len(moe_costs) * m_mb * 2 * passes
            out.append(_coll("all_to_all", "ep", groups["ep"], st.index, worst.ep_bytes, calls,
                             per_call, per_call * calls, "ep-comm"))
        v = s.virtual_stages  # interleaved: a send per chunk boundary
        sends_f = v if st.index < s.pp - 1 else v - 1
        sends_b = v if st.index > 0 else v - 1
        if st.p2p_fwd:
            out.append(_coll("send_recv", "pp", None, st.index, _p2p_bytes(p, s),
                             m_mb * sends_f, st.p2p_fwd / sends_f, st.p2p_fwd * m_mb, "p2p",
                             direction="forward"))
        if st.p2p_bwd:
            out.append(_coll("send_recv", "pp", None, st.index, _p2p_bytes(p, s),
                             m_mb * sends_b, st.p2p_bwd / sends_b, st.p2p_bwd * m_mb, "p2p",
                             direction="backward"))
        dense = sum(c.params for c in st.layer_costs) + sum(c.params for c in st.edges)
        if p.training and st.dp_sync:
            kind = "reduce_scatter+all_gather" if s.zero >= 1 else "all_reduce"
            out.append(_coll(kind, "dp", groups["dp"], st.index, dense * p.workload.grad_bytes,
                             1, st.dp_sync, st.dp_exposed, "dp-comm"))
        # ZeRO-3: the parameters gathered before each forward and backward, not hidden
        b = p.model.dtype_bytes
        expert = sum(c.params_expert for c in st.layer_costs)
        for group, t, nbytes in (("dp", st.param_gather_dp, dense * b),
                                 ("edp", st.param_gather_edp, expert * b)):
            if t:
                out.append(_coll("all_gather", group, groups[group], st.index, nbytes,
                                 2 * m_mb, t, 2 * m_mb * t, "dp-comm", part="parameters"))
    return out


def _edge_parts(s: Strategy, stage: int) -> list[str]:
    """Names of a stage's edge pseudo-layers, in `StageCost.edges` order."""
    return (["embedding"] if stage == 0 else []) + (["lm_head"] if stage == s.pp - 1 else [])


def _p2p_bytes(p: Problem, s: Strategy) -> float:
    return s.micro_batch * p.workload.tokens_per_sample * p.model.hidden * \
        p.model.dtype_bytes / s.tp


def _coll(kind: str, group: str, g, stage: int, nbytes: float, calls: int, per_call: float,
          exposed_s: float, formula: str, direction: str | None = None,
          part: str | None = None) -> dict[str, Any]:
    """One collective entry; `per_call` is the link time, `exposed_s` the step's share."""
    e = {"collective": kind, "group": group, "stage": stage,
         "group_size": g.size if g else 2, "link": g.name if g else "stage-to-stage",
         "bytes_per_call": nbytes, "calls_per_step": calls,
         "bytes_per_step": nbytes * calls, "time_per_call_s": per_call,
         "time_per_step_s": per_call * calls, "exposed": exposed_s > 0,
         "exposed_s": exposed_s, "formula": formula}
    if direction:
        e["direction"] = direction
    if part:
        e["part"] = part
    return e


# --------------------------------------------------------------------------- timing
def _timing(p: Problem, s: Strategy, ev: Evaluation) -> dict[str, Any]:
    per_stage = []
    for st in ev.stages:
        lcs = st.layer_costs + st.edges
        per_stage.append({
            "stage": st.index, "layers": [st.first_layer, st.end_layer - 1],
            "forward_compute_s": sum(c.compute_fwd for c in lcs),
            "backward_compute_s": sum(c.compute_bwd for c in lcs) if p.training else 0.0,
            "recompute_s": sum(c.recompute for c in lcs) if p.training else 0.0,
            "tp_comm_s": sum(c.tp_fwd + (c.tp_bwd if p.training else 0) for c in lcs),
            "ep_comm_s": sum(c.ep_fwd + (c.ep_bwd if p.training else 0) for c in lcs),
            "pp_comm_s": st.p2p_fwd + st.p2p_bwd,
            "param_gather_s": 2 * (st.param_gather_dp + st.param_gather_edp),
            "per_micro_batch_s": st.busy,
            "dp_sync_s": st.dp_sync, "dp_exposed_s": st.dp_exposed,
            "optimizer_s": st.optimizer,
        })
    slow = max(ev.stages, key=lambda x: x.busy)
    crit = per_stage[slow.index]
    mb, v = s.num_micro_batches, s.virtual_stages
    pipeline = pipeline_time(sum(x.busy for x in ev.stages), slow.busy, mb, v)
    schedule = ("interleaved-1f1b" if v > 1 else "1f1b") if p.training else "forward-pipeline"
    out = {
        "schedule": schedule,
        "micro_batches": mb,
        "virtual_stages": v,
        "critical_stage": slow.index,
        # the phases of the critical stage over the step; they add up to step_time_s
        "forward_s": crit["forward_compute_s"] * mb,
        "backward_s": crit["backward_compute_s"] * mb,
        "recompute_s": crit["recompute_s"] * mb,
        "tp_comm_exposed_s": crit["tp_comm_s"] * mb,
        "ep_comm_exposed_s": crit["ep_comm_s"] * mb,
        "pp_comm_exposed_s": crit["pp_comm_s"] * mb,
        "param_gather_exposed_s": crit["param_gather_s"] * mb,
        "pipeline_s": pipeline,
        "bubble_s": ev.bubble,
        "dp_exposed_s": max(x.dp_exposed for x in ev.stages),
        "optimizer_s": max(x.optimizer for x in ev.stages),
        "step_time_s": ev.step_time,
        # of forward/backward/recompute: the memory-bound kernels [elementwise]
        "elementwise_s": _elementwise(p, s, slow) * mb,
        "formula": "1f1b" if p.training else "forward-pipeline",
        "per_stage": per_stage,
    }
    out["dominant_term"] = dominant_term(out)
    return out


PHASES = ("forward_s", "backward_s", "recompute_s", "tp_comm_exposed_s", "ep_comm_exposed_s",
          "pp_comm_exposed_s", "param_gather_exposed_s", "bubble_s", "dp_exposed_s",
          "optimizer_s")


def dominant_term(timing: dict[str, Any]) -> str:
    """The phase that takes the largest share of the step (what to attack first)."""
    return max(PHASES, key=lambda k: timing.get(k, 0.0)).removesuffix("_s")


def _elementwise(p: Problem, s: Strategy, st: StageCost) -> float:
    """Per micro-batch: the memory-bound kernels' share of the stage's compute (forward,
    EW_BWD x in the backward, again when recomputed)."""
    total = 0.0
    for lc in st.layer_costs + st.edges:
        for c in lc.components:
            total += c.ew_s
            if p.training:
                again = s.recompute == "full" and lc.recompute > 0 or (
                    s.recompute == "selective" and c.role == "heads")
                total += EW_BWD * c.ew_s + (c.ew_s if again else 0.0)
    return total


# --------------------------------------------------------------------------- build
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
    fwd_per_token = _fwd_flops_per_token(p)
    model_flops = fwd_per_token * T_step * (3 if p.training else 1)
    step = ev.step_time
    # [metrics] MFU and HFU against the peak of the precision the GEMMs run at (fp8 when
    # the workload or checkpoint asks for it), so that neither can pass 1
    peak = hw.gpu.flops(p.gemm_dtype) * hw.num_gpus
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
        "peak_dtype": p.gemm_dtype,
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
        "inputs": inputs_echo(p, opts),
        "model_summary": {"params_total": counts["total"], "params_active": counts["active"],
                          "forward_flops_per_token": fwd_per_token,
                          "moe_layers": m.moe_layer_count,
                          "kv_cache_bytes_per_token_per_layer": kv_bytes_per_token_layer(m, 1)},
        "strategy": {**s.to_dict(), "num_gpus": hw.num_gpus, "stage_width": s.stage_width,
                     "schedule": timing["schedule"],
                     "samples_per_replica": -(-w.batch // s.dp),
                     "stage_layers": [[x.first_layer, x.end_layer - 1] for x in ev.stages]},
        "gpus": section,
        "experts": _expert_section(p, s, placed),
        "flops": _flops_section(p, gpus),
        "communication": _communication(p, s, ev),
        "timing": timing,
        "metrics": metrics,
        "solver": _solver_section(result, opts),
        "formulas": formula_index(),
    }
    from .selfcheck import validations

    data["validation"] = validations(p, data, table)  # per pattern, not per GPU
    return Plan(data)


def _fwd_flops_per_token(p: Problem) -> float:
    from ..model.components import model_flops_per_token

    f = model_flops_per_token(p.model, p.workload.context_len, p.workload.causal,
                              p.workload.decoding)
    if not p.training and p.workload.phase == "prefill":
        head = sum(c.flops_per_token for c in head_components(p.model))
        f -= head * (1 - 1 / p.workload.input_len)  # logits for the last position only
    return f


@dataclass(frozen=True)
class _Slots:
    """What a GPU's own expert count changes in its memory, computed once per plan: each
    MoE layer's index into the placements and its fullest GPU's slot count, and the
    parameters of one expert."""

    index: dict[int, int]
    full: tuple[int, ...]
    per_expert: float

    @staticmethod
    def of(p: Problem, placed: list[Placement]) -> _Slots:
        m = p.model
        moe_layers = [x for x in range(m.layers) if m.is_moe_layer(x)]
        return _Slots({layer: i for i, layer in enumerate(moe_layers)},
                      tuple(max(len(e) for e in pl.gpu_experts) for pl in placed),
                      sum(c.params for c in layer_components(m, moe_layers[0], 1)
                          if c.is_expert))

    def counts(self, placed: list[Placement], st: StageCost, rank: int) -> tuple[int, ...]:
        """EP rank `rank`'s expert slots in each MoE layer of stage `st` (all its memory
        depends on besides the stage)."""
        ids = [self.index.get(layer) for layer in range(st.first_layer, st.end_layer)]
        return tuple(len(placed[i].gpu_experts[rank]) for i in ids if i is not None)


def _gpu_memory(p: Problem, s: Strategy, st: StageCost, rank: int,
                placed: list[Placement] | None, slots: _Slots | None = None) -> Memory:
    """The stage's memory (sized for its fullest EP rank) with EP rank `rank`'s own expert
    count."""
    mem = replace(st.memory)  # a copy (all its fields are numbers)
    if not placed or not p.model.is_moe:
        return mem
    m = p.model
    slots = slots or _Slots.of(p, placed)
    delta = 0.0
    for layer in range(st.first_layer, st.end_layer):
        i = slots.index.get(layer)
        if i is not None:
            delta += (len(placed[i].gpu_experts[rank]) - slots.full[i]) * slots.per_expert \
                / s.etp
    if p.training:
        mem.weights += delta * m.dtype_bytes / (s.edp if s.zero >= 3 else 1)
        mem.gradients += delta * p.workload.grad_bytes / (s.edp if s.zero >= 2 else 1)
        mem.optimizer += delta * p.workload.optimizer_bytes / (s.edp if s.zero >= 1 else 1)
    else:
        mem.weights += delta * m.linear_bytes
    return mem


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
                                  "gpu_experts": [list(range(m.experts))]})
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
        })
    return out


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


def formula_index() -> dict[str, str]:
    """Names used in the plan's `formula` fields; each is written out in docs/cost-model.md."""
    return {
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
                   "without overlap; rings across nodes run at members-per-node x NIC; "
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


def _version() -> str:
    from ..version import __version__

    return __version__


def read_plan(path: str | Path) -> dict[str, Any]:
    from ..errors import InputError
    from ..spec import read_data

    data = read_data(path)
    if not isinstance(data, dict):
        raise InputError(str(path), "", "a plan must be a JSON object")
    if "gpus" in data:  # either form, readable as one record per GPU
        gpu_records(data, str(path))
    return data


__all__ = ["Plan", "build_plan", "read_plan", "write_atomic", "gpus_section", "gpu_record",
           "math"]
