"""Expert placement of every MoE layer for one layout, turned into the cost model's MoEState.

Placements depend only on the EP group's shape and the load profile, not on the other
degrees, so they are cached per (EP, ETP, node span, slots) across all candidates.
"""

from __future__ import annotations

from .cost import MoEState, Problem
from .loads import parse_expert_load
from .placement import Placement, PlacementProblem, place_layers
from .strategy import Strategy


def ep_geometry(p: Problem, s: Strategy) -> tuple[int, int]:
    """(nodes the EP group spans, EP ranks per node) for the first stage's first EP group."""
    members = s.ep_group(0)
    nodes = len({p.hw.node_of(g) for g in members})
    return nodes, max(1, -(-s.ep // nodes))


def slots_per_gpu(p: Problem, s: Strategy) -> int:
    return -(-p.model.experts // s.ep) + s.spare_slots


def placements_for(p: Problem, s: Strategy, cache: dict, seed: int = 0,
                   workers: int = 1, time_limit_s: float = 1.0) -> list[Placement] | None:
    """One placement per MoE layer (in layer order), or None when EP is 1 (nothing to place)."""
    m = p.model
    if not m.is_moe or s.ep == 1:
        return None
    nodes, per_node = ep_geometry(p, s)
    key = (s.ep, per_node, slots_per_gpu(p, s), p.workload.expert_load)
    if key not in cache:
        profile = parse_expert_load(p.workload.expert_load, m.moe_layer_count, m.experts)
        loads = profile.per_layer(1_000_000.0)
        problems = [PlacementProblem(loads=tuple(float(v) for v in row), num_gpus=s.ep,
                                     gpus_per_node=per_node, slots_per_gpu=slots_per_gpu(p, s),
                                     spare_slots=s.spare_slots)
                    for row in loads]
        cache[key] = place_layers(problems, method="cpsat", time_limit_s=time_limit_s,
                                  seed=seed, workers=workers)
    return cache[key]


def moe_states(p: Problem, s: Strategy, cache: dict, opts) -> list[MoEState]:
    """MoE state of every layer (dense layers get the neutral state); cached with the
    placements, since it depends on nothing else."""
    m = p.model
    key = ("states", s.ep, ep_geometry(p, s), slots_per_gpu(p, s) if m.is_moe else 0)
    if key not in cache:
        cache[key] = _moe_states(p, s, cache, opts)
    return cache[key]


def _moe_states(p: Problem, s: Strategy, cache: dict, opts) -> list[MoEState]:
    m = p.model
    plain = MoEState(1.0, m.experts, None)
    placed = placements_for(p, s, cache, opts.seed, opts.workers,
                            min(1.0, opts.time_limit_s / 4))
    if placed is None:
        return [plain if m.is_moe_layer(i) else MoEState() for i in range(m.layers)]
    nodes, _ = ep_geometry(p, s)
    states, it = [], iter(placed)
    for i in range(m.layers):
        if not m.is_moe_layer(i):
            states.append(MoEState())
            continue
        pl = next(it)
        states.append(MoEState(
            imbalance=float(pl.max_over_mean),
            max_slots=max(len(e) for e in pl.gpu_experts),
            cross_node_share=float(pl.cross_node_share) if nodes > 1 else None,
        ))
    return states
