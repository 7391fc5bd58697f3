"""The layouts the search may choose: every degree and option combination the inputs allow.

Degrees (TP, PP, DP, EP, ETP, micro-batch, recompute, ZeRO, sequence parallel, interleaving,
spare expert slots) are enumerated outside CP-SAT (reference/cpsat.md sec. 3.1), after the
user's pins (`SearchOptions`, whose keys are `PIN_KEYS`) and the divisibility rules; the
search then only bounds and solves this list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..cost.a2a import ep_pass
from ..cost.comm import group_link
from ..cost.layer import MoEState, Problem
from ..cost.strategy import RECOMPUTE, Strategy, StrategyError

PIN_KEYS = ("tp", "pp", "dp", "ep", "etp", "micro_batch", "num_micro_batches", "recompute",
            "zero", "sequence_parallel", "virtual_stages", "overlap_grad_reduce",
            "overlap_tp_comm", "spare_slots", "a2a_overlap", "moe_dispatcher", "a2a_fp8",
            "a2a_node_limit", "a2a_sms")
A2A_PINNED = ("a2a_fp8", "a2a_node_limit", "a2a_sms")  # numerics / kernels: pinned, not searched
SPARE_CHOICES = (0, 1, 2)  # redundant expert slots per GPU tried under a skewed load


@dataclass(frozen=True)
class SearchOptions:
    pins: dict = field(default_factory=dict)  # degree or option name -> fixed value
    time_limit_s: float = 10.0
    seed: int = 0
    workers: int = 1
    max_tp: int | None = None  # default: GPUs per NVLink domain (TP stays on NVLink)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def enumerate_strategies(p: Problem, opts: SearchOptions) -> list[Strategy]:
    """Every layout the inputs allow, after pins and divisibility rules (DESIGN sec. 3)."""
    m, w, G = p.model, p.workload, p.hw.num_gpus
    pins = opts.pins
    _FASTER.clear()  # keyed by the problem's id: valid for this enumeration only
    max_tp = opts.max_tp or p.hw.nvlink_domain
    out = []
    for pp in _divisors(G):
        if pp > m.layers or pins.get("pp", pp) != pp:
            continue
        W = G // pp
        for tp in _divisors(W):
            if pins.get("tp", tp) != tp or (tp > max_tp and "tp" not in pins):
                continue
            heads_ok = m.heads % tp == 0 and (m.kv_heads % tp == 0 or tp % m.kv_heads == 0
                                              or m.mla is not None)
            if not heads_ok:
                continue
            dp = W // tp
            if pins.get("dp", dp) != dp:
                continue
            per_replica = -(-w.batch // dp)
            if w.kind == "training" and w.batch < dp:
                continue
            for ep in (_divisors(W) if m.is_moe else [1]):
                if ep > max(m.experts, 1) or pins.get("ep", ep) != ep:
                    continue
                for etp in _divisors(W // ep):
                    if pins.get("etp", etp) != etp or (etp not in (1, tp) and "etp" not in pins):
                        continue
                    for mb in _divisors(per_replica):
                        if pins.get("micro_batch", mb) != mb:
                            continue
                        _options(G, tp, pp, dp, ep, etp, mb, per_replica // mb, p, pins, out)
    return out


def _options(G: int, tp: int, pp: int, dp: int, ep: int, etp: int, mb: int, nmb: int,
             p: Problem, pins: dict, out: list[Strategy]) -> None:
    training = p.workload.kind == "training"
    if pins.get("num_micro_batches", nmb) != nmb:
        return
    recomputes = RECOMPUTE if training else ("none",)
    sharded = dp > 1 or (p.model.is_moe and (tp * dp) // (ep * etp) > 1)
    zeros = (1, 2, 3) if (training and sharded) else (0,)
    # interleaved 1F1B: v chunks of equal layer counts per stage (Megatron: layers divisible
    # by pp x v, micro-batches by pp)
    chunks = p.model.layers // pp if p.model.layers % pp == 0 else 1
    vs = [v for v in _divisors(chunks) if v == 1 or (training and nmb % pp == 0)]
    if "virtual_stages" in pins:  # interleaving is a training schedule
        vs = [pins["virtual_stages"]] if training or pins["virtual_stages"] == 1 else []
    flags = {k: pins[k] for k in ("overlap_grad_reduce", "overlap_tp_comm", *A2A_PINNED)
             if k in pins}
    for spare in _spare_choices(p, ep, pins):
        for a2a in _a2a_choices(p, (G, tp, pp, dp, ep, etp, mb), pins):
            _variants(G, tp, pp, dp, ep, etp, mb, nmb, recomputes, zeros, vs,
                      {**flags, **a2a, "spare_slots": spare}, pins, out)


def _a2a_choices(p: Problem, shape: tuple, pins: dict) -> list[dict]:
    """[a2a-overlap, deepep] How the expert all-to-all runs: combined 1F1B overlap (training,
    where the GPU's SM count is known; it trades memory for time, so both are weighed) and
    the dispatcher, unless pinned. Where the EP group spans NVLink domains the faster of the
    NCCL all-to-all and DeepEP for this shape is kept (their memory is the same, and the
    exposed time grows with the transfer under either overlap); inside one domain they are
    the same NVLink all-to-all. Layouts Megatron refuses fail `Strategy`'s checks."""
    ep, etp = shape[4], shape[5]
    if not p.model.is_moe or ep == 1:
        return [{k: pins[k] for k in ("a2a_overlap", "moe_dispatcher") if k in pins}]
    overlap = [False, True] if p.training and p.hw.gpu.sms else [False]
    dispatch = [_faster_dispatcher(p, shape, pins)] if ep * etp > p.hw.nvlink_domain \
        else ["alltoall"]
    if "a2a_overlap" in pins:
        overlap = [pins["a2a_overlap"]]
    if "moe_dispatcher" in pins:
        dispatch = [pins["moe_dispatcher"]]
    elif any(pins.get(k) for k in ("a2a_fp8", "a2a_node_limit")):
        dispatch = ["deepep"]  # DeepEP's options
    return [{"a2a_overlap": o, "moe_dispatcher": d} for o in overlap for d in dispatch]


_FASTER: dict[tuple, str] = {}  # (problem, shape) -> dispatcher; the micro-batch scales both


def _faster_dispatcher(p: Problem, shape: tuple, pins: dict) -> str:
    """The dispatcher whose dispatch + combine of one MoE layer is shorter on this shape
    (uniform load; DeepEP with the pinned node limit and fp8 dispatch)."""
    key = (id(p), shape[:6], pins.get("a2a_fp8"), pins.get("a2a_node_limit"))
    if key not in _FASTER:
        _FASTER[key] = _compare_dispatchers(p, shape, pins)
    return _FASTER[key]


def _compare_dispatchers(p: Problem, shape: tuple, pins: dict) -> str:
    G, tp, pp, dp, ep, etp, mb = shape
    T = mb * p.workload.tokens_per_sample
    times = {}
    for d in ("alltoall", "deepep"):
        extra = {k: pins[k] for k in ("a2a_fp8", "a2a_node_limit") if k in pins and
                 d == "deepep"}
        try:
            s = Strategy(G, tp, pp, dp, ep, etp, mb, moe_dispatcher=d, **extra)
        except StrategyError:
            return "alltoall"
        links = {"ep": group_link(p.hw, s.ep_group(0)), "etp": group_link(p.hw, s.etp_group(0))}
        times[d] = ep_pass(p, s, T, MoEState(), links).total  # the first EP group's links
    return "deepep" if times["deepep"] < times["alltoall"] else "alltoall"


def _spare_choices(p: Problem, ep: int, pins: dict) -> tuple[int, ...]:
    """Redundant expert slots: what the user fixed, else a few when the load is skewed (the
    search weighs their memory against the balance they buy); none for a uniform load, where
    the placement already fills the slots an uneven split leaves free."""
    if not p.model.is_moe or ep == 1:
        return (0,)
    if "spare_slots" in pins:
        return (pins["spare_slots"],)
    if p.workload.spare_slots is not None:
        return (p.workload.spare_slots,)
    return SPARE_CHOICES if p.workload.expert_load != "uniform" else (0,)


def _variants(G: int, tp: int, pp: int, dp: int, ep: int, etp: int, mb: int, nmb: int,
              recomputes: tuple, zeros: tuple, vs: list, flags: dict, pins: dict,
              out: list[Strategy]) -> None:
    overlap = flags.get("a2a_overlap", False)  # Megatron: no full recompute, VPP under PP
    for rc in recomputes:
        if pins.get("recompute", rc) != rc or (overlap and rc == "full"):
            continue
        for z in ([pins["zero"]] if "zero" in pins else zeros):
            sps = (tp > 1,) if "sequence_parallel" not in pins else (pins["sequence_parallel"],)
            for sp, v in ((sp, v) for sp in sps for v in vs):
                if overlap and pp > 1 and v == 1:
                    continue
                try:
                    out.append(Strategy(G, tp, pp, dp, ep, etp, mb, nmb, rc, z, sp, v,
                                        **flags))
                except StrategyError:
                    continue
