"""Selective (module-level) recompute of one layer on one GPU [recompute-modules]: the saved
activations the layout's `recompute_modules` leave, the time the backward spends running
those modules' forward again, and the communication that rerun repeats. Which part of which
component each module covers is `model.recompute`'s table (Megatron-Core's modules)."""

from __future__ import annotations

from typing import Any

from ..model.components import Component
from ..model.recompute import block_reruns, module_reruns
from .fp8 import saved_per_token
from .strategy import Strategy

# layer.py imports this module, so its types (Problem, MoEState, ComponentCost) are `Any` here
Problem = MoEState = ComponentCost = Any


def saved_bytes(c: Component, p: Problem, s: Strategy, T: float, moe: MoEState,
                sharded: float, replicated: float) -> float:
    """Saved activations of one component per micro-batch on one GPU, from its per-token
    bytes: TP splits the sharded part, sequence parallelism the replicated part, an expert
    keeps what its EP rank's routed tokens need (the busiest rank's) [memory-training]."""
    tp = s.tp
    sp_div = tp if s.sequence_parallel else 1
    if c.is_expert:
        routed = T * p.model.top_k * s.etp / tp * moe.imbalance
        return routed * sharded / s.etp
    if c.role == "replicated":
        return T / sp_div * (sharded + replicated)
    return T * sharded / tp + T * replicated / sp_div


def rerun_time(cc: ComponentCost) -> float:
    """The component's forward run again: its kernel's share (the input's fp8 quantize with
    it) and its elementwise kernels' share; a whole rerun is exactly its forward."""
    if cc.again == cc.again_ew:
        return cc.again * cc.time_s
    return (cc.again * (cc.time_s - cc.ew_s + cc.cast_s)
            + cc.again_ew * (cc.ew_s - cc.cast_s))


def rerun_ew(cc: ComponentCost) -> float:
    """Of `rerun_time`, the memory-bound kernels (and quantize casts) [elementwise]."""
    if cc.again == cc.again_ew:
        return cc.again * cc.ew_s
    return cc.again_ew * (cc.ew_s - cc.cast_s) + cc.again * cc.cast_s


def selective(p: Problem, s: Strategy, layer: int, comps: list[Component],
              costs: list[ComponentCost], T: float, moe: MoEState, tp_fwd: float,
              ep_fwd: float) -> tuple[float, float, float, float]:
    """(saved bytes, recompute time, TP and EP time the rerun adds to the backward) of one
    layer under selective recompute; marks each component's rerun shares on `costs`.
    `tp_fwd` is the layer's two exposed forward TP collectives, `ep_fwd` its dispatch +
    combine."""
    reruns = module_reruns(p.model, comps, s.recompute_modules, p.flash_attention,
                           p.workload.context_len)
    act = recompute = 0.0
    for c, cc, r in zip(comps, costs, reruns, strict=True):
        cc.again, cc.again_ew = r.gemm, r.ew
        act += saved_bytes(c, p, s, T, moe, *saved_per_token(c, p, r, s.recompute_modules))
        recompute += rerun_time(cc)
    tp_blocks, a2a = block_reruns(p.model, layer, s.recompute_modules)
    return act, recompute, tp_fwd / 2 * tp_blocks, ep_fwd / 2 * a2a
