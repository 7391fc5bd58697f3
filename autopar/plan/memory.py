"""The `memory` of a GPU in the plan: the stage's memory from the cost model with the GPU's
own expert count (an EP rank may hold fewer expert slots than the stage's fullest), and its
breakdown into bytes, headroom and optimizer states. Apart from the shards and experts
because memory depends on the stage and the EP rank only, and is shared by many GPUs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..cost.evaluate import Memory, StageCost
from ..cost.fp8 import weight_copy_bytes
from ..cost.layer import Problem
from ..cost.strategy import Strategy
from ..model.components import layer_components
from ..search.placement import Placement
from ..spec import DTYPE_BYTES


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
    if mem.fp8_weights:  # [fp8-weights] the cached fp8 weight copies (fp8 training only)
        out["fp8_weights_bytes"] = mem.fp8_weights
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
            "sharded_over": {"dense": s.dp_cp if s.zero >= 1 else 1,
                             "expert": s.edp if s.zero >= 1 else 1},
            "bytes_per_param_unsharded": w.optimizer_bytes}


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
                placed: list[Placement] | None, slots: _Slots | None = None,
                mirror_of: StageCost | None = None) -> Memory:
    """The stage's memory (sized for its fullest EP rank) with EP rank `rank`'s own expert
    count."""
    mem = replace(st.memory)  # a copy (all its fields are numbers)
    if not placed or not p.model.is_moe:
        return mem
    m = p.model
    slots = slots or _Slots.of(p, placed)
    delta = 0.0
    layers = list(range(st.first_layer, st.end_layer))
    if mirror_of is not None:  # [dualpipe] the copy of the mirror stage on the same GPUs
        layers += range(mirror_of.first_layer, mirror_of.end_layer)
    for layer in layers:
        i = slots.index.get(layer)
        if i is not None:
            delta += (len(placed[i].gpu_experts[rank]) - slots.full[i]) * slots.per_expert \
                / s.etp
    if p.training:
        mem.weights += delta * m.dtype_bytes / (s.edp if s.zero >= 3 else 1)
        mem.gradients += delta * p.workload.grad_bytes / (s.edp if s.zero >= 2 else 1)
        mem.optimizer += delta * p.workload.optimizer_bytes / (s.edp if s.zero >= 1 else 1)
        mem.fp8_weights += delta * weight_copy_bytes(p) / (s.edp if s.zero >= 3 else 1)
    else:
        mem.weights += delta * m.expert_bytes
    return mem


__all__ = ["optimizer_states"]
