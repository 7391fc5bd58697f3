"""Token dropping with a capacity factor [capacity]: Megatron-Core's
`--moe-expert-capacity-factor F` caps what each expert takes from one router rank's
micro-batch; `--moe-pad-expert-input-to-capacity` makes every expert compute (and the
all-to-all carry) exactly that many rows. Why here: a capacity changes the rows the expert
GEMMs and the all-to-all move, so the busiest EP rank's time, every GPU's expert FLOPs and the
bytes sent all follow from it; dropless (F = 0, the default) leaves every figure as it was.

The dropped share comes from the workload's expert-load profile (`spec.loads`): with the
expected loads, nothing drops under uniform routing at F >= 1 (the per-batch fluctuation of
real routers is not modelled). The busiest rank's rows come from the placement's imbalance
(`MoEState`), its routed tokens spread evenly over its expert copies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from ..spec.loads import parse_expert_load


def expert_capacity(tokens: float, top_k: int, experts: int, factor: float) -> int:
    """Megatron-Core's `get_capacity(num_tokens=tokens * top_k, num_experts, factor)`:
    ceil(tokens x top_k / experts x factor), per expert, for the `tokens` one rank's router
    sees in one micro-batch (its routing map's rows)."""
    return math.ceil((tokens * top_k / experts) * factor)


def dropped_share(weights: np.ndarray, routed: float, capacity: int) -> float:
    """Share of a layer's routed token copies over capacity: expert e expects
    weights[e] x routed of them from one router rank and keeps at most `capacity`."""
    if routed <= 0:
        return 0.0
    over = np.maximum(np.asarray(weights, dtype=float) * routed - capacity, 0.0)
    return float(over.sum() / routed)


@lru_cache(maxsize=16)
def _profile(spec: str, moe_layers: int, experts: int) -> np.ndarray:
    return parse_expert_load(spec, moe_layers, experts).weights


@dataclass(frozen=True)
class CapacityTerms:
    """One MoE layer's capacity figures on one layout (tokens per micro-batch)."""

    factor: float
    capacity: int  # per expert, from one router rank (Megatron's get_capacity)
    rows_per_expert: int  # the most an expert computes: capacity from each of EP x ETP ranks
    dropped: float  # share of the routed copies over capacity (the load profile's)
    padded: float  # padding rows per routed copy (pad to capacity), else 0
    busiest: float  # rows on the busiest EP rank over its mean routed copies (imbalance)
    full: float  # rows of an EP rank whose copies are all full, over the mean routed copies
    pad: bool = False  # every expert computes exactly its rows_per_expert

    @property
    def computed(self) -> float:
        """Rows computed and sent per routed copy, mean over the EP group."""
        return 1.0 - self.dropped + self.padded

    def rank_share(self, shares: list[float], rank: int) -> float:
        """EP rank `rank`'s share of the layer's computed rows, from the placement's routed
        shares (load over mean): each rank's rows capped at `full` (all of them padded),
        normalised over the group so that the ranks' FLOPs add up to the layer's."""
        capped = [self.full if self.pad else min(x, self.full) for x in shares]
        return capped[rank] / (sum(capped) / len(capped))

    @property
    def kept(self) -> float:
        """Routed copies the experts really compute (the model's math), per routed copy."""
        return 1.0 - self.dropped


def moe_index(m, layer: int) -> int:
    """The row of `layer` in a load profile (one row per MoE layer, in layer order)."""
    return sum(m.is_moe_layer(x) for x in range(min(layer, m.layers)))


def capacity_terms(p, s, T: float, layer: int, moe) -> CapacityTerms | None:
    """[capacity] The capacity of one MoE layer on layout `s` (None: dropless). A router
    rank sees T / tp tokens (sequence parallel, as the all-to-all's T / tp x top_k
    copies); every expert takes at most `capacity` of them from each of the EP x ETP ranks
    that send to it. The busiest EP rank holds `max_slots` copies and receives imbalance x
    the mean, spread evenly over them: it computes min(that, slots x rows_per_expert) rows,
    or exactly slots x rows_per_expert when padded."""
    F = s.moe_capacity_factor
    m = p.model
    if not F or not m.is_moe:
        return None
    n = T / s.tp
    cap = expert_capacity(n, m.top_k, m.experts, F)
    w = _profile(p.workload.expert_load, m.moe_layer_count, m.experts)
    row = w[min(moe_index(m, layer), w.shape[0] - 1)]
    dropped = dropped_share(row, n * m.top_k, cap)
    padded = m.experts * cap / (n * m.top_k) - (1.0 - dropped) if s.moe_pad_to_capacity \
        else 0.0
    full = moe.max_slots * cap * s.ep / (n * m.top_k)  # the busiest rank's rows, all full
    busiest = full if s.moe_pad_to_capacity else min(moe.imbalance, full)
    return CapacityTerms(F, cap, cap * s.ep * s.etp, dropped, padded, busiest, full,
                         s.moe_pad_to_capacity)


def capped_state(p, s, T: float, layer: int, moe):
    """The MoE state the cost terms read under a capacity: `imbalance` becomes the busiest
    rank's computed rows over the mean routed copies, `mean_share` the mean's; unchanged
    when dropless."""
    c = capacity_terms(p, s, T, layer, moe)
    if c is None:
        return moe
    return replace(moe, imbalance=c.busiest, mean_share=c.computed)


def plan_fields(c: CapacityTerms, s) -> dict:
    """The experts section's record of one layer's capacity."""
    return {"factor": c.factor, "capacity_tokens": c.capacity,
            "rows_per_expert": c.rows_per_expert, "dropped_fraction": c.dropped,
            "padding_fraction": c.padded, "busiest_rank_rows_over_mean": c.busiest,
            "pad_to_capacity": s.moe_pad_to_capacity, "drop_policy": s.moe_token_drop_policy,
            "formula": "capacity"}

