"""Is a new expert placement worth a rebalance? The step time it saves against the time to
move the experts whose slot changes; and the full slot tables engines need.

Why: engines rebalance online (vLLM's EPLB every 3000 steps by default, SGLang's
`--eplb-rebalance-num-iterations`), and a move costs real time: every expert a GPU gains is
copied to it over NVLink or the NIC. A placement a little better than the current one can
cost more to install than it saves before the next rebalance.

Layer time: the model of benchmarks/expert_placement.py, `moe_layer_time_s` (the busiest
GPU's routed tokens x the expert FLOPs per token / the GPU's peak), which that benchmark
imports from here. Move: per GPU, the bytes of each expert it gains over the intra link
when a GPU of its node held the expert before, else over the inter link; the GPUs copy in
parallel, so the move takes the slowest GPU's time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ...model.components import layer_components, param_bytes
from ...spec import ModelSpec
from .problem import PlacementProblem, route_loads

# [backward] of the cost model: a training step runs each expert GEMM forward and twice
# backward (dgrad + wgrad), 3x the forward FLOPs; serving runs the forward only.
TRAINING_PASSES = 3.0


def moe_layer_time_s(max_load_tokens: float, flops_per_token: float, flops_per_s: float) -> float:
    """An MoE layer waits for its busiest GPU: its routed tokens x FLOPs per routed token /
    the GPU's FLOP/s."""
    return max_load_tokens * flops_per_token / flops_per_s


@dataclass(frozen=True)
class ExpertCost:
    """One routed expert of a model: FLOPs per routed token (all passes of a step) and its
    weight bytes (what a move copies)."""

    flops_per_token: float
    bytes_per_expert: float

    @staticmethod
    def of(m: ModelSpec, training: bool = False) -> ExpertCost:
        layer = next(i for i in range(m.layers) if m.is_moe_layer(i))
        comps = [c for c in layer_components(m, layer, 1) if c.is_expert]
        flops = sum(c.flops_per_token for c in comps)
        nbytes = sum(c.params for c in comps) * param_bytes(m, "expert")
        return ExpertCost(flops * (TRAINING_PASSES if training else 1.0), float(nbytes))


def fill_slots(problem: PlacementProblem,
               gpu_experts: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    """Every slot holding an expert, never one twice on a GPU: what engines' maps need (a
    table of `slot_cap` physical experts per GPU, no empty one). A free slot takes another
    replica of the expert, not yet on that GPU, whose replicas would then carry the least
    each (w / (R + 1)): the copy that can draw the fewest tokens onto this GPU."""
    cap = problem.slot_cap
    if cap > problem.num_experts:
        raise ValueError(f"{cap} slots per GPU but only {problem.num_experts} experts: a GPU "
                         "would hold one expert twice")
    out = [list(ex) for ex in gpu_experts]
    reps = [0] * problem.num_experts
    for ex in out:
        for e in ex:
            reps[e] += 1
    w = problem.loads
    for ex in out:
        while len(ex) < cap:
            held = set(ex)
            e = min((x for x in range(problem.num_experts) if x not in held),
                    key=lambda x: (w[x] / (reps[x] + 1), x))
            ex.append(e)
            reps[e] += 1
    return tuple(tuple(sorted(ex)) for ex in out)


@dataclass(frozen=True)
class Rebalance:
    """The verdict: per-step saving and one-off move cost, both in seconds."""

    step_saving_s: float
    move_cost_s: float
    moved_experts: int  # expert copies that land on a GPU that lacked them (all layers)
    moved_bytes: float
    horizon_steps: int  # steps the new placement runs before the next rebalance
    current_max_over_mean: float  # busiest GPU over the mean, averaged over the layers
    new_max_over_mean: float
    link: str

    @property
    def break_even_steps(self) -> float:
        """Steps until the saving has paid for the move (inf: it never does)."""
        if self.step_saving_s <= 0:
            return float("inf")
        return self.move_cost_s / self.step_saving_s

    @property
    def worth_it(self) -> bool:
        return self.step_saving_s > 0 and self.break_even_steps < self.horizon_steps

    def line(self) -> str:
        head = "worth a rebalance" if self.worth_it else "not worth a rebalance"
        pays = (f"pays back in {self.break_even_steps:.0f} steps"
                if self.step_saving_s > 0 else "never pays back")
        return (f"{head}: saves {self.step_saving_s * 1e3:.3f} ms per step (max/mean "
                f"{self.current_max_over_mean:.3f} -> {self.new_max_over_mean:.3f}); moving "
                f"{self.moved_experts} experts ({self.moved_bytes / 1e9:.2f} GB) costs "
                f"{self.move_cost_s * 1e3:.1f} ms; {pays} (horizon {self.horizon_steps} steps)")

    def to_dict(self) -> dict:
        be = self.break_even_steps
        return {"worth_it": self.worth_it, "step_saving_s": self.step_saving_s,
                "move_cost_s": self.move_cost_s, "moved_experts": self.moved_experts,
                "moved_bytes": self.moved_bytes, "horizon_steps": self.horizon_steps,
                "break_even_steps": None if be == float("inf") else be,
                "current_max_over_mean": self.current_max_over_mean,
                "new_max_over_mean": self.new_max_over_mean, "link": self.link,
                "verdict": self.line()}


def rebalance(problems: Sequence[PlacementProblem],
              current: Sequence[Sequence[Sequence[int]]],
              new: Sequence[Sequence[Sequence[int]]],
              cost: ExpertCost, flops_per_s: float, intra_bytes_per_s: float,
              inter_bytes_per_s: float, horizon_steps: int, link: str = "") -> Rebalance:
    """Price moving from `current` to `new` (per MoE layer: the experts of each GPU).

    `problems` carry each layer's routed tokens per step and the EP group's nodes; both
    placements are scored by the same routing rule (problem.route_loads)."""
    saving = 0.0
    ratios: list[tuple[float, float]] = []
    g = problems[0].num_gpus
    intra, inter = [0.0] * g, [0.0] * g
    moved = 0
    for p, cur, nxt in zip(problems, current, new, strict=True):
        mean = sum(p.loads) / p.num_gpus
        before = float(route_loads(p, cur)[0].max())
        after = float(route_loads(p, nxt)[0].max())
        saving += (moe_layer_time_s(before, cost.flops_per_token, flops_per_s)
                   - moe_layer_time_s(after, cost.flops_per_token, flops_per_s))
        ratios.append((before / mean, after / mean))
        near: dict[int, set[int]] = {}  # experts each node held before
        for h, ex in enumerate(cur):
            near.setdefault(p.node_of(h), set()).update(ex)
        for gpu, experts in enumerate(nxt):
            for e in set(experts) - set(cur[gpu]):
                moved += 1
                if e in near.get(p.node_of(gpu), ()):
                    intra[gpu] += cost.bytes_per_expert
                else:
                    inter[gpu] += cost.bytes_per_expert
    move = max(a / intra_bytes_per_s + b / inter_bytes_per_s for a, b in zip(intra, inter,
                                                                              strict=True))
    n = len(ratios)
    return Rebalance(saving, move, moved, moved * cost.bytes_per_expert, horizon_steps,
                     sum(r[0] for r in ratios) / n, sum(r[1] for r in ratios) / n, link)
