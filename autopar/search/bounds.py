"""What a layout costs at least, before its stage cut is solved: the search's pruning bounds.

Layer costs are computed once per distinct placement-relevant shape (`_CostCache`, which
also spends the placement share of the time limit); `quick_bound` costs all layers as one
stage for a bound valid for every stage cut, and `compute_floor` bounds every layout at once
(for those a search cut short never bounded). `stage_inputs` gives the per-layer vectors
the stage models read from the same costs.
"""

from __future__ import annotations

import math
from dataclasses import fields

from ..cost.edges import edge_cost
from ..cost.evaluate import Context, layer_costs, stage_cost
from ..cost.fp8 import fp4_gemms
from ..cost.layer import LayerCost, MoEState, Problem
from ..cost.pipeline import pipeline_time
from ..cost.strategy import Strategy
from ..model.components import head_components, model_flops_per_token
from .deadline import Deadline
from .degrees import SearchOptions
from .experts import moe_states, placement_key
from .stages import StageInputs


def stage_inputs(p: Problem, s: Strategy, moe: list[MoEState],
                 costs: list | None = None) -> StageInputs:
    """Per-layer vectors the stage models read; the same numbers `evaluate` sums."""
    costs = costs if costs is not None else layer_costs(p, s, moe)
    return StageInputs.build(p, s, costs, Context.of(p, s, costs))


class _CostCache:
    """Layer costs do not depend on the ZeRO stage or the micro-batch count: share them (the
    Context does on ZeRO-3: its gather lead [fsdp], so ZeRO-3 layouts get their own).

    `placing` is the part of the time limit for expert placements, split evenly over the
    `keys` distinct placement problems not yet placed (None: each gets its usual cap)."""

    def __init__(self, p: Problem, opts: SearchOptions, placing: Deadline | None = None,
                 keys: int = 0) -> None:
        self.p, self.opts = p, opts
        self.placements: dict = {}
        self.costs: dict[tuple, tuple] = {}  # per layout shape, with its Context
        self.layers: dict[tuple, tuple] = {}  # per layer-cost shape (`_layer_key`)
        self.placing, self.keys_left = placing, keys

    def _placement_deadline(self, s: Strategy) -> Deadline | None:
        key = placement_key(self.p, s)
        if self.placing is None or key is None or key in self.placements:
            return None
        share = max(0.0, self.placing.left()) / max(1, self.keys_left)
        self.keys_left -= 1
        return Deadline.after(share)

    def get(self, s: Strategy) -> tuple[list[MoEState], list]:
        moe, costs, _ = self.entry(s)
        return moe, costs

    def entry(self, s: Strategy) -> tuple[list[MoEState], list, Context]:
        return self._entry(s)[:3]

    def summary(self, s: Strategy) -> tuple[Context, LayerCost, float]:
        """The layout's Context, its layers all summed into one LayerCost (stage costs are
        affine in their layers, so costing the sum equals summing the costs), and the slowest
        layer."""
        _, _, ctx, total, slowest = self._entry(s)
        return ctx, total, slowest

    def _entry(self, s: Strategy) -> tuple:
        lk = self._layer_key(s)
        key = (s.pp, s.dp, s.zero >= 3, *lk)  # the Context's ZeRO-3 lead is ZeRO-3's only
        if key not in self.costs:
            moe, costs, total, slowest, edges = self._layers(s, lk)
            self.costs[key] = (moe, costs, Context.of(self.p, s, costs, edges), total, slowest)
        return self.costs[key]

    def _layer_key(self, s: Strategy) -> tuple:
        """What a layout's layer costs depend on. Not PP, nor DP: the TP, CP, EP and ETP
        groups start at the stage's first rank whatever its width, so their links are the
        same; only ZeRO-3's shard of the fp8 weight copies a layer casts reads DP x CP and
        EDP [fp8-weights]."""
        z3_fp8 = s.zero >= 3 and self.p.workload.precision == "fp8"
        return (s.tp, s.ep, s.etp, s.micro_batch, s.recompute, s.sequence_parallel,
                s.overlap_tp_comm, s.spare_slots, s.recompute_modules, s.cp, s.cp_comm,
                s.a2a_overlap, s.moe_dispatcher, s.a2a_fp8, s.a2a_node_limit, s.a2a_sms,
                s.moe_capacity_factor, s.moe_pad_to_capacity,  # [capacity]
                s.dualpipe,  # [dualpipe] its paired chunks hide the all-to-all
                (s.dp_cp, s.edp) if z3_fp8 else None)

    def _layers(self, s: Strategy, key: tuple) -> tuple:
        """The layer costs of layer-cost shape `key`, their sum, the slowest layer and the
        embedding's and LM head's costs (which depend on no more than the layers')."""
        if key not in self.layers:
            moe = moe_states(self.p, s, self.placements, self.opts, self._placement_deadline(s))
            costs = layer_costs(self.p, s, moe)
            distinct = {id(c): c for c in costs}.values()
            slowest = max(c.fwd + (c.bwd if self.p.training else 0.0) for c in distinct)
            edges = (edge_cost(self.p, s, "embedding"), edge_cost(self.p, s, "lm_head"))
            self.layers[key] = (moe, costs, summed(costs), slowest, edges)
        return self.layers[key]


def summed(costs: list[LayerCost]) -> LayerCost:
    """One LayerCost whose every numeric field is the sum over `costs`. Identical layers
    share one LayerCost object, so each distinct one is counted once, times its copies."""
    first = costs[0]
    copies: dict[int, list] = {}
    for c in costs:
        copies.setdefault(id(c), [c, 0])[1] += 1
    distinct = list(copies.values())
    values = {}
    for f in fields(first):
        v = getattr(first, f.name)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            values[f.name] = math.fsum(getattr(c, f.name) * n for c, n in distinct)
        else:
            values[f.name] = type(v)() if isinstance(v, list) else v
    return LayerCost(**values)


def quick_bound(p: Problem, s: Strategy, cache: _CostCache) -> tuple[float, float]:
    """(step-time lower bound, per-GPU memory lower bound) valid for every stage cut.

    All layers and both edges are costed as one stage: its busy time is at most the sum over
    stages, the slowest stage is at least the mean and at least the slowest layer, and the
    largest optimizer step and memory are at least their means over the stages.
    """
    ctx, total, slowest_layer = cache.summary(s)
    whole = stage_cost(p, s, s.pp - 1, [total], [ctx.emb, ctx.head], ctx)
    busy = whole.busy
    bottleneck = max(busy / s.pp, slowest_layer)
    pipe = (s.num_micro_batches * bottleneck if s.dualpipe and p.training  # [dualpipe]
            else pipeline_time(busy, bottleneck, s.num_micro_batches, s.virtual_stages))
    time_lb = pipe + whole.optimizer / s.pp
    return time_lb, whole.memory.total / s.pp


def compute_floor(p: Problem) -> float:
    """A step-time lower bound valid for every layout: the model's FLOPs (the head left out)
    spread over all GPUs at the highest peak the GPU has. Every GPU's stage is busy at least
    as long as its compute at peak, so this is MFU <= 1 stated as a bound."""
    w, m = p.workload, p.model
    per_token = model_flops_per_token(m, w.context_len, w.causal, w.decoding)
    per_token -= sum(c.flops_per_token for c in head_components(m))
    flops = max(0.0, per_token) * w.batch * w.tokens_per_sample * (3 if p.training else 1)
    peak = p.hw.gpu.max_flops(fp4_gemms(p.model)) * p.hw.num_gpus
    return flops / peak
