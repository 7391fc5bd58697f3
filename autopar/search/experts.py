"""Expert placement of every MoE layer for one layout, turned into the cost model's MoEState.

Placements depend only on the EP group's shape and the load profile, not on the other
degrees, so they are cached per (EP, ETP, NVLink-domain span, slots) across all candidates.
"""

from __future__ import annotations

from ..cost.layer import MoEState, Problem
from ..cost.strategy import Strategy
from ..spec.loads import parse_expert_load
from .deadline import Deadline
from .placement import Placement, PlacementProblem, place_layers


def ep_geometry(p: Problem, s: Strategy) -> tuple[int, int]:
    """(NVLink domains the EP group spans, EP ranks per domain) for the first stage's first
    EP group: the placement's "nodes" are domains, since only tokens leaving a domain cross
    the NICs (on HGX a domain is a node)."""
    members = s.ep_group(0)
    nodes = len({p.hw.domain_of(g) for g in members})
    return nodes, max(1, -(-s.ep // nodes))


def slots_per_gpu(p: Problem, s: Strategy) -> int:
    return -(-p.model.experts // s.ep) + s.spare_slots


def placement_key(p: Problem, s: Strategy) -> tuple | None:
    """What a layout's placements depend on (None: nothing to place)."""
    if not p.model.is_moe or s.ep == 1:
        return None
    return (s.ep, ep_geometry(p, s)[1], slots_per_gpu(p, s), p.workload.expert_load)


def placements_for(p: Problem, s: Strategy, cache: dict, seed: int = 0,
                   workers: int = 1, time_limit_s: float = 1.0,
                   deadline: Deadline | None = None,
                   budget_s: float | None = None) -> list[Placement] | None:
    """One placement per MoE layer (in layer order), or None when EP is 1 (nothing to place).
    `time_limit_s` caps each layer's CP-SAT; `deadline` bounds all the layers together;
    `budget_s` (`--placement-budget`) caps each layer's anytime placement plus CP-SAT
    instead (`place_layers`)."""
    m = p.model
    key = placement_key(p, s)
    if key is None:
        return None
    if key not in cache:
        _, per_node = ep_geometry(p, s)
        profile = parse_expert_load(p.workload.expert_load, m.moe_layer_count, m.experts)
        loads = profile.per_layer(1_000_000.0)
        problems = [PlacementProblem(loads=tuple(float(v) for v in row), num_gpus=s.ep,
                                     gpus_per_node=per_node, slots_per_gpu=slots_per_gpu(p, s),
                                     spare_slots=s.spare_slots)
                    for row in loads]
        cache[key] = place_layers(problems, method="cpsat", time_limit_s=time_limit_s,
                                  seed=seed, workers=workers, deadline=deadline,
                                  budget_s=budget_s)
    return cache[key]


def placement_limit_s(opts) -> float:
    """The CP-SAT cap per placement layer: a quarter of the time limit, at most 1 s."""
    return min(1.0, opts.time_limit_s / 4)


def moe_states(p: Problem, s: Strategy, cache: dict, opts,
               deadline: Deadline | None = None) -> list[MoEState]:
    """MoE state of every layer (dense layers get the neutral state); cached with the
    placements, since it depends on nothing else. `deadline`: see `placements_for`."""
    m = p.model
    key = ("states", s.ep, ep_geometry(p, s), slots_per_gpu(p, s) if m.is_moe else 0)
    if key not in cache:
        cache[key] = _moe_states(p, s, cache, opts, deadline)
    return cache[key]


def _moe_states(p: Problem, s: Strategy, cache: dict, opts,
                deadline: Deadline | None) -> list[MoEState]:
    m = p.model
    plain = MoEState(1.0, m.experts, None)
    placed = placements_for(p, s, cache, opts.seed, opts.workers, placement_limit_s(opts),
                            deadline, opts.placement_budget_s)
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
