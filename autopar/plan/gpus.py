"""The plan's `gpus` section (DESIGN sec. 5): each GPU's TP shard of every component, the
experts it holds with their ETP shard, and its memory, with FLOPs per step, computed once per
distinct rank and stated as patterns over GPU ids (`autopar.schema.gpus`); `gpu_record` gives
one GPU's expanded record. The per-GPU part of the plan, apart from the plan-wide sections."""

from __future__ import annotations

from typing import Any

from ..cost.capacity import capacity_terms
from ..cost.evaluate import Evaluation
from ..cost.layer import LayerCost, MoEState, Problem, micro_batch_tokens
from ..cost.mtp import edge_parts, is_mtp_layer
from ..cost.strategy import Strategy
from ..model.components import embedding_components, head_components, layer_components
from ..model.mtp import mtp_extra_components, mtp_layer_index, plan_name
from ..model.shards import split, tp_shard
from ..schema.gpus import FORM, gpu_flops, patterns
from ..search.placement import Placement
from .memory import _gpu_memory, _memory, _Slots


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
        "eh_proj": {"columns": m.hidden},  # [mtp]
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
    for first, last, _kind in _runs(list(range(st.first_layer, st.end_layer)),
                                    lambda x: (m.is_moe_layer(x), m.window(x))):
        lc = st.layer_costs[first - st.first_layer]
        comps = layer_components(m, first, p.workload.context_len, p.workload.causal,
                                 p.flash_attention, p.workload.decoding)
        for comp, cc in zip(comps, lc.components, strict=True):
            if comp.is_expert:
                continue
            n_layers = last - first + 1
            flops = cc.flops * s.num_micro_batches * n_layers * passes
            flops += cc.again * cc.flops * s.num_micro_batches * n_layers  # recomputed
            entries.append({
                "name": comp.name, "role": comp.role, "layers": [first, last],
                "shard": tp_shard(comp.name, comp.role, _dims(p, comp.name), s.tp, tp_rank),
                "params": cc.params * n_layers, "flops_per_step": flops * f_dense,
                "forward_time_s_per_micro_batch": cc.time_s,
                "formula": "roofline",
            })
    for edge, part in zip(st.edges, edge_parts(p, s, stage), strict=True):
        if part.startswith("mtp"):
            entries += _mtp_entries(p, s, edge, part, tp_rank, f_dense * s.num_micro_batches)
            continue
        comps = embedding_components(m) if part == "embedding" else head_components(m)
        for comp, cc in zip(comps, edge.components, strict=True):
            entries.append({
                "name": comp.name, "role": comp.role, "layers": None,
                "shard": tp_shard(comp.name, comp.role, _dims(p, comp.name), s.tp, tp_rank),
                "params": cc.params,
                "flops_per_step": cc.flops * s.num_micro_batches * passes * f_dense,
                "forward_time_s_per_micro_batch": cc.time_s, "formula": "roofline",
            })
    return entries


def _mtp_entries(p: Problem, s: Strategy, edge: LayerCost, part: str, tp_rank: int,
                 scale: float) -> list[dict[str, Any]]:
    """An MTP module's components on one GPU [mtp], named `mtp<i>.<component>`; its layer's
    routed experts as one `mtp<i>.experts` entry (FLOPs and parameters this GPU holds)."""
    m, passes = p.model, 3 if p.training else 1
    module = int(part[3:].removesuffix("_layer"))
    comps = mtp_extra_components(m) if not is_mtp_layer(part) else layer_components(
        m, mtp_layer_index(m), p.workload.context_len, p.workload.causal, p.flash_attention)
    entries, experts = [], []
    for comp, cc in zip(comps, edge.components, strict=True):
        if comp.is_expert:
            experts.append(cc)
            continue
        entries.append({
            "name": plan_name(module, comp.name), "role": comp.role, "layers": None,
            "shard": tp_shard(comp.name, comp.role, _dims(p, comp.name), s.tp, tp_rank),
            "params": cc.params, "flops_per_step": cc.flops * (passes + cc.again) * scale,
            "forward_time_s_per_micro_batch": cc.time_s, "formula": "roofline"})
    if experts:
        entries.append({
            "name": plan_name(module, "experts"), "role": "expert", "layers": None,
            "shard": {"dim": "none", "start": 0, "end": 0, "of": 0},
            "params": sum(c.params for c in experts),
            "flops_per_step": sum(c.flops * (passes + c.again) for c in experts) * scale,
            "forward_time_s_per_micro_batch": sum(c.time_s for c in experts),
            "formula": "roofline"})
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
                                          if comp.is_expert),
                         max(x.again for x in lc.components if x.role == "expert")))
        entry = (runs, {layer: i for i, layer in enumerate(
            [x for x in range(m.layers) if m.is_moe_layer(x)])})
        if cache is None:
            cache = {}
        cache[key] = entry
    runs, moe_index = cache[key]
    passes = 3 if p.training else 1
    per_replica = -(-p.workload.batch // s.dp)
    f_expert = p.workload.batch / (per_replica * s.dp)
    etp_shard = list(split(m.expert_ffn_hidden, s.etp, etp_rank))
    experts = []
    for first, last, exp_flops, again in runs:  # again: the experts' recomputed share
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
            cap = capacity_terms(p, s, micro_batch_tokens(p, s), layer, MoEState(
                pl.max_over_mean, max(len(e) for e in pl.gpu_experts)))
            rows = share  # [capacity] the rows this rank computes, of the layer's
            if cap is not None:
                mean = sum(pl.gpu_load) / len(pl.gpu_load)
                rows = cap.rank_share([x / mean for x in pl.gpu_load], ep_rank)
            per_layer[layer] = (tuple(pl.gpu_experts[ep_rank]), share, rows)
        for a, b, (mine, share, rows) in _runs(list(per_layer), per_layer.__getitem__):
            # FLOPs follow this rank's routed tokens; cc.flops is the EP-group mean
            f = exp_flops * rows * s.num_micro_batches * (b - a + 1)
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
            "memory": _memory(_gpu_memory(p, s, st, c["ep_rank"], placed,
                                          mirror_of=_mirror(p, s, ev, st.index)),
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
        st, o = ev.stages[stage], _mirror(p, s, ev, stage)
        key = (stage, slots.counts(placed, st, rank) if slots else (),
               slots.counts(placed, o, rank) if slots and o else ())
        if key not in memo:
            memo[key] = _memory(_gpu_memory(p, s, st, rank, placed, slots, o),
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


def _mirror(p: Problem, s: Strategy, ev: Evaluation, stage: int):
    """[dualpipe] The stage whose copy a DualPipe rank also holds (None otherwise)."""
    if s.pipeline_schedule == "dualpipe" and p.training:
        return ev.stages[s.pp - 1 - stage]
    return None


__all__ = ["gpu_record", "gpus_section"]
