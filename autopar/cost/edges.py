"""The embedding (first stage) and the final norm + LM head + loss (last stage) as
pseudo-layers, costed with the same components and rooflines as a transformer layer."""

from __future__ import annotations

from ..model.components import embedding_components, head_components
from ..model.mtp import mtp_extra_components
from . import comm
from .layer import (
    LayerCost,
    MoEState,
    Problem,
    _component,
    _time,
    grad_accumulation,
    micro_batch_tokens,
    strategy_groups,
    weight_grad,
)
from .strategy import Strategy


def edge_cost(p: Problem, s: Strategy, which: str) -> LayerCost:
    """Embedding (first stage) or final norm + LM head + loss (last stage) as a pseudo-layer
    (`mtp`: an MTP module's norms, projection and shared head, `cost.mtp`)."""
    m = p.model
    T = micro_batch_tokens(p, s)
    if which == "lm_head" and not p.training:
        T = s.micro_batch  # serving computes logits only for each sequence's last position
    comps = (embedding_components(m) if which == "embedding" else
             mtp_extra_components(m) if which == "mtp" else head_components(m))
    costs, acts = [], 0.0
    for c in comps:
        cc, act = _component(c, p, s, T, MoEState(), 0.0)
        if c.name == "embedding":  # a gather, bound by reading T rows of the table
            cc.time_s = cc.ew_s = _time(0, T * m.hidden * m.dtype_bytes * 2, 1.0, p)
        costs.append(cc)
        acts += act
    if not p.training:
        acts = 0.0
    compute = sum(c.time_s for c in costs)
    tp_t = 0.0
    if s.tp > 1:  # vocab-parallel embedding all-reduce / loss reductions: one T*h all-reduce
        g = strategy_groups(p, s)["tp"]
        tp_t = comm.all_reduce(T * m.hidden * m.dtype_bytes, g, p.calib)
    return LayerCost(
        compute_fwd=compute,
        compute_bwd=sum(c.bwd_s for c in costs) + grad_accumulation(
            p, sum(c.params for c in costs)),
        recompute=0.0, tp_fwd=tp_t, tp_bwd=tp_t, ep_fwd=0.0, ep_bwd=0.0,
        params=sum(c.params for c in costs), params_expert=0.0,
        params_replicated=sum(c.params for c in costs if c.role == "replicated")
        if s.tp > 1 else 0.0,
        act_bytes=acts, act_bytes_none=acts, act_input=0.0,
        flops_fwd=sum(c.flops for c in costs), tp_bytes=T * m.hidden * m.dtype_bytes,
        ep_bytes=0.0, components=costs, tp_link=tp_t,
        wgrad=weight_grad(costs) if p.training else 0.0,
    )

