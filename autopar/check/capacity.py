"""Token dropping with a capacity factor, recomputed for `autopar check` from
docs/cost-model.md [capacity] alone (not from `autopar.cost.capacity`): Megatron-Core's
capacity per expert and router rank, the share of routed copies over it under the
workload's expert-load profile, the padding rows, and the busiest EP rank's rows. The
other checks read the results: expert FLOPs (dropped copies run none, padding adds rows),
the all-to-all's bytes and buffers, and the busiest rank's activations and casts."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..spec import ModelSpec, Workload
from ..spec.loads import parse_expert_load
from .finding import Findings
from .recompute import Layout, tokens_per_micro_batch

FIELDS_TOL = 1e-9


@dataclass(frozen=True)
class Terms:
    capacity: int  # tokens per expert from one router rank's micro-batch
    rows_per_expert: int  # from every EP x ETP rank: the most one expert computes
    dropped: float  # share of the routed copies over capacity
    padded: float  # padding rows per routed copy (pad to capacity)
    busiest: float  # the busiest EP rank's rows over the mean routed copies

    @property
    def computed(self) -> float:
        return 1.0 - self.dropped + self.padded


def capacity_tokens(tokens: float, top_k: int, experts: int, factor: float) -> int:
    """Megatron's get_capacity over a router rank's tokens x top_k copies."""
    return math.ceil((tokens * top_k / experts) * factor)


def _weights(m: ModelSpec, w: Workload) -> np.ndarray:
    return parse_expert_load(w.expert_load, m.moe_layer_count, m.experts).weights


def layer_terms(m: ModelSpec, w: Workload, lay: Layout, layer: int, imbalance: float,
                slots: int, weights: np.ndarray | None = None) -> Terms | None:
    """One MoE layer's capacity terms (None: dropless). Each router rank holds T / tp
    tokens; expert e expects its profile share of their top_k copies and keeps at most the
    capacity; the busiest EP rank (imbalance x the mean over `slots` copies, spread evenly)
    computes at most slots x capacity x EP of them per ETP rank, exactly that padded."""
    F = lay.moe_capacity_factor
    if not F or not m.is_moe_layer(layer):
        return None
    n = tokens_per_micro_batch(w, lay) / lay.tp
    routed = n * m.top_k
    cap = capacity_tokens(n, m.top_k, m.experts, F)
    wts = _weights(m, w) if weights is None else weights
    row = wts[min(sum(m.is_moe_layer(x) for x in range(layer)), len(wts) - 1)]
    dropped = float(sum(max(0.0, float(x) * routed - cap) for x in row)) / routed
    full = slots * cap * lay.ep / routed
    if lay.moe_pad_to_capacity:
        return Terms(cap, cap * lay.ep * lay.etp, dropped,
                     m.experts * cap / routed - (1 - dropped), full)
    return Terms(cap, cap * lay.ep * lay.etp, dropped, 0.0, min(imbalance, full))


def _placement(plan: dict, m: ModelSpec) -> dict[int, tuple[float, int]]:
    """Each MoE layer's (max / mean load, copies on the fullest EP rank) the plan states."""
    sec = plan.get("experts")
    out = {}
    for e in (sec.get("layers", []) if isinstance(sec, dict) else []):
        ge = e.get("gpu_experts") or [list(range(m.experts))]
        out[e["layer"]] = (float(e.get("max_over_mean", 1.0)), max(len(x) for x in ge))
    return out


def plan_terms(plan: dict, m: ModelSpec, w: Workload, lay: Layout) -> dict[int, Terms]:
    """Every MoE layer's terms, from the layout, the profile and the stated placement."""
    if not lay.moe_capacity_factor or not m.is_moe:
        return {}
    wts = _weights(m, w)
    placed = _placement(plan, m)
    out = {}
    for layer in range(m.layers):
        imb, slots = placed.get(layer, (1.0, m.experts))
        t = layer_terms(m, w, lay, layer, imb, slots, wts)
        if t is not None:
            out[layer] = t
    return out


def busiest(terms: dict[int, Terms], imbalance: dict[int, float]) -> dict[int, float]:
    """The imbalance the busiest rank's rows follow: the stated one, capped (or padded)."""
    return {**imbalance, **{k: t.busiest for k, t in terms.items()}}


def computed(terms: dict[int, Terms]) -> dict[int, float]:
    """Expert rows computed (and sent) per routed copy, per MoE layer (absent: 1)."""
    return {k: t.computed for k, t in terms.items()}


def kept(terms: dict[int, Terms]) -> dict[int, float]:
    """Routed copies the experts compute, per routed copy: what model FLOPs count."""
    return {k: 1.0 - t.dropped for k, t in terms.items()}


def check_capacity(f: Findings, plan: dict, m: ModelSpec, w: Workload, lay: Layout) -> None:
    """The capacity options are ones Megatron-Core takes (padding and a drop policy need a
    factor, the flex dispatcher does not pad, training MoE only), and each MoE layer's
    `capacity` record matches its recomputation."""
    s = plan.get("strategy", {})
    F = lay.moe_capacity_factor
    if F < 0 or not math.isfinite(F):
        f.error("strategy", "strategy.moe_capacity_factor", "a number >= 0", F, None)
        return
    if lay.moe_token_drop_policy not in ("probs", "position"):
        f.error("strategy", "strategy.moe_token_drop_policy", "probs or position",
                lay.moe_token_drop_policy, None)
    if not F and ("moe_pad_to_capacity" in s or "moe_token_drop_policy" in s):
        f.error("strategy", "strategy.moe_pad_to_capacity", "padding and a drop policy "
                "need moe_capacity_factor", None, "moe_capacity_factor > 0")
    if F and (w.kind != "training" or not m.is_moe):
        f.error("strategy", "strategy.moe_capacity_factor", "token dropping is for training "
                "an MoE model", F, 0)
    if lay.moe_pad_to_capacity and lay.moe_dispatcher == "deepep":
        f.error("strategy", "strategy.moe_pad_to_capacity", "Megatron's flex dispatcher "
                "refuses padding", True, False)
    sec = plan.get("experts")
    terms = plan_terms(plan, m, w, lay) if F and m.is_moe and w.kind == "training" else {}
    for i, e in enumerate(sec.get("layers", []) if isinstance(sec, dict) else []):
        got, want = e.get("capacity"), terms.get(e["layer"])
        p = f"experts.layers[{i}].capacity"
        if want is None or not isinstance(got, dict):
            if (want is None) != (got is None):
                f.error("experts", p, "a capacity record exactly when a capacity is set",
                        got is not None, want is not None)
            continue
        for key, value in (("factor", F), ("capacity_tokens", want.capacity),
                           ("rows_per_expert", want.rows_per_expert),
                           ("dropped_fraction", want.dropped),
                           ("padding_fraction", want.padded),
                           ("busiest_rank_rows_over_mean", want.busiest),
                           ("pad_to_capacity", lay.moe_pad_to_capacity),
                           ("drop_policy", lay.moe_token_drop_policy)):
            v = got.get(key)
            if isinstance(value, str | bool):
                bad = v != value
            else:
                bad = not isinstance(v, int | float) or abs(v - value) > FIELDS_TOL * max(
                    1.0, abs(value))
            if bad:
                f.error("experts", f"{p}.{key}", "recomputed from the capacity factor, the "
                        "router's tokens and the load profile [capacity]", v, value)
