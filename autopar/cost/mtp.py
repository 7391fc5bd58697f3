"""The MTP modules priced on the last pipeline stage, where Megatron-Core puts them
(`model.mtp`, docs/cost-model.md [mtp]).

Each module is its transformer layer, costed as the last decoder layer (same type, same
routed load), plus its norms, projection and shared head (`edges.edge_cost(..., "mtp")`);
all of it joins the last stage's head pseudo-layer, so every stage sum and the stage models
see it without a layer of their own.
"""

from __future__ import annotations

from dataclasses import fields, replace

from .edges import edge_cost
from .layer import LayerCost, Problem
from .strategy import Strategy


def add_costs(a: LayerCost, b: LayerCost) -> LayerCost:
    """The two pseudo-layers as one: every figure summed, components concatenated."""
    sums = {f.name: getattr(a, f.name) + getattr(b, f.name) for f in fields(LayerCost)
            if f.name not in ("components", "act_input")}
    return replace(a, components=a.components + b.components, **sums)


def with_mtp(p: Problem, s: Strategy, head: LayerCost, last_layer: LayerCost) -> LayerCost:
    """The head pseudo-layer with the model's MTP modules added (training only)."""
    if not p.training or not p.model.mtp_layers:
        return head
    one = add_costs(last_layer, edge_cost(p, s, "mtp"))
    for _ in range(p.model.mtp_layers):
        head = add_costs(head, one)
    return head
