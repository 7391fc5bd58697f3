"""Expert-parallel groups across GPU types with expert slots by speed and memory (the
`ep_slots` form of a mixed solve): one layout shape over every GPU (as the `uniform` form),
each EP group holding ranks of every type in the cluster's proportion, and the experts of
each MoE layer apportioned over its ranks so that the one whose experts finish last finishes
as early as it can, under each GPU's memory.

Nothing here is a second cost model. Each type g is priced by the one-type cost model on
`type_problem`: the cluster paced by its slowest links (`spec.groups.paced_by_slowest`) with
g's own GPU and calibration. A rank of g holding n of the E experts routes n / (E / EP) of
the mean's tokens (uniform routing), which is a `MoEState` (imbalance, max_slots), so its
layer is `layer_costs` of that state on g's problem. Per layer the dense components, the
collectives and the expert components are each paced by their slowest rank (`combine`):
one EP all-to-all separates the attention from the experts, so a fast rank's short
attention cannot start its experts early. Stage times and the step are `stage_cost` and
`compose` of those layers; each type's memory is its own `evaluate` against its own GPU.

An inference step also splits its sequences by speed (`seqs`: per group, the sequences on
each of its attention-DP replicas, where each replica sits on one group: PP 1, one
micro-batch). The dense components and the TP collectives of a type are priced at its own
share (the one-type model with that many sequences a replica); the experts at the mean, as
the all-to-all mixes every replica's tokens over the EP ranks; the all-to-all at the larger
of the two. A type's memory is priced at the larger of its share and the mean: its own KV
cache, and at least the mean's expert tokens.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, replace

from ..cost.bundled import default_calibration
from ..cost.evaluate import Context, Memory, StageCost, compose, evaluate, layer_costs, stage_cost
from ..cost.layer import LayerCost, MoEState, Problem
from ..cost.strategy import Strategy
from ..spec.frameworks import layout_values, load_framework
from ..spec.groups import GPUGroup, MixedHardware
from .stages import even_bounds

# layouts priced at most, best bound first: the bound (the fastest type's) is loose for a
# layout whose dense parts the slowest type paces, so it rarely stops the search itself
MAX_PRICED = 48


def type_problem(q: Problem, g: GPUGroup) -> Problem:
    """The paced cluster (`q`: every link the slowest's) with group g's own GPU and
    calibration: what a rank of g's layer costs are priced on."""
    return replace(q, hw=replace(q.hw, gpu=g.hw.gpu, reserved_bytes=g.hw.reserved_bytes),
                   calib=default_calibration(g.hw.gpu.name))


def ep_members(mixed: MixedHardware, s: Strategy) -> list[int] | None:
    """Ranks of each group in every EP group (the cluster's proportion), or None where the
    layout cannot interleave them so (a share not whole, a TP group wider than a node)."""
    n = mixed.num_gpus
    out = []
    for g in mixed.groups:
        if (s.ep * g.count) % n or g.hw.gpus_per_node % max(s.tp, s.etp):
            return None
        out.append(s.ep * g.count // n)
    return out if min(out) >= 1 else None


def runs_uneven_slots(framework: str, s: Strategy, experts: int, layers: int, seq: int,
                      heads: int) -> bool:
    """Whether the framework's rule table lets an EP rank hold more than E / EP expert
    slots (what uneven slots are: spare slots on the fuller ranks; vLLM and SGLang EPLB
    maps state any slots per GPU, Megatron's num_local_experts is E / EP)."""
    fw = load_framework(framework)
    if fw is None:
        return True
    d = {**s.to_dict(), "spare_slots": max(1, s.spare_slots)}
    return not fw.refuses(layout_values(d, layers, experts, seq, heads))


@dataclass
class SlotsEvaluation:
    strategy: Strategy
    bounds: list[int]
    slots: list[int]  # experts on each rank of group i (every MoE layer alike)
    members: list[int]  # ranks of group i in each EP group
    step_time: float
    bubble: float
    stages: list[StageCost]  # the paced times (memory: `memories`)
    memories: list[list[Memory]]  # per group, per stage: that type's own
    capacities: list[float]
    seqs: list[int] | None = None  # sequences on each attention-DP replica of group i
    replicas: list[int] | None = None  # attention-DP replicas of group i

    @property
    def feasible(self) -> bool:
        return all(m.total <= c for ms, c in zip(self.memories, self.capacities, strict=True)
                   for m in ms)


def _expert(c: LayerCost, bwd: bool = False) -> float:
    return sum(x.bwd_s if bwd else x.time_s for x in c.components if x.role == "expert")


def combine(per_type: list[LayerCost], full_recompute: bool,
            dense: list[LayerCost] | None = None) -> LayerCost:
    """One layer paced rank by rank: the dense components, the collectives and the experts
    each at their slowest type's time; the expert parameters the fullest rank's. `dense`:
    each type's layer at its sequence share, which prices its dense components and TP
    collectives (the all-to-all: the larger of the two); default `per_type`."""
    shares = dense or per_type
    both = [*per_type, *shares]
    fwd = max(c.compute_fwd - _expert(c) for c in shares) + max(_expert(c) for c in per_type)
    bwd = max(c.compute_bwd - _expert(c, True) for c in shares) + \
        max(_expert(c, True) for c in per_type)
    top = max(per_type, key=lambda c: c.compute_fwd)
    pick = lambda name, cs=per_type: max(getattr(c, name) for c in cs)  # noqa: E731
    return replace(top, compute_fwd=fwd, compute_bwd=bwd,
                   recompute=fwd if full_recompute else pick("recompute"),
                   **{k: pick(k, shares) for k in ("tp_fwd", "tp_bwd", "cp_fwd", "cp_bwd")},
                   **{k: pick(k, both) for k in ("ep_fwd", "ep_bwd")},
                   **{k: pick(k) for k in ("params_expert", "wgrad", "act_bytes")})


def _states(p: Problem, base: list[MoEState], n: int, mean: float) -> list[MoEState]:
    return [replace(x, imbalance=x.imbalance * n / mean, max_slots=n)
            if p.model.is_moe_layer(i) else x for i, x in enumerate(base)]


def replicas_of(mixed: MixedHardware, s: Strategy) -> list[int] | None:
    """Attention-DP replicas of each group, where an inference step's sequences can be
    shared by speed: PP 1 and one micro-batch (a replica's sequences are its micro-batch),
    every replica's TP x CP GPUs inside one group."""
    width = s.tp * s.cp
    if s.pp != 1 or s.num_micro_batches != 1 or s.dp < 2 or any(
            g.count % width or g.first_gpu % width for g in mixed.groups):
        return None
    return [g.count // width for g in mixed.groups]


def share_problem(tp: Problem, s: Strategy, seqs: int) -> tuple[Problem, Strategy]:
    """A type's problem and layout with `seqs` sequences on every attention-DP replica."""
    return (replace(tp, workload=replace(tp.workload, batch=seqs * s.dp)),
            replace(s, micro_batch=seqs))


def price_slots(q: Problem, mixed: MixedHardware, s: Strategy, base: list[MoEState],
                slots: list[int], members: list[int], bounds: list[int],
                seqs: list[int] | None = None) -> SlotsEvaluation:
    """The layout with `slots` experts on each rank of group i (and `seqs` sequences on
    each of its attention-DP replicas, where shared): paced stage times, and each type's
    memory on its own GPU."""
    mean = q.model.experts / s.ep
    tps = [type_problem(q, g) for g in mixed.groups]
    states = [_states(q, base, n, mean) for n in slots]
    per = [layer_costs(tp, s, st) for tp, st in zip(tps, states, strict=True)]
    at = [share_problem(tp, s, b) for tp, b in zip(tps, seqs, strict=True)] if seqs else \
        [(tp, s) for tp in tps]
    dense = [layer_costs(a, b, st) for (a, b), st in zip(at, states, strict=True)] \
        if seqs else per
    costs = [combine(list(ls), s.recompute == "full", list(ds))
             for ls, ds in zip(zip(*per, strict=True), zip(*dense, strict=True), strict=True)]
    slow = max(range(len(tps)), key=lambda i: dense[i][0].compute_fwd)
    stages = []
    for k in range(s.pp):  # each type's edges (embedding, LM head) at its share: the slowest
        cands = []
        for a, b in (at if seqs else [at[slow]]):
            ctx = Context.of(a, b, costs)
            cands.append(stage_cost(a, b, k, costs[bounds[k]:bounds[k + 1]], ctx.edges(b, k),
                                    ctx, bounds[k], bounds[k + 1]))
        stages.append(max(cands, key=lambda x: x.busy))
    step, bubble = compose(stages, s.num_micro_batches, s.virtual_stages,
                           s.pipeline_schedule if q.training else "1f1b")
    mean_seqs = -(-q.workload.batch // s.dp)
    mems = []
    for i, tp in enumerate(tps):  # at the larger of the type's share and the mean
        a, b, pc = tp, s, per[i]
        if seqs:
            a, b = share_problem(tp, s, max(seqs[i], mean_seqs))
            pc = layer_costs(a, b, states[i])
        mems.append([st.memory for st in evaluate(a, b, bounds, states[i], pc).stages])
    return SlotsEvaluation(s, bounds, slots, members, step, bubble, stages, mems,
                           [g.hw.gpu.memory_bytes for g in mixed.groups], seqs,
                           replicas_of(mixed, s) if seqs else None)


def dense_time(tp: Problem, s: Strategy, state: list[MoEState], seqs: int) -> float:
    """A type's dense work and TP collectives over every layer at `seqs` sequences a
    replica: what the sequence shares balance (the experts see the mean either way)."""
    a, b = share_problem(tp, s, seqs)
    return sum(c.compute_fwd - _expert(c) + c.tp_fwd for c in layer_costs(a, b, state))


def assign_seqs(q: Problem, mixed: MixedHardware, s: Strategy, base: list[MoEState],
                slots: list[int], replicas: list[int]) -> list[int] | None:
    """Sequences on each attention-DP replica of each type: the batch over the replicas,
    each next step (one more sequence on every replica of a type) to the type whose dense
    work would then finish first (greedy, exact as for `assign_slots`); None where no
    split covers the batch exactly."""
    B, mean = q.workload.batch, q.model.experts / s.ep
    tps = [type_problem(q, g) for g in mixed.groups]
    states = [_states(q, base, n, mean) for n in slots]
    seqs, left = [1] * len(replicas), B - sum(replicas)
    if left < 0:
        return None
    heap = [(dense_time(tp, s, st, 2), i) for i, (tp, st) in enumerate(zip(tps, states,
                                                                          strict=True))]
    heapq.heapify(heap)
    while left > 0 and heap:
        _, i = heapq.heappop(heap)
        if replicas[i] > left:
            continue
        seqs[i] += 1
        left -= replicas[i]
        heapq.heappush(heap, (dense_time(tps[i], s, states[i], seqs[i] + 1), i))
    return seqs if left == 0 else None


def expert_time(tp: Problem, s: Strategy, base: list[MoEState], n: int) -> float:
    """One MoE layer's expert work on a rank of this type holding n experts."""
    layer = next(i for i in range(tp.model.layers) if tp.model.is_moe_layer(i))
    c = layer_costs(tp, s, _states(tp, base, n, tp.model.experts / s.ep))
    return sum(x.time_s + (x.bwd_s if tp.training else 0.0)
               for x in c[layer].components if x.role == "expert")


def assign_slots(q: Problem, mixed: MixedHardware, s: Strategy, base: list[MoEState],
                 members: list[int], caps: list[int]) -> list[int] | None:
    """Experts per rank of each type, every rank of a type alike: the whole of E over the
    EP group's ranks, each next step (one more expert on every rank of a type, so its ranks
    take members[i] more) to the type whose ranks would then finish first (greedy: exact
    for this min-max as each type's time only grows with its experts), within `caps`."""
    E = q.model.experts
    tps = [type_problem(q, g) for g in mixed.groups]
    n = [1] * len(members)
    left = E - sum(members)
    if left < 0 or any(c < 1 for c in caps):
        return None
    memo: dict[tuple[int, int], float] = {}

    def at(i: int, k: int) -> float:
        if (i, k) not in memo:
            memo[i, k] = expert_time(tps[i], s, base, k)
        return memo[i, k]

    heap = [(at(i, 2), i) for i in range(len(tps)) if caps[i] >= 2]
    heapq.heapify(heap)
    while left > 0 and heap:
        _, i = heapq.heappop(heap)
        if members[i] > left:
            continue  # a step of this type would overshoot E
        n[i] += 1
        left -= members[i]
        if n[i] < caps[i]:
            heapq.heappush(heap, (at(i, n[i] + 1), i))
    return n if left == 0 else None


def search_slots(q: Problem, mixed: MixedHardware, layouts: list[Strategy], base_of,
                 bound_of, framework: str, deadline, beat: float = float("inf"),
                 most: int = MAX_PRICED) -> tuple[SlotsEvaluation | None, int]:
    """The fastest layout (of `layouts`, on the paced problem `q`) with EP groups across the
    types and uneven slots, the cut even, if faster than `beat`; and how many were priced.
    `base_of(s)`: its MoE states on `q`; `bound_of(s)`: lower bounds on its step (the
    fastest type's) and on its memory per GPU: layouts are taken best bound first, at most
    `most` priced, and the search stops once no bound beats the incumbent."""
    m, w = q.model, q.workload
    room = max(g.hw.gpu.memory_bytes for g in mixed.groups)
    keep = []
    for s in layouts:
        if deadline.expired():
            break
        members = ep_members(mixed, s) if s.ep > 1 and len(mixed.groups) > 1 else None
        if members is not None and m.experts - sum(members) < min(members):
            members = None  # one expert a rank: no uneven split exists
        if (members is None or s.moe_capacity_factor or s.dualpipe or not runs_uneven_slots(
                framework, s, m.experts, m.layers, w.seq_len, m.heads)):
            continue
        lb, mem_lb = bound_of(s)
        if mem_lb > room:  # the even split's mean memory: no rank of any type holds it
            continue
        keep.append((lb, len(keep), s, members))
    keep.sort(key=lambda x: x[:2])
    best, priced = None, 0
    for lb, _, s, members in keep:
        if lb >= min(beat, best.step_time if best else beat) or deadline.expired() or \
                priced >= most:
            break
        base = base_of(s)
        if any(x.imbalance != 1.0 for i, x in enumerate(base) if m.is_moe_layer(i)):
            continue  # a measured load: the slots by speed assume uniform routing
        bounds = even_bounds(m.layers, s.pp)
        caps = [m.experts] * len(members)
        reps = replicas_of(mixed, s) if not q.training and framework == "any" else None
        priced += 1
        for _ in range(m.experts):
            slots = assign_slots(q, mixed, s, base, members, caps)
            if slots is None:
                break
            seqs = assign_seqs(q, mixed, s, base, slots, reps) if reps else None
            ev = price_slots(q, mixed, s, base, slots, members, bounds)
            if seqs:  # kept where it fits (the faster type holds more KV) and pays
                shared = price_slots(q, mixed, s, base, slots, members, bounds, seqs)
                if not _full(shared) and shared.step_time < ev.step_time:
                    ev = shared
            full = _full(ev)
            if not full:
                uneven = len(set(slots)) > 1 or len(set(ev.seqs or [0])) > 1
                if uneven and ev.step_time < min(beat, best.step_time if best else beat):
                    best = ev
                break
            for i in full:  # that type holds fewer
                caps[i] = slots[i] - 1
    return best, priced


def _full(ev: SlotsEvaluation) -> list[int]:
    """The groups whose fullest stage exceeds their GPU's memory."""
    return [i for i, (ms, c) in enumerate(zip(ev.memories, ev.capacities, strict=True))
            if max(x.total for x in ms) > c]
