"""ZeRO-3 / FSDP as it runs: per-unit parameter all-gathers and gradient reduce-scatters,
and the part of them the compute next to them does not hide [fsdp].

Every layer, and the embedding and the LM head, is one FSDP unit (Megatron-FSDP's and torch
FSDP2's default wrapping of a transformer). Per micro-batch a unit's parameters are gathered
before its forward and again before its backward (`reshard_after_forward`), and its gradients
reduce-scattered after its backward. How the gathers are issued is the training software's,
not the layout's, so it is a problem switch (`Problem.zero3_gather`):

- "prefetch" (Megatron-FSDP, FSDP2): one coalesced all-gather per unit into a flat buffer,
  the next unit's issued while this one computes; the gather before the backward serves the
  recomputed forward too. Hidden up to the unit's compute; exposed: the first gather of each
  pass, the last reduce-scatter, and whatever exceeds the compute window.
- "on-demand" (DeepSpeed ZeRO-3 as of 2021, SC'21 Table 2): each parameter tensor gathered
  on its own when its module runs, and waited for; the recomputed forward fetches again
  (the module released its parameters after the first forward). Reduce-scatters still run
  behind the rest of the backward.

Each call pays the comm model's per-call latency, `(n - 1) alpha` for a ring of n, so per-
tensor calls at DP 1536 cost what their bytes do not.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import comm

ZERO3_GATHERS = ("prefetch", "on-demand")


@dataclass(frozen=True)
class UnitComm:
    """One unit's ZeRO-3 collectives on the link, per pass / micro-batch, before overlap."""

    gather: float  # all-gather of its parameters, once (dense over DP + experts over EDP)
    reduce: float  # reduce-scatter of its gradients, once per micro-batch
    calls: int  # collective calls per gather (and per reduce-scatter)
    fwd: float  # the compute window of its forward (per micro-batch)
    bwd: float  # of its backward, the recomputed forward included


@dataclass(frozen=True)
class StageFsdp:
    """A stage's ZeRO-3 traffic and what of it the step waits for, per micro-batch."""

    gather_dp: float = 0.0  # link time of one pass's gathers over DP (all units)
    gather_edp: float = 0.0  # and over EDP (experts)
    reduce: float = 0.0  # link time of the reduce-scatters (DP and EDP)
    calls: int = 0  # collective calls of one pass's gathers (= of the reduce-scatters)
    gathers: int = 2  # gathers per unit per micro-batch
    exposed_gather_fwd: float = 0.0
    exposed_gather_bwd: float = 0.0
    exposed_reduce: float = 0.0

    @property
    def exposed_gather(self) -> float:
        return self.exposed_gather_fwd + self.exposed_gather_bwd

    @property
    def exposed(self) -> float:
        return self.exposed_gather + self.exposed_reduce


def tensors(ungated: bool, params: list[float]) -> int:
    """Parameter tensors of a unit, one per component holding parameters plus its bias (or
    LayerNorm shift) where the model has them (GPT-style, ungated MLP): what a per-tensor
    gather issues calls for."""
    return sum(1 for x in params if x > 0) * (2 if ungated else 1)


def gathers_per_micro_batch(mode: str, recompute: str) -> int:
    """Forward and backward; on-demand fetches once more for the recomputed forward."""
    return 3 if mode == "on-demand" and recompute == "full" else 2


def unit_comm(dense: float, expert: float, calls: int, b: int, gb: int,
              dp: comm.GroupLink, edp: comm.GroupLink | None, eff, fwd: float,
              bwd: float) -> UnitComm:
    """[fsdp] `calls` all-gathers of `b x params / calls` bytes each (and as many reduce-
    scatters of the `gb`-byte gradients), dense over DP and experts over EDP."""
    def ring(op, params: float, width: int, g: comm.GroupLink | None) -> float:
        if g is None or g.size == 1 or params <= 0:
            return 0.0
        return calls * op(width * params / calls, g, eff)

    gather = ring(comm.all_gather, dense, b, dp) + ring(comm.all_gather, expert, b, edp)
    reduce = (ring(comm.reduce_scatter, dense, gb, dp)
              + ring(comm.reduce_scatter, expert, gb, edp))
    return UnitComm(gather, reduce, calls, fwd, bwd)


def lead(units: list[UnitComm], mode: str) -> tuple[float, float, float]:
    """What no window hides, per micro-batch, as (forward gather, backward gather, reduce-
    scatter): under prefetch the first unit's gather of each pass, and in both modes the
    last reduce-scatter. A constant per stage, so that a stage's figure stays affine in its
    layers: taken from the model's smallest gather, reduce-scatter and windows, which keeps
    it within what any stage's units move (no stage exposes more than its link time)."""
    if not units:
        return 0.0, 0.0, 0.0
    g = min(u.gather for u in units)
    r = min(u.reduce for u in units)
    fwd = min(u.fwd for u in units)
    bwd = min(u.bwd for u in units)
    if mode == "on-demand":
        return 0.0, 0.0, min(r, bwd)
    back = min(g + r, bwd)  # the first backward gather and the last reduce-scatter
    return min(g, fwd), min(g, back), back - min(g, back)


def exposed(u: UnitComm, mode: str, gathers: int) -> tuple[float, float, float]:
    """(forward gather, backward gather(s), reduce-scatter) of one unit that the step waits
    for, per micro-batch: prefetch hides the forward gather behind the unit's forward and
    the backward's gather(s) and reduce-scatter behind its backward; on demand waits for
    every gather."""
    bwd_gathers = (gathers - 1) * u.gather
    if mode == "on-demand":
        return u.gather, bwd_gathers, max(0.0, u.reduce - u.bwd)
    bwd = max(0.0, bwd_gathers + u.reduce - u.bwd)
    g_bwd = min(bwd, bwd_gathers)  # the gathers first: the reduce-scatter follows them
    return max(0.0, u.gather - u.fwd), g_bwd, bwd - g_bwd
