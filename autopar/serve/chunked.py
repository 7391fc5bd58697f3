"""Aggregated serving as vLLM V1 schedules it: in-flight batching with chunked prefill under a
token budget, the queue for that budget, and SGLang's two-batch overlap (docs/serving.md,
`serving-chunked`, `serving-queue`, `serving-tbo`).

Every scheduler iteration of a micro-batch carries its decode tokens plus up to the rest of
the budget in prompt tokens; a prompt of ISL tokens is spread over ceil(ISL / room)
iterations. The iteration's time is the cost model's (`cost.evaluate`) for the mixed batch:
the linear layers, collectives and all-to-all of decode + chunk tokens in one pass, the
decode tokens' attention over their KV cache, and the chunk's share of its prompt's causal
attention. The formulas on those stage times are pure functions of numbers
(`schedule`, `iteration_times`, `tbo_stage`) so that `check/serving.py` can restate them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..cost.evaluate import Evaluation, evaluate
from ..cost.layer import LayerCost
from ..spec import GPUSpec

GIB = 2 ** 30


def default_budget(gpu: GPUSpec) -> int:
    """vLLM V1's `vllm serve` default of --max-num-batched-tokens (EngineArgs.
    get_batch_defaults, vllm/engine/arg_utils.py): 8192 on GPUs of >= 70 GiB that are not an
    A100, else 2048. SGLang's --chunked-prefill-size is 8192 from 35 to 160 GB."""
    return 8192 if gpu.memory_bytes >= 70 * GIB and "a100" not in gpu.name.lower() else 2048


@dataclass(frozen=True)
class Schedule:
    """[serving-chunked] What one micro-batch iteration carries in steady state."""

    room: int  # prompt tokens the budget leaves beside the decode tokens
    offered: float  # prompt tokens arriving per micro-batch iteration
    chunks: int  # iterations one prompt's prefill is spread over
    chunk: int  # prompt tokens an iteration that carries prefill holds
    share: float  # iterations that carry prefill
    utilization: float  # offered / room: the budget's load


def schedule(per_replica: int, micro_batches: int, isl: int, osl: int,
             budget: int) -> Schedule | None:
    """[serving-chunked] Each running sequence needs a new prompt every OSL - 1 token
    periods, so a replica's b sequences offer b ISL / (OSL - 1) prompt tokens per period,
    spread over its m micro-batch iterations. An iteration holds `budget` tokens, its
    b / m decode tokens first. A prompt alone fills ISL / ceil(ISL / room) per iteration;
    more offered than that fills every iteration. None: the budget cannot keep up (the
    decode tokens fill it, or the prompt tokens offered reach what it leaves)."""
    room = budget - per_replica // micro_batches
    offered = per_replica * isl / max(osl - 1, 1) / micro_batches
    if room < 1 or offered >= room:
        return None
    chunks = -(-isl // room)
    chunk = min(room, max(-(-isl // chunks), math.ceil(offered)))
    return Schedule(room, offered, chunks, chunk, offered / chunk, offered / room)


def iteration_times(dec: list[float], mix: list[float], m: int, sch: Schedule, isl: int
                    ) -> dict[str, float]:
    """[serving-chunked] TPOT and TTFT from the per-stage times of a pure decode iteration
    (`dec`) and one carrying `sch.chunk` prompt tokens (`mix`).

    TPOT: a share of the iterations carries a chunk, so stage k works
    e_k = f mix_k + (1 - f) dec_k and a token comes every max(sum e, m max e).
    TTFT [serving-queue]: half a token period until the request's micro-batch is scheduled,
    the M/D/1 wait for the budget (Poisson arrivals, every prompt the same service
    s = ISL / (m room) token periods at full budget: W = rho s / (2 (1 - rho))), then its
    chunks: the last one's pass through the stages and, before it, one period of its
    micro-batch per chunk (that micro-batch's own mixed stage, the others at e)."""
    f = sch.share
    e = [f * x + (1 - f) * d for x, d in zip(mix, dec, strict=True)]
    tpot = max(sum(e), m * max(e))
    rho = sch.utilization
    service = isl / (m * sch.room) * tpot
    queue = rho * service / (2 * (1 - rho))
    period = max(sum(mix), max(mix) + (m - 1) * max(e))
    prefill = sum(mix) + (sch.chunks - 1) * period
    return {"tpot_s": tpot, "ttft_s": tpot / 2 + queue + prefill, "queue_s": queue,
            "chunks_s": prefill}


def tbo_stage(layers: list[list[float]], other: float) -> float:
    """[serving-tbo] A stage under two-batch overlap from its half-batch figures: each
    layer runs both halves, one's all-to-all (dispatch + combine) hidden behind the other's
    compute, 2 max(compute, a2a); the rest of the stage (embedding, LM head, sends) runs
    once per half. `layers` holds [count, compute_s, a2a_s] of one half."""
    return sum(n * 2 * max(c, a) for n, c, a in layers) + 2 * other


def plain_stage(layers: list[list[float]], other: float) -> float:
    """A stage without overlap: each layer's compute then its all-to-all."""
    return sum(n * (c + a) for n, c, a in layers) + other


@dataclass
class StageSplit:
    """One iteration kind on one stage: identical layers grouped as [count, compute_s,
    a2a_s], and the stage's time outside its layers."""

    layers: list[list[float]]
    other: float

    def to_dict(self) -> dict:
        return {"layers": self.layers, "other_s": self.other}


def _heads(c: LayerCost) -> float:
    return sum(x.time_s for x in c.components if x.role == "heads")


def _group(rows: list[tuple[float, float]]) -> list[list[float]]:
    out: list[list[float]] = []
    for c, a in rows:
        if out and out[-1][1] == c and out[-1][2] == a:
            out[-1][0] += 1
        else:
            out.append([1, c, a])
    return out


def splits(lin: Evaluation, dec: Evaluation | None = None, full: Evaluation | None = None,
           attn_share: float = 0.0) -> list[StageSplit]:
    """Per stage, each layer as (compute, all-to-all) from the cost model. `lin` alone: that
    evaluation as it is (a decode step). With `dec` and `full`: a mixed iteration whose
    linear layers, collectives and edges come from `lin` (a pass over decode + chunk
    tokens), whose attention is `dec`'s (the decode tokens over their context) plus
    `attn_share` of `full`'s (one whole prompt's causal attention), and whose LM head is
    `dec`'s (logits for the decoding sequences)."""
    out = []
    for k, st in enumerate(lin.stages):
        rows, other = [], st.busy - sum(c.fwd for c in st.layer_costs)
        for i, c in enumerate(st.layer_costs):
            comp = c.fwd - c.ep_fwd
            if dec is not None and full is not None:
                comp += (_heads(dec.stages[k].layer_costs[i]) - _heads(c)
                         + attn_share * _heads(full.stages[k].layer_costs[i]))
            rows.append((comp, c.ep_fwd))
        if dec is not None and k == len(lin.stages) - 1:
            other += dec.stages[k].edges[-1].fwd - st.edges[-1].fwd
        out.append(StageSplit(_group(rows), other))
    return out


def stage_times(sp: list[StageSplit], tbo: bool) -> list[float]:
    return [(tbo_stage if tbo else plain_stage)(x.layers, x.other) for x in sp]


def has_all_to_all(sp: list[StageSplit]) -> bool:
    return any(a > 0 for x in sp for _, _, a in x.layers)


def mixed_evaluation(ev, layout, tokens: int, bounds: list[int]) -> Evaluation:
    """The cost model's pass of `tokens` prompt-form tokens per replica on `layout` (one
    micro-batch, the decode step's stage cut): linear layers at m = tokens."""
    p = ev.p
    w = replace(p.workload, phase="prefill", batch=layout.dp, input_len=tokens,
                ttft_ms=None, tpot_ms=None)
    pm = replace(p, workload=w)
    s = layout.strategy(p.hw.num_gpus, 1, 1)
    return evaluate(pm, s, bounds, ev.moe(layout, s))


def decode_evaluation(ev, layout, micro_batch: int, m: int, bounds: list[int]) -> Evaluation:
    """A decode step of `m` micro-batches of `micro_batch` sequences (TBO's halves)."""
    p = ev.p
    w = replace(p.workload, phase="decode", batch=micro_batch * m * layout.dp,
                ttft_ms=None, tpot_ms=None)
    s = layout.strategy(p.hw.num_gpus, micro_batch, m)
    return evaluate(replace(p, workload=w), s, bounds, ev.moe(layout, s))


def token_budget(p) -> int:
    """The workload's budget, else the engine default for the GPU (`default_budget`)."""
    b = p.workload.token_budget
    return default_budget(p.hw.gpu) if b is None else b


@dataclass
class Aggregated:
    """TTFT, TPOT and how they came about (the plan's `serving.point.iteration`)."""

    ttft_s: float
    tpot_s: float
    tbo: bool
    iteration: dict


def legacy_times(dec: list[float], pre: list[float], m: int, per_replica: int,
                 output_len: int) -> tuple[float, float]:
    """[serving-aggregated] (token_budget 0: whole prefills, no chunking) every decode step
    a replica also prefills a = b / (OSL - 1) whole prompts, so stage k works
    m d_k + a p_k; a new request waits for half a step and half of the co-arriving
    prompts, then runs its own prefill."""
    a = per_replica / max(output_len - 1, 1)
    tpot = max(sum(dec), max(m * d + a * x for d, x in zip(dec, pre, strict=True)))
    return sum(pre) + tpot / 2 + max(0.0, a - 1) / 2 * max(pre), tpot


def aggregated(ev, layout, dec: Evaluation, pre: Evaluation, per_replica: int
               ) -> Aggregated | None:
    """TTFT and TPOT of `per_replica` sequences per replica with prefill and decode on the
    same GPUs, under the workload's token budget, with two-batch overlap on or off (on,
    when searched, only where it shortens the request). None: the budget cannot keep up."""
    p, w = ev.p, ev.p.workload
    isl, osl = w.input_len, w.output_len
    m = dec.strategy.num_micro_batches
    mb, bounds = per_replica // m, [st.first_layer for st in dec.stages] + [p.model.layers]
    budget = token_budget(p)
    dsp = splits(dec)
    can_tbo = mb >= 2 and has_all_to_all(dsp) and w.two_batch_overlap is not False
    choices = [True] if can_tbo and w.two_batch_overlap else [False] + [True] * can_tbo
    h = -(-mb // 2)
    half = decode_evaluation(ev, layout, h, m, bounds) if can_tbo else None
    it: dict = {"token_budget": budget, "decode": [x.to_dict() for x in dsp]}
    hsp = splits(half) if half is not None else []
    if half is not None:
        it["tbo_decode"] = [x.to_dict() for x in hsp]
    sch = None
    if budget == 0:
        it["prefill_stage_s"] = [st.busy for st in pre.stages]
    else:
        sch = schedule(per_replica, m, isl, osl, budget)
        if sch is None:
            return None
        msp = splits(ev.mixed(layout, mb + sch.chunk, bounds), dec, pre, sch.chunk / isl)
        it["schedule"] = {"room": sch.room, "offered": sch.offered, "chunks": sch.chunks,
                          "chunk": sch.chunk, "share": sch.share,
                          "utilization": sch.utilization}
        it["mixed"] = [x.to_dict() for x in msp]
        if half is not None:
            hc = -(-sch.chunk // 2)
            it["tbo_mixed"] = [x.to_dict() for x in splits(
                ev.mixed(layout, h + hc, bounds), half, pre, hc / isl)]
    best: Aggregated | None = None
    for tbo in choices:
        d = stage_times(hsp if tbo else dsp, tbo)
        if sch is None:
            ttft, tpot = legacy_times(d, it["prefill_stage_s"], m, per_replica, osl)
            extra = {}
        else:
            key = "tbo_mixed" if tbo else "mixed"
            mix = [(tbo_stage if tbo else plain_stage)(x["layers"], x["other_s"])
                   for x in it[key]]
            extra = iteration_times(d, mix, m, sch, isl)
            ttft, tpot = extra["ttft_s"], extra["tpot_s"]
        lat = ttft + max(osl - 1, 0) * tpot
        if best is None or lat < best.ttft_s + max(osl - 1, 0) * best.tpot_s:
            best = Aggregated(ttft, tpot, tbo, {**it, "two_batch_overlap": tbo,
                                                **{k: v for k, v in extra.items()
                                                   if k in ("queue_s", "chunks_s")}})
    return best


__all__ = ["token_budget", "Aggregated", "legacy_times", "aggregated", "default_budget",
           "Schedule", "schedule", "iteration_times", "tbo_stage",
           "plain_stage", "StageSplit", "splits", "stage_times", "has_all_to_all",
           "mixed_evaluation", "decode_evaluation"]
