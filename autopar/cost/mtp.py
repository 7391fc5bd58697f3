"""The MTP modules priced on the last pipeline stage, where Megatron-Core puts them
(`model.mtp`, docs/cost-model.md [mtp]).

Each module is two pseudo-layers after the head: its transformer layer, costed as the last
decoder layer (same type, same routed load), and its norms, projection and shared head
(`edges.edge_cost(..., "mtp")`). They join the last stage's edges, so every stage sum and
the stage models see them without a decoder layer of their own.
"""

from __future__ import annotations

from .edges import edge_cost
from .layer import LayerCost, Problem
from .strategy import Strategy


def mtp_edges(p: Problem, s: Strategy, last_layer: LayerCost) -> tuple[LayerCost, ...]:
    """(layer, extra parts) per MTP module, in order; none when serving."""
    if not p.training or not p.model.mtp_layers:
        return ()
    return (last_layer, edge_cost(p, s, "mtp")) * p.model.mtp_layers


def edge_parts(p: Problem, s: Strategy, stage: int) -> list[str]:
    """Names of a stage's edge pseudo-layers, in `StageCost.edges` order: `mtp<i>_layer` is a
    module's transformer layer, `mtp<i>` its norms, projection and shared head."""
    last = stage == s.pp - 1
    n = p.model.mtp_layers if p.training and last else 0
    mtp = [x for i in range(n) for x in (f"mtp{i}_layer", f"mtp{i}")]
    return (["embedding"] if stage == 0 else []) + (["lm_head"] if last else []) + mtp


def is_mtp_layer(part: str) -> bool:
    """Whether an edge part (`edge_parts`) is an MTP module's transformer layer."""
    return part.startswith("mtp") and part.endswith("_layer")
