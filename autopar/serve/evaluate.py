"""Serving cost of one layout at one concurrency: TTFT, TPOT, throughput and KV-cache headroom.

The per-layer roofline (`cost.py`) already makes prefill compute-bound and decode bound by
reading the weights and every sequence's KV cache; `evaluate` gives the stage times and the
memory per GPU. This module turns those into what a serving deployment is judged by, with the
pipeline treated as a throughput pipeline (docs/serving.md, formulas `serving-*`):

- decode: each replica keeps `b` sequences in `m` equal micro-batches (`m` the largest
  divisor of `b` up to pp: `min(pp, b)` when pp divides b) cycling through the stages, so a
  token comes every `max(sum_k d_k, max_k m d_k)`;
- prefill: one request per micro-batch; its latency is `sum_k p_k` and it occupies each stage
  for `p_k`, so a replica accepts a new prompt every `max_k p_k`;
- aggregated (phase both): the `b / (OSL - 1)` prefills each decode step must absorb stretch
  the step; TTFT adds the residual of the running step; throughput follows Little's law.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ..cost.evaluate import Evaluation, evaluate, layer_costs
from ..cost.layer import MoEState, Problem
from ..cost.strategy import Strategy, StrategyError
from ..search import PLACEMENT_SHARE, SearchOptions, stage_inputs
from ..search.deadline import Deadline
from ..search.experts import moe_states, placement_key
from ..search.stages import dp_partition
from .chunked import aggregated, mixed_evaluation, token_budget


@dataclass(frozen=True)
class Layout:
    """The degrees of a serving deployment (the batch is decided per point), and the
    redundant expert slots per GPU that hold replicas of the hot experts under a skewed
    load (their memory and the imbalance they remove both enter the cost)."""

    tp: int
    pp: int
    dp: int
    ep: int
    etp: int
    spare: int = 0
    a2a: tuple = ()  # pinned dispatch options, (name, value) pairs [deepep]

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp

    def strategy(self, num_gpus: int, micro_batch: int = 1, micro_batches: int = 1) -> Strategy:
        return Strategy(num_gpus, self.tp, self.pp, self.dp, self.ep, self.etp, micro_batch,
                        micro_batches, "none", 0, False, spare_slots=self.spare,
                        **dict(self.a2a))

    def describe(self) -> str:
        return (f"TP{self.tp} PP{self.pp} DP{self.dp} EP{self.ep} ETP{self.etp}"
                + (f" +{self.spare} spare" if self.spare else ""))

    def to_dict(self) -> dict[str, int]:
        return {"tp": self.tp, "pp": self.pp, "dp": self.dp, "ep": self.ep, "etp": self.etp,
                "spare_slots": self.spare, **dict(self.a2a)}


@dataclass
class PhaseCost:
    """One phase on one layout: per-stage busy time of one micro-batch and the memory."""

    evaluation: Evaluation
    bounds: list[int]

    @property
    def stage_busy(self) -> list[float]:
        return [st.busy for st in self.evaluation.stages]

    @property
    def latency(self) -> float:
        """One micro-batch through every stage."""
        return sum(self.stage_busy)

    @property
    def slot(self) -> float:
        """The slowest stage: how often the pipeline can take a new micro-batch."""
        return max(self.stage_busy)


@dataclass
class ServingPoint:
    """One (layout, concurrency) of a serving deployment and what it delivers."""

    layout: Layout
    phase: str
    concurrency: int  # requests in the system, all replicas
    per_replica: int
    micro_batches: int
    gpus: int
    ttft_s: float | None
    tpot_s: float | None
    request_latency_s: float
    requests_per_s: float
    tokens_per_s: float  # output tokens (decode, both) or input tokens (prefill)
    max_concurrency: int
    memory_bytes: float  # the fullest GPU, prefill workspace included
    capacity_bytes: float
    decode_step_s: float | None = None  # a decode step with no prefill mixed in
    prefill_s: float | None = None  # one prompt through every stage
    bounds: list[int] = field(default_factory=list)
    iteration: dict | None = None  # phase both: the scheduler iterations behind TTFT / TPOT

    @property
    def tokens_per_s_per_gpu(self) -> float:
        return self.tokens_per_s / self.gpus

    @property
    def tokens_per_s_per_user(self) -> float:
        """Output tokens a user sees per second (1 / TPOT); input tokens / TTFT for prefill."""
        if self.tpot_s:
            return 1.0 / self.tpot_s
        return self.tokens_per_s / max(self.concurrency, 1)

    def meets(self, ttft_ms: float | None, tpot_ms: float | None) -> bool:
        ok = ttft_ms is None or (self.ttft_s is not None and self.ttft_s * 1e3 <= ttft_ms)
        return ok and (tpot_ms is None or (self.tpot_s is not None
                                           and self.tpot_s * 1e3 <= tpot_ms))

    def to_dict(self) -> dict:
        return {
            "layout": self.layout.to_dict(), "phase": self.phase, "gpus": self.gpus,
            "concurrency": self.concurrency, "per_replica": self.per_replica,
            "micro_batches": self.micro_batches,
            "ttft_s": self.ttft_s, "tpot_s": self.tpot_s,
            "request_latency_s": self.request_latency_s, "requests_per_s": self.requests_per_s,
            "tokens_per_s": self.tokens_per_s,
            "tokens_per_s_per_gpu": self.tokens_per_s_per_gpu,
            "tokens_per_s_per_user": self.tokens_per_s_per_user,
            "max_concurrency": self.max_concurrency,
            "memory_bytes": self.memory_bytes, "capacity_bytes": self.capacity_bytes,
            "decode_step_s": self.decode_step_s, "prefill_s": self.prefill_s,
            "stage_layers": [[a, b - 1]
                             for a, b in zip(self.bounds, self.bounds[1:], strict=False)],
            **({"iteration": self.iteration} if self.iteration is not None else {}),
        }


def phase_problem(p: Problem, phase: str, batch: int) -> Problem:
    """The same instance with its workload set to one phase and a global batch; a latency
    target of the other phase does not apply to it (and would not validate)."""
    w = p.workload
    return replace(p, workload=replace(
        w, phase=phase, batch=batch, ttft_ms=w.ttft_ms if phase == "prefill" else None,
        tpot_ms=w.tpot_ms if phase == "decode" else None))


class Evaluator:
    """Costs phases of layouts on one instance, caching expert placements across calls.

    Under a time limit (`share_placements`) the placements not yet made share a part of it
    evenly, as in the training search; a layer whose share is too short for CP-SAT gets the
    greedy placement (`FALLBACK`)."""

    def __init__(self, p: Problem, opts: SearchOptions | None = None):
        self.p = p
        self.opts = opts or SearchOptions(time_limit_s=4.0)
        self._placements: dict = {}
        self._moe: dict[Layout, list[MoEState]] = {}
        self._prefill: dict[tuple, PhaseCost | None] = {}
        self._mixed: dict[tuple, Evaluation] = {}
        self.evaluations = 0
        self._placing: Deadline | None = None
        self._keys_left = 0

    def share_placements(self, deadline: Deadline, layouts: list[Layout]) -> None:
        """From now on the placements that `layouts` still need share PLACEMENT_SHARE of the
        time left before `deadline`."""
        keys = {placement_key(self.p, lay.strategy(self.p.hw.num_gpus)) for lay in layouts}
        self._keys_left = len(keys - {None} - set(self._placements))
        self._placing = deadline.fraction(PLACEMENT_SHARE)

    def _placement_deadline(self, s: Strategy) -> Deadline | None:
        key = placement_key(self.p, s)
        if self._placing is None or key is None or key in self._placements:
            return None
        share = max(0.0, self._placing.left()) / max(1, self._keys_left)
        self._keys_left -= 1
        return Deadline.after(share)

    def moe(self, layout: Layout, s: Strategy) -> list[MoEState]:
        if layout not in self._moe:
            self._moe[layout] = moe_states(self.p, s, self._placements, self.opts,
                                           self._placement_deadline(s))
        return self._moe[layout]

    def phase(self, layout: Layout, phase: str, per_replica: int,
              bounds: list[int] | None = None) -> PhaseCost | None:
        """Cost of `per_replica` sequences per replica in one phase; None if it cannot fit.

        Without `bounds` the stage cut is the exact min-max cut under memory (a DP over
        contiguous layers)."""
        # decode: one micro-batch per stage keeps every stage busy; prefill: one batched pass
        # on a single stage, one prompt per micro-batch when there are stages to fill
        m = micro_batches(layout.pp, per_replica) if (phase == "decode" or layout.pp > 1) \
            else 1
        mb = per_replica // m
        p = phase_problem(self.p, phase, per_replica * layout.dp)
        try:
            s = layout.strategy(self.p.hw.num_gpus, mb, m)
        except StrategyError:
            return None
        moe = self.moe(layout, s)
        costs = layer_costs(p, s, moe)
        if bounds is None:
            if layout.pp == 1:
                bounds = [0, p.model.layers]
            else:
                bounds, _ = dp_partition(stage_inputs(p, s, moe))
                if bounds is None:
                    return None
        self.evaluations += 1
        return PhaseCost(evaluate(p, s, bounds, moe, costs), bounds)

    def mixed(self, layout: Layout, tokens: int, bounds: list[int]) -> Evaluation:
        """One pass of `tokens` prompt-form tokens per replica (cached): the linear layers
        of a mixed iteration, or the engine's activation workspace at its token budget."""
        key = (layout, tokens, tuple(bounds))
        if key not in self._mixed:
            self.evaluations += 1
            self._mixed[key] = mixed_evaluation(self, layout, tokens, bounds)
        return self._mixed[key]

    def prefill(self, layout: Layout, bounds: list[int] | None) -> PhaseCost | None:
        """One prompt per replica (cached: it does not depend on the concurrency)."""
        key = (layout, tuple(bounds) if bounds else None)
        if key not in self._prefill:
            self._prefill[key] = self.phase(layout, "prefill", 1, bounds)
        return self._prefill[key]


def micro_batches(pp: int, per_replica: int) -> int:
    """[serving-decode] Micro-batches of a replica's sequences: as many as there are stages,
    but equal in size (the largest divisor of `per_replica` up to `pp`), so that the plan's
    micro_batch x num_micro_batches is exactly the sequences it serves, none padded."""
    return max(d for d in range(1, min(pp, per_replica) + 1) if per_replica % d == 0)


def decode_time(dec: PhaseCost, micro_batches: int) -> float:
    """[serving-decode] steady-state time between two tokens of one sequence: the slowest
    stage runs every micro-batch once per token, and a token cannot beat one pass."""
    busy = dec.stage_busy
    return max(sum(busy), micro_batches * max(busy))


def max_concurrency(p: Problem, layout: Layout, dec: PhaseCost, pre: PhaseCost | None,
                    per_replica: int) -> int:
    """[serving-kv] sequences (all replicas) whose whole KV cache (input + output tokens)
    fits next to the weights, the larger of the decode and prefill workspaces, and the
    reserve, on the fullest stage."""
    cap = p.hw.gpu.memory_bytes
    best = math.inf
    for k, st in enumerate(dec.evaluation.stages):
        mem = st.memory
        kv_per_seq = mem.kv_cache / max(per_replica, 1)
        static = mem.total - mem.kv_cache + _prefill_extra(dec, pre, k)
        if kv_per_seq <= 0:
            continue
        best = min(best, math.floor((cap - static) / kv_per_seq))
    return 0 if best == math.inf else max(0, int(best)) * layout.dp


def _prefill_extra(dec: PhaseCost, pre: PhaseCost | None, k: int) -> float:
    """Bytes a prefill's activations and buffers need beyond the decode step's on stage k
    (aggregated serving runs both on the same GPUs; the KV cache is already counted)."""
    if pre is None:
        return 0.0
    a, b = dec.evaluation.stages[k].memory, pre.evaluation.stages[k].memory
    return max(0.0, (b.activations + b.workspace) - (a.activations + a.workspace))


def peak_memory(dec: PhaseCost, pre: PhaseCost | None) -> float:
    """The fullest GPU's bytes: the decode step's memory plus, where prefills share the
    GPUs, the larger prefill activations and buffers."""
    return max(st.memory.total + _prefill_extra(dec, pre, k)
               for k, st in enumerate(dec.evaluation.stages))


def point(ev: Evaluator, layout: Layout, per_replica: int) -> ServingPoint | None:
    """The serving point of `layout` with `per_replica` requests per replica, in the
    workload's phase; None when it does not fit in memory."""
    p, w = ev.p, ev.p.workload
    if w.phase == "prefill":
        return _prefill_point(ev, layout, per_replica)
    dec = ev.phase(layout, "decode", per_replica)
    if dec is None or not dec.evaluation.feasible:
        return None
    pre = ev.prefill(layout, dec.bounds) if w.phase == "both" else None
    if w.phase == "both" and pre is None:
        return None
    # [serving-kv] an engine sizes its activations for one iteration of its token budget
    budget = token_budget(p) if pre is not None else 0
    work = PhaseCost(ev.mixed(layout, budget, dec.bounds), dec.bounds) if budget else pre
    mem = peak_memory(dec, work)
    cap = p.hw.gpu.memory_bytes
    if mem > cap:
        return None
    m = dec.evaluation.strategy.num_micro_batches
    t_dec = decode_time(dec, m)
    conc = per_replica * layout.dp
    common = dict(layout=layout, phase=w.phase, per_replica=per_replica, micro_batches=m,
                  gpus=layout.gpus, max_concurrency=max_concurrency(p, layout, dec, work,
                                                                    per_replica),
                  memory_bytes=mem, capacity_bytes=cap, decode_step_s=t_dec,
                  bounds=dec.bounds)
    if w.phase == "decode":
        steps = max(w.output_len - 1, 1)  # the first output token comes from the prefill
        return ServingPoint(concurrency=conc, ttft_s=None, tpot_s=t_dec,
                            request_latency_s=t_dec * steps,
                            requests_per_s=conc / (t_dec * steps),
                            tokens_per_s=conc / t_dec, **common)
    agg = aggregated(ev, layout, dec.evaluation, pre.evaluation, per_replica)
    if agg is None:  # the token budget cannot keep up with the prompts this load offers
        return None
    ttft, tpot = agg.ttft_s, agg.tpot_s
    latency = ttft + max(w.output_len - 1, 0) * tpot
    rate = conc / latency  # [serving-little] requests in the system / time each stays
    return ServingPoint(concurrency=conc, ttft_s=ttft, tpot_s=tpot, request_latency_s=latency,
                        requests_per_s=rate, tokens_per_s=rate * w.output_len,
                        prefill_s=pre.latency, iteration=agg.iteration, **common)


def _prefill_point(ev: Evaluator, layout: Layout, per_replica: int) -> ServingPoint | None:
    """Prefill only: batches of `per_replica` prompts per replica, one per micro-batch in a
    throughput pipeline; TTFT is the batch's pass, throughput counts input tokens."""
    p, w = ev.p, ev.p.workload
    pre = ev.phase(layout, "prefill", per_replica)
    if pre is None or not pre.evaluation.feasible:
        return None
    ttft = pre.evaluation.step_time
    conc = per_replica * layout.dp
    rate = conc / ttft
    return ServingPoint(layout=layout, phase="prefill", concurrency=conc,
                        per_replica=per_replica, micro_batches=1, gpus=layout.gpus,
                        ttft_s=ttft, tpot_s=None, request_latency_s=ttft, requests_per_s=rate,
                        tokens_per_s=rate * w.input_len, max_concurrency=conc,
                        memory_bytes=pre.evaluation.max_memory,
                        capacity_bytes=p.hw.gpu.memory_bytes, prefill_s=pre.latency,
                        bounds=pre.bounds)


__all__ = ["Layout", "PhaseCost", "ServingPoint", "Evaluator", "point", "decode_time",
           "max_concurrency", "phase_problem", "peak_memory"]
