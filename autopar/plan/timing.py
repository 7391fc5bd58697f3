"""The plan's `communication` and `timing` sections: every collective of every stage with its
link time and the part the step waits for, and the step split into phases (forward, backward,
recompute, exposed communication, bubble, DP sync, optimizer) on the critical stage, with the
dominant one. Both restate the cost model's stage costs (`cost.evaluate`) per step."""

from __future__ import annotations

from typing import Any

from ..cost import fp8
from ..cost.a2a import a2a_plan_fields
from ..cost.cp_attention import calls_per_layer
from ..cost.evaluate import Evaluation, StageCost
from ..cost.layer import Problem
from ..cost.mtp import edge_parts, is_mtp_layer
from ..cost.pipeline import chunked_pipeline
from ..cost.recompute import rerun_ew
from ..cost.strategy import Strategy
from ..model.components import EW_BWD
from ..model.mtp import mtp_layer_index
from ..model.recompute import block_reruns


def _communication(p: Problem, s: Strategy, ev: Evaluation) -> list[dict[str, Any]]:
    """Every collective of every stage: its time on the link (`time_per_*_s`, what the
    transfer takes) and the part of it the step waits for (`exposed_s`, per step: less
    where it overlaps compute [tp-async, tp-overlap, dp-comm]). Per stage, the exposed
    parts add up to the stage's `timing.per_stage` communication x micro-batches."""
    from ..cost.layer import strategy_groups

    groups = strategy_groups(p, s)
    m_mb = s.num_micro_batches
    out = []
    full = s.recompute == "full"
    passes = 1 + (1 if p.training else 0) + (1 if full else 0)  # forward, backward, recompute
    for st in ev.stages:
        parts = edge_parts(p, s, st.index)
        # [mtp] an MTP module's transformer layer runs the collectives of a decoder layer
        layers = st.layer_costs + [e for e, x in zip(st.edges, parts, strict=True)
                                   if is_mtp_layer(x)]
        n_layers = len(layers)
        reruns = _block_reruns(p, s, st)
        if not st.layer_costs:
            continue
        if s.tp > 1:
            lc = st.layer_costs[0]  # every layer's TP collectives move the same bytes
            exposed = sum(c.tp_fwd + (c.tp_bwd if p.training else 0.0)
                          for c in layers) * m_mb
            out.append(_coll("reduce_scatter+all_gather" if s.sequence_parallel
                             else "all_reduce", "tp", groups["tp"], st.index, lc.tp_bytes,
                             (2 * passes * n_layers + reruns[0]) * m_mb, lc.tp_link / 2,
                             exposed,
                             "tp-comm"))
            for edge, part in zip(st.edges, parts, strict=True):
                if is_mtp_layer(part):
                    continue
                # vocab-parallel embedding / loss: one all-reduce per pass, never hidden
                calls = m_mb * (2 if p.training else 1)
                out.append(_coll("all_reduce", "tp", groups["tp"], st.index, edge.tp_bytes,
                                 calls, edge.tp_link, edge.tp_link * calls, "tp-comm",
                                 part="mtp" if part.startswith("mtp") else part))
        if s.cp > 1:  # [cp-attention] the KV exchange of every layer, each pass
            calls = calls_per_layer(s.cp, s.cp_comm, s.recompute, p.training) * n_layers * m_mb
            link = sum(c.cp_link for c in layers) * m_mb
            out.append(_coll(CP_COLLECTIVE[s.cp_comm], "cp", groups["cp"], st.index,
                             st.layer_costs[0].cp_bytes, calls, link / calls,
                             sum(c.cp_fwd + c.cp_bwd for c in layers) * m_mb,
                             "cp-attention"))
        moe_costs = [c for c in layers if c.ep_bytes]
        if moe_costs and (s.ep > 1 or s.etp > 1):
            per_call = sum(c.ep_link for c in moe_costs) / (2 * len(moe_costs))
            calls = len(moe_costs) * m_mb * 2 * passes + reruns[1] * m_mb
            exposed = per_call * calls
            if (s.a2a_overlap or s.dualpipe) and p.training:  # [a2a-overlap] what the other
                exposed = sum(c.ep_fwd + c.ep_bwd for c in moe_costs) * m_mb  # compute hides
            sent = max(c.ep_bytes for c in moe_costs)  # [capacity] the fullest layer's
            out.append(_coll("all_to_all", "ep", groups["ep"], st.index, sent, calls,
                             per_call, exposed, "ep-comm"))
            if s.a2a_options():  # [deepep] how the engine sends it
                out[-1].update(a2a_plan_fields(p, s, groups["ep"]))
        v = s.virtual_stages  # interleaved: a send per chunk boundary
        sends_f = v if st.index < s.pp - 1 else v - 1
        sends_b = v if st.index > 0 else v - 1
        if s.pipeline_schedule == "dualpipev":  # [dualpipe] to both neighbours
            sends_f = sends_b = (st.index < s.pp - 1) + (st.index > 0)
        if st.p2p_fwd:
            out.append(_coll("send_recv", "pp", None, st.index, _p2p_bytes(p, s),
                             m_mb * sends_f, st.p2p_fwd / sends_f, st.p2p_fwd * m_mb, "p2p",
                             direction="forward"))
        if st.p2p_bwd:
            out.append(_coll("send_recv", "pp", None, st.index, _p2p_bytes(p, s),
                             m_mb * sends_b, st.p2p_bwd / sends_b, st.p2p_bwd * m_mb, "p2p",
                             direction="backward"))
        dense = sum(c.params for c in st.layer_costs) + sum(c.params for c in st.edges)
        if s.pipeline_schedule == "dualpipe" and p.training:  # [dualpipe] and the mirror's
            o = ev.stages[s.pp - 1 - st.index]
            dense += sum(c.params for c in o.layer_costs) + sum(c.params for c in o.edges)
        if p.training and st.dp_sync:
            kind = "reduce_scatter+all_gather" if s.zero >= 1 else "all_reduce"
            out.append(_coll(kind, "dp", groups["dp"], st.index, dense * p.workload.grad_bytes,
                             1, st.dp_sync, st.dp_exposed, "dp-comm"))
        if st.zero3 is not None:
            out.extend(_zero3(p, s, st, groups, dense))
    return out


def _zero3(p: Problem, s: Strategy, st: StageCost, groups: dict, dense: float) -> list[dict]:
    """[fsdp] ZeRO-3's per-unit collectives of one stage: the parameter gathers over DP and
    EDP (`part: parameters`, `n` per unit and micro-batch) and the gradient reduce-scatters
    (`part: gradients`, dense and experts on the DP entry), each call one unit's share (one
    tensor's on demand), so `bytes_per_call` is the mean call; the exposed parts add up to
    the stage's `param_gather_s` x micro-batches."""
    z, m_mb = st.zero3, s.num_micro_batches
    expert = sum(c.params_expert for c in st.layer_costs + st.edges)  # edges: [mtp]
    b = p.model.dtype_bytes
    gather = z.gather_dp + z.gather_edp
    out = []
    for group, t, params in (("dp", z.gather_dp, dense), ("edp", z.gather_edp, expert)):
        if groups[group].size > 1 and (group == "dp" or p.model.is_moe):
            calls = z.gathers * m_mb * z.calls
            share = z.exposed_gather * m_mb * t / gather if gather else 0.0
            out.append(_coll("all_gather", group, groups[group], st.index, params * b / z.calls,
                             calls, t / z.calls, share, "dp-comm", part="parameters"))
    if s.dp_cp > 1 or (p.model.is_moe and s.edp > 1):
        out.append(_coll("reduce_scatter", "dp", groups["dp"], st.index,
                         dense * p.workload.grad_bytes / z.calls, m_mb * z.calls,
                         z.reduce / z.calls, z.exposed_reduce * m_mb, "dp-comm",
                         part="gradients"))
    return out


def _p2p_bytes(p: Problem, s: Strategy) -> float:
    return s.micro_batch * p.workload.tokens_per_sample // s.cp * p.model.hidden * \
        p.model.dtype_bytes / s.tp


def _coll(kind: str, group: str, g, stage: int, nbytes: float, calls: int, per_call: float,
          exposed_s: float, formula: str, direction: str | None = None,
          part: str | None = None) -> dict[str, Any]:
    """One collective entry; `per_call` is the link time, `exposed_s` the step's share."""
    e = {"collective": kind, "group": group, "stage": stage,
         "group_size": g.size if g else 2, "link": g.name if g else "stage-to-stage",
         "bytes_per_call": nbytes, "calls_per_step": calls,
         "bytes_per_step": nbytes * calls, "time_per_call_s": per_call,
         "time_per_step_s": per_call * calls, "exposed": exposed_s > 0,
         "exposed_s": exposed_s, "formula": formula}
    if direction:
        e["direction"] = direction
    if part:
        e["part"] = part
    return e


CP_COLLECTIVE = {"p2p": "send_recv", "all_gather": "all_gather+reduce_scatter",
                 "a2a": "all_to_all"}


def _timing(p: Problem, s: Strategy, ev: Evaluation) -> dict[str, Any]:
    per_stage = []
    for st in ev.stages:
        lcs = st.layer_costs + st.edges
        per_stage.append({
            "stage": st.index, "layers": [st.first_layer, st.end_layer - 1],
            "forward_compute_s": sum(c.compute_fwd for c in lcs),
            "backward_compute_s": sum(c.compute_bwd for c in lcs) if p.training else 0.0,
            "recompute_s": sum(c.recompute for c in lcs) if p.training else 0.0,
            "tp_comm_s": sum(c.tp_fwd + (c.tp_bwd if p.training else 0) for c in lcs),
            "ep_comm_s": sum(c.ep_fwd + (c.ep_bwd if p.training else 0) for c in lcs),
            "pp_comm_s": st.p2p_fwd + st.p2p_bwd,
            **({"cp_comm_s": sum(c.cp_fwd + (c.cp_bwd if p.training else 0) for c in lcs)}
               if s.cp > 1 else {}),
            "param_gather_s": st.zero3.exposed if st.zero3 else 0.0,
            "per_micro_batch_s": st.busy,
            **({"backward_s": st.bwd, "weight_grad_s": st.wgrad}  # [dualpipe] B and W
               if s.dualpipe and p.training else {}),
            "dp_sync_s": st.dp_sync, "dp_exposed_s": st.dp_exposed,
            "optimizer_s": st.optimizer,
        })
        if p.training and fp8.active(p):  # [fp8-cast] of the compute; [fp8-weights] of the
            per_stage[-1]["fp8_cast_s"] = sum(c.fp8_cast for c in lcs)  # optimizer step
            per_stage[-1]["fp8_weight_cast_s"] = sum(c.fp8_weight_cast for c in lcs)
    slow = max(ev.stages, key=lambda x: x.busy)
    crit = per_stage[slow.index]
    mb, v = s.num_micro_batches, s.virtual_stages
    pipeline = ev.bubble + mb * slow.busy  # compose: the pipeline beyond m x slowest
    if not s.dualpipe:
        pipeline = chunked_pipeline([x.busy for x in ev.stages],
                                    [x.end_layer - x.first_layer for x in ev.stages], mb, v)[0]
    schedule = ("interleaved-1f1b" if v > 1 else "1f1b") if p.training else "forward-pipeline"
    if s.dualpipe and p.training:
        schedule = s.pipeline_schedule
    out = {
        "schedule": schedule,
        "micro_batches": mb,
        "virtual_stages": v,
        "critical_stage": slow.index,
        # the phases of the critical stage over the step; they add up to step_time_s
        "forward_s": crit["forward_compute_s"] * mb,
        "backward_s": crit["backward_compute_s"] * mb,
        "recompute_s": crit["recompute_s"] * mb,
        "tp_comm_exposed_s": crit["tp_comm_s"] * mb,
        "ep_comm_exposed_s": crit["ep_comm_s"] * mb,
        "pp_comm_exposed_s": crit["pp_comm_s"] * mb,
        **({"cp_comm_exposed_s": crit["cp_comm_s"] * mb} if s.cp > 1 else {}),
        "param_gather_exposed_s": crit["param_gather_s"] * mb,
        "pipeline_s": pipeline,
        "bubble_s": ev.bubble,
        "dp_exposed_s": max(x.dp_exposed for x in ev.stages),
        "optimizer_s": max(x.optimizer for x in ev.stages),
        "step_time_s": ev.step_time,
        # of forward/backward/recompute: the memory-bound kernels [elementwise]
        "elementwise_s": _elementwise(p, s, slow) * mb,
        "formula": ("dualpipe" if s.dualpipe else "1f1b") if p.training
        else "forward-pipeline",
        "per_stage": per_stage,
    }
    out["dominant_term"] = dominant_term(out)
    return out


PHASES = ("forward_s", "backward_s", "recompute_s", "tp_comm_exposed_s", "ep_comm_exposed_s",
          "pp_comm_exposed_s", "param_gather_exposed_s", "bubble_s", "dp_exposed_s",
          "optimizer_s")
CP_PHASE = "cp_comm_exposed_s"  # a phase of plans with CP only [cp-attention]


def dominant_term(timing: dict[str, Any]) -> str:
    """The phase that takes the largest share of the step (what to attack first)."""
    return max(PHASES + (CP_PHASE,), key=lambda k: timing.get(k, 0.0)).removesuffix("_s")


def _block_reruns(p: Problem, s: Strategy, st: StageCost) -> tuple[int, int]:
    """TP block collectives and all-to-alls per micro-batch that the stage's selective
    recompute runs again (a checkpointed dense MLP or MoE layer) [recompute-modules]."""
    if not p.training or s.recompute != "selective":
        return 0, 0
    mtp = [mtp_layer_index(p.model)] * sum(map(is_mtp_layer, edge_parts(p, s, st.index)))
    runs = [block_reruns(p.model, x, s.recompute_modules)
            for x in list(range(st.first_layer, st.end_layer)) + mtp]  # [mtp]
    return sum(r[0] for r in runs), sum(r[1] for r in runs)


def _elementwise(p: Problem, s: Strategy, st: StageCost) -> float:
    """Per micro-batch: the memory-bound kernels' share of the stage's compute (forward,
    EW_BWD x in the backward, again when recomputed)."""
    total = 0.0
    for lc in st.layer_costs + st.edges:
        for c in lc.components:
            total += c.ew_s
            if p.training:
                total += EW_BWD * (c.ew_s - c.cast_s) + c.cast_bwd_s + rerun_ew(c)
    return total


__all__ = ["PHASES", "dominant_term"]
