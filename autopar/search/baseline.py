"""The Megatron-style default layout, as the baseline benchmarks compare against.

TP = the GPUs of a node (the largest that divides the heads), the fewest even pipeline
stages that fit, DP the rest, EP the largest that divides both the experts and the GPUs of a
stage, experts in contiguous blocks (round-robin), micro-batch 1, the distributed optimizer,
and the lightest recompute that fits. Scored with the same cost model as autopar's plans.
"""

from __future__ import annotations

from ..cost.evaluate import Evaluation, evaluate
from ..cost.layer import MoEState, Problem
from ..cost.strategy import Strategy, StrategyError
from ..spec.loads import parse_expert_load
from .experts import ep_geometry, slots_per_gpu
from .placement import PlacementProblem, round_robin, route_loads


def _largest_divisor(n: int, limit: int, also: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0 and also % d == 0)


def _round_robin_states(p: Problem, s: Strategy) -> list[MoEState]:
    m = p.model
    if not m.is_moe or s.ep == 1:
        return [MoEState(1.0, m.experts, None) if m.is_moe_layer(i) else MoEState()
                for i in range(m.layers)]
    nodes, per_node = ep_geometry(p, s)
    loads = parse_expert_load(p.workload.expert_load, m.moe_layer_count, m.experts)
    rows = iter(loads.per_layer(1_000_000.0))
    states = []
    for i in range(m.layers):
        if not m.is_moe_layer(i):
            states.append(MoEState())
            continue
        prob = PlacementProblem(loads=tuple(float(v) for v in next(rows)), num_gpus=s.ep,
                                gpus_per_node=per_node, slots_per_gpu=slots_per_gpu(p, s))
        placed = round_robin(prob)
        gpu_load, cross = route_loads(prob, placed)
        mean = sum(gpu_load) / len(gpu_load)
        states.append(MoEState(float(max(gpu_load) / mean), max(len(x) for x in placed),
                               cross / sum(prob.loads) if nodes > 1 else None))
    return states


def megatron_default(p: Problem) -> Evaluation | None:
    m, G = p.model, p.hw.num_gpus
    tp = _largest_divisor(G, p.hw.nvlink_domain, m.heads)  # TP inside the NVLink domain
    for pp in (d for d in range(1, min(G // tp, m.layers) + 1) if (G // tp) % d == 0):
        dp = G // (tp * pp)
        W = tp * dp
        ep = _largest_divisor(W, m.experts, m.experts) if m.is_moe else 1
        per_replica = -(-p.workload.batch // dp)
        for rc in (("none", "selective", "full") if p.training else ("none",)):
            try:
                s = Strategy(G, tp, pp, dp, ep, 1, 1, per_replica, rc,
                             1 if p.training and dp > 1 else 0, tp > 1)
            except StrategyError:
                continue
            bounds = [round(k * m.layers / pp) for k in range(pp + 1)]
            ev = evaluate(p, s, bounds, _round_robin_states(p, s))
            if ev.feasible:
                return ev
    return None
