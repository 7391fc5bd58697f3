"""[tp-overlap] Transformer Engine's userbuffers overlap of the TP all-gathers and
reduce-scatters with the GEMMs beside them, as TE sets it up when no per-layer config is
given (transformer_engine/pytorch/module/base.py `initialize_ub`, TE 2.x):

- ring exchange (QKV / FC1 forward after the all-gather, proj / FC2 input-gradient after the
  output gradient's all-gather): the GEMM runs as `tp` pieces of T / tp rows, one per chunk
  as it arrives; 1 SM on copies, no margin;
- pipeline (proj / FC2 forward before the reduce-scatter): the GEMM runs as 4 pieces of T / 4
  rows on S - 16 SMs (`set_sm_margin`), each piece's reduce-scatter behind the next piece;
- bulk (QKV / FC1 input-gradient and weight-gradient): the collective runs whole on 16 SMs
  beside the GEMM, which gets S - 16.

So hiding the communication costs GEMM time: smaller GEMMs run less efficiently (priced on the
same GEMM curve or measured table at T / pieces rows) and SMs given to the collectives are
taken from the GEMM. Training only: the userbuffers are set up for the training step.
"""

from __future__ import annotations

from collections.abc import Callable

PIPELINE_SPLITS = 4  # TE default num_splits of a pipelined reduce-scatter
COMM_SMS = 16  # TE default num_sm of pipeline and bulk overlaps (set_sm_margin on)


def sm_slowdown(sms: int | None) -> float:
    """GEMM time on S - 16 SMs over its time on S (1 where the SM count is unknown)."""
    return sms / (sms - COMM_SMS) if sms and sms > COMM_SMS else 1.0


def gemm_times(gemm: Callable[[float], float], tokens: float, tp: int, role: str,
               sms: int | None) -> tuple[float, float]:
    """(forward, backward) GEMM time of a column or row GEMM of `tokens` rows under the
    overlap; `gemm(rows)` prices one GEMM of that many rows. The backward is the input
    gradient plus the weight gradient, each the forward's shape."""
    whole, slow = gemm(tokens), sm_slowdown(sms)
    ring = tp * gemm(tokens / tp)
    if role == "column":  # ring-exchange forward; bulk input- and weight-gradient
        return ring, 2 * whole * slow
    # row: pipelined forward; ring-exchange input-gradient, plain weight-gradient
    return PIPELINE_SPLITS * gemm(tokens / PIPELINE_SPLITS) * slow, ring + whole


def exposed(tp_comm: float, column_fwd: float, row_fwd: float, column_bwd: float,
            row_bwd: float, tp: int) -> tuple[float, float]:
    """(forward, backward) TP communication of one layer the overlap leaves exposed.

    `tp_comm` is the layer's collectives per pass, half all-gathers and half
    reduce-scatters; the GEMM times are the layer's column and row GEMMs under the overlap.
    Ring exchange: the first piece computes on local data, so tp - 1 pieces hide the
    gather. Pipeline: every piece's reduce-scatter but the last hides behind the next
    piece. Backward: the row input-gradient's ring hides the output gradient's gather; the
    column weight-gradient (half its backward) hides the input gradient's reduce-scatter."""
    if tp_comm <= 0:
        return 0.0, 0.0
    ag = rs = tp_comm / 2
    f = PIPELINE_SPLITS
    fwd = (max(0.0, ag - column_fwd * (tp - 1) / tp) + rs / f
           + max(0.0, rs - row_fwd) * (f - 1) / f)
    bwd = max(0.0, ag - row_bwd / 2 * (tp - 1) / tp) + max(0.0, rs - column_bwd / 2)
    return fwd, bwd


def layer_exposed(training: bool, tp: int, costs: list, tp_t: float) -> tuple[float, float]:
    """Exposed TP communication (forward, backward) of one layer whose component costs are
    `costs`: in training as the userbuffers pieces run (`exposed`); in serving behind the
    column / row GEMMs whole."""
    gemm = {r: [c for c in costs if c.role == r] for r in ("column", "row")}
    if not training:
        window = sum(c.time_s - c.ew_s for c in gemm["column"] + gemm["row"])
        return max(0.0, tp_t - window), max(0.0, tp_t - 2 * window)
    fwd = {r: sum(c.time_s - c.ew_s for c in cs) for r, cs in gemm.items()}
    bwd = {r: sum(c.gemm_bwd for c in cs) for r, cs in gemm.items()}
    return exposed(tp_t, fwd["column"], fwd["row"], bwd["column"], bwd["row"], tp)


def async_tp_hidden(costs: list, tp_time: float, sp: bool) -> float:
    """[tp-async] Backward TP time hidden by Megatron's asynchronous input-gradient collective:
    a column-parallel layer launches the all-reduce (reduce-scatter under sequence
    parallelism) of its input gradient and then computes its weight gradient, a GEMM as long
    as its forward one; each block's collective hides up to that GEMM's time. `tp_time` is
    the layer's two block collectives from `_collectives`; under SP each is a reduce-scatter
    plus an all-gather of the same cost, so the reduce-scatter is half of it."""
    one = tp_time / (4 if sp else 2)
    gemms = [c.time_s - c.ew_s for c in costs if c.role == "column"]
    return sum(min(one, t) for t in gemms[:2])  # one collective per block: attention, MLP
