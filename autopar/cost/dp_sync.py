"""Data-parallel gradient synchronisation and the optimizer step of one stage [dp-comm,
optimizer]: what the step adds after (or behind) the pipeline."""

from __future__ import annotations

from ..spec import DTYPE_BYTES
from . import comm
from .layer import Problem
from .strategy import Strategy


def adam_traffic(p: Problem) -> float:
    """[optimizer] bytes the optimizer step moves per local parameter, pass by pass (Megatron's
    mixed-precision optimizer): 16-bit gradients are first copied into fp32 main gradients;
    the clipping norm reads them; Adam reads them and reads and writes the master weights and
    both moments; the master weights are copied back into the model's weights. fp16 adds the
    loss-scale pass (unscale the main gradients in place, checking for inf / NaN)."""
    w, b = p.workload, p.model.dtype_bytes
    master = 0 if w.master_dtype == "none" else DTYPE_BYTES[w.master_dtype]
    main = max(w.grad_bytes, master)
    cast = w.grad_bytes + main if main != w.grad_bytes else 0
    unscale = 2 * main if p.model.dtype == "fp16" else 0
    copy_back = master + b if master else 2 * b  # no master: Adam updates the weights in place
    return cast + unscale + main + main + 2 * w.optimizer_bytes + copy_back


def grad_sync(params: float, grad_bytes: int, param_bytes: int, g: comm.GroupLink,
              s: Strategy, eff: dict[str, float]) -> float:
    """[dp-comm] all-reduce of the gradients, or reduce-scatter + bf16 parameter all-gather
    when the optimizer is sharded (ZeRO >= 1). Affine in `params` (latency paid even for an
    empty bucket) so that the stage model can sum it."""
    if g.size == 1:
        return 0.0
    if s.zero >= 1:
        return comm.reduce_scatter(grad_bytes * params, g, eff) + comm.all_gather(
            param_bytes * params, g, eff)
    return comm.all_reduce(grad_bytes * params, g, eff)
