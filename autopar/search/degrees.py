"""The layouts the search may choose: every degree and option combination the inputs allow.

Degrees (TP, CP, PP, DP, EP, ETP, micro-batch, recompute, ZeRO, sequence parallel,
interleaving, spare expert slots) are enumerated outside CP-SAT (reference/cpsat.md sec.
3.1), after the user's pins (`SearchOptions`, whose keys are `PIN_KEYS`) and the
divisibility rules; the search then only bounds and solves this list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..cost.a2a import ep_pass
from ..cost.comm import group_link
from ..cost.layer import MoEState, Problem
from ..cost.strategy import (
    CAPACITY_DEFAULTS,
    CP_COMM,
    DROP_POLICIES,
    RECOMPUTE,
    SCHEDULES,
    SPLIT_KEYS,
    Strategy,
    StrategyError,
)
from ..errors import InputError
from ..model.recompute import DEFAULT_MODULES, canonical, module_error, searched_module_sets
from ..spec import ModelSpec
from ..spec.frameworks import LAYOUT_DEFAULTS, Framework, Rule, layout_values, load_framework
from .splits import megatron_split_options, split_ok

PIN_KEYS = ("tp", "pp", "dp", "ep", "etp", "micro_batch", "num_micro_batches", "recompute",
            "zero", "sequence_parallel", "virtual_stages", "overlap_grad_reduce",
            "overlap_tp_comm", "spare_slots", "recompute_modules", "cp", "cp_comm", *SPLIT_KEYS,
            "a2a_overlap", "moe_dispatcher", "a2a_fp8", "a2a_node_limit", "a2a_sms",
            *CAPACITY_DEFAULTS, "pipeline_schedule")
A2A_PINNED = ("a2a_fp8", "a2a_node_limit", "a2a_sms")  # numerics / kernels: pinned, not searched
# [capacity] token dropping changes the model's math (which tokens the experts learn from):
# the user's choice, pinned or not at all
CAPACITY_PINNED = tuple(CAPACITY_DEFAULTS)
SPARE_CHOICES = (0, 1, 2)  # redundant expert slots per GPU tried under a skewed load
# [cp-attention] CP is searched for training only, in powers of two that leave each rank at
# least this many tokens of a sequence (two load-balanced chunks of 2048): below it the ring's
# transfers outgrow the attention blocks they hide behind, and the space stays small
CP_MIN_TOKENS = 4096


@dataclass(frozen=True)
class SearchOptions:
    pins: dict = field(default_factory=dict)  # degree or option name -> fixed value
    time_limit_s: float = 10.0
    seed: int = 0
    workers: int = 1
    max_tp: int | None = None  # default: GPUs per NVLink domain (TP stays on NVLink)
    framework: str = "any"  # whose rules shape the space (spec.frameworks); any: all of it
    placement_budget_s: float | None = None  # per layer: anytime + CP-SAT (place_experts)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_cp_pins(p: Problem, pins: dict) -> None:
    """Refuse, in one line, CP pins no layout can take: an unknown exchange, CP on a serving
    workload, or a sequence that does not split into 2 cp chunks [cp-attention]; and a
    pipeline schedule that is unknown or, DualPipe's, pinned for serving [dualpipe]."""
    sched = pins.get("pipeline_schedule", "1f1b")
    if sched not in SCHEDULES:
        raise InputError("pins", "pipeline_schedule", f"{sched!r} is not one of "
                         f"{', '.join(SCHEDULES)}")
    if sched != "1f1b" and p.workload.kind != "training":
        raise InputError("pins", "pipeline_schedule", f"{sched} is a training schedule; "
                         "serving plans run the forward pipeline")
    if sched != "1f1b":  # pins no layout of the schedule can take (Strategy's checks)
        pp, m = pins.get("pp"), pins.get("num_micro_batches")
        why = ("needs pp >= 2" if pp is not None and pp < 2 else
               "needs an even pp" if sched == "dualpipe" and pp and pp % 2 else
               f"needs micro-batches >= 2 x pp ({2 * pp})" if pp and m and m < 2 * pp else
               "needs an even micro-batch count" if sched == "dualpipe" and m and m % 2 else
               "excludes virtual_stages > 1" if pins.get("virtual_stages", 1) > 1 else
               "excludes a2a_overlap (combined 1F1B)" if pins.get("a2a_overlap") else
               "with zero 3 is not modelled" if pins.get("zero") == 3 else None)
        if why:
            raise InputError("pins", "pipeline_schedule", f"{sched} {why} (pp={pp}, "
                             f"num_micro_batches={m})")
    if pins.get("cp_comm", "p2p") not in CP_COMM:
        raise InputError("pins", "cp_comm", f"{pins['cp_comm']!r} is not one of "
                         f"{', '.join(CP_COMM)}")
    cp = pins.get("cp", 1)
    if not isinstance(cp, int) or isinstance(cp, bool) or cp < 1:
        raise InputError("pins", "cp", f"must be an integer >= 1, got {cp!r}")
    if cp > 1 and p.workload.kind != "training":
        raise InputError("pins", "cp", "context parallelism splits training sequences; "
                         "serving plans take cp 1")
    if cp > 1 and p.workload.seq_len % (2 * cp):
        raise InputError("pins", "cp", f"2 x cp ({2 * cp}) load-balanced chunks must divide "
                         f"the sequence ({p.workload.seq_len} tokens)")


def check_capacity_pins(p: Problem, pins: dict) -> None:
    """Refuse, in one line, capacity pins no layout can take [capacity]: serving (vLLM and
    SGLang route dropless), a dense model, a factor that is not a number >= 0, padding or
    a drop policy without a factor. A factor of None or 0 is dropless (the pin is dropped)."""
    if pins.get("moe_capacity_factor") is None:
        pins.pop("moe_capacity_factor", None)
    f = pins.get("moe_capacity_factor", 0)
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < float("inf"):
        raise InputError("pins", "moe_capacity_factor", f"must be a number >= 0 (0: "
                         f"dropless), got {f!r}")
    if pins.get("moe_token_drop_policy", "probs") not in DROP_POLICIES:
        raise InputError("pins", "moe_token_drop_policy", f"{pins['moe_token_drop_policy']!r}"
                         f" is not one of {', '.join(DROP_POLICIES)}")
    if not f:
        for k in ("moe_pad_to_capacity", "moe_token_drop_policy"):
            if pins.get(k) not in (None, False, "probs"):
                raise InputError("pins", k, "needs moe_capacity_factor > 0 (Megatron)")
        pins.pop("moe_capacity_factor", None)
        return
    pins["moe_capacity_factor"] = float(f)
    if p.workload.kind != "training":
        raise InputError("pins", "moe_capacity_factor", "token dropping is a training "
                         "option (Megatron-Core); vLLM and SGLang serve dropless")
    if not p.model.is_moe:
        raise InputError("pins", "moe_capacity_factor", "a dense model has no experts")
    if pins.get("moe_pad_to_capacity") and pins.get("moe_dispatcher") == "deepep":
        raise InputError("pins", "moe_pad_to_capacity", "needs moe_dispatcher alltoall "
                         "(Megatron's flex dispatcher refuses padding)")


def cp_choices(p: Problem, W: int, pins: dict) -> list[int]:
    """[cp-attention] Context-parallel degrees for a stage of W GPUs: what the user pinned
    (training, 2 cp dividing the sequence), else 1 and the powers of two CP_MIN_TOKENS
    allows; serving has none (its prefill splits no sequence here)."""
    w = p.workload
    if "cp" in pins:
        cp = pins["cp"]
        ok = cp == 1 or (w.kind == "training" and w.seq_len % (2 * cp) == 0)
        return [cp] if ok and W % cp == 0 else []
    if w.kind != "training":
        return [1]
    out, cp = [1], 2
    while W % cp == 0 and w.seq_len % (2 * cp) == 0 and w.seq_len // cp >= CP_MIN_TOKENS:
        out.append(cp)
        cp *= 2
    return out


def enumerate_strategies(p: Problem, opts: SearchOptions) -> list[Strategy]:
    """Every layout the inputs allow, after pins, divisibility rules (DESIGN sec. 3) and the
    target framework's rules: a layout the framework refuses is never emitted."""
    fw = load_framework(opts.framework)
    if fw is None:
        return _enumerate(p, opts, False)
    return [s for s in _enumerate(p, opts, True, fw.name == "megatron")
            if not fw.refuses(strategy_values(p, s))]


def strategy_values(p: Problem, s: Strategy) -> dict:
    """What a framework rule reads of a layout on this problem (`spec.frameworks`). A
    one-type layout states an uneven cut with the split flags (`search.splits`), never as a
    stage-by-stage layout (`pipeline_layout`: what mixed-group plans export)."""
    given = {k: getattr(s, k) for k in LAYOUT_DEFAULTS if k != "pipeline_layout"}
    return layout_values(given, p.model.layers,
                         p.model.experts, p.workload.seq_len if p.training else 0,
                         p.model.heads, p.workload.batch if p.training else 0)


def framework_refusals(p: Problem, opts: SearchOptions, fw: Framework) -> tuple[int, list]:
    """(layouts the inputs allow without the framework, [(rule, layouts it refuses)], the
    rules refusing the most first): what binds when the framework leaves nothing."""
    every = _enumerate(p, opts, True)
    counts: dict[str, int] = {}
    for s in every:
        for r in fw.broken(strategy_values(p, s)):
            counts[r.id] = counts.get(r.id, 0) + 1
    rules = {r.id: r for r in fw.rules}
    return len(every), sorted(((rules[k], n) for k, n in counts.items()),
                              key=lambda x: -x[1])


def binding_rules(fw: Framework, total: int, refused: list[tuple[Rule, int]]) -> str:
    """The infeasibility reason: the framework refuses every layout, and which rules do."""
    named = "; ".join(f"{r.describe()} refuses {n}" for r, n in refused[:3])
    return f"{fw.title} runs none of the {total} layouts the inputs allow: {named}"


def _enumerate(p: Problem, opts: SearchOptions, every_zero: bool,
               megatron_splits: bool = False) -> list[Strategy]:
    """The layouts before any framework's rules. `every_zero` (a framework's run): offer
    ZeRO-0 beside 1-3 where data is sharded (the dominance that drops it assumes ZeRO-1,
    which a framework may refuse). `megatron_splits` (a Megatron run): the stage cut is one
    Megatron's split flags state (`megatron_split_options`), not a searched one."""
    m, w, G = p.model, p.workload, p.hw.num_gpus
    pins = opts.pins
    _FASTER.clear()  # keyed by the problem's id: valid for this enumeration only
    max_tp = opts.max_tp or p.hw.nvlink_domain
    out = []
    for pp in _divisors(G):
        if pp > m.layers or pins.get("pp", pp) != pp:
            continue
        W = G // pp
        for cp, tp in ((c, t) for c in cp_choices(p, W, pins) for t in _divisors(W // c)):
            if pins.get("tp", tp) != tp or (tp > max_tp and "tp" not in pins):
                continue
            heads_ok = m.heads % tp == 0 and (m.kv_heads % tp == 0 or tp % m.kv_heads == 0
                                              or m.mla is not None)
            if not heads_ok or (pins.get("cp_comm") == "a2a" and m.heads % (tp * cp)):
                continue
            dp = W // (tp * cp)
            if pins.get("dp", dp) != dp:
                continue
            per_replica = -(-w.batch // dp)
            if w.kind == "training" and w.batch < dp:
                continue
            for ep in (_divisors(W) if m.is_moe else [1]):
                if ep > max(m.experts, 1) or pins.get("ep", ep) != ep:
                    continue
                # ETP is 1 or TP unless pinned; serving adds ETP = W / EP, the experts
                # TP-sharded over the rest of the stage as the engines run them (it can beat
                # both: Mixtral decoding on 8 H100 at DP 8, EP 2, ETP 4)
                etps = (1, tp, W // ep) if w.kind != "training" else (1, tp)
                for etp in _divisors(W // ep):
                    if pins.get("etp", etp) != etp or (etp not in etps and "etp" not in pins):
                        continue
                    for mb in _divisors(per_replica):
                        if pins.get("micro_batch", mb) != mb:
                            continue
                        _options(G, tp, pp, dp, ep, etp, mb, per_replica // mb, p, pins, out,
                                 cp, every_zero, megatron_splits)
    return out


def _options(G: int, tp: int, pp: int, dp: int, ep: int, etp: int, mb: int, nmb: int,
             p: Problem, pins: dict, out: list[Strategy], cp: int = 1,
             every_zero: bool = False, megatron_splits: bool = False) -> None:
    training = p.workload.kind == "training"
    if pins.get("num_micro_batches", nmb) != nmb:
        return
    recomputes = recompute_choices(p, pins) if training else (("none", ()),)
    sharded = dp * cp > 1 or (p.model.is_moe and (tp * cp * dp) // (ep * etp) > 1)
    zeros = ((0, 1, 2, 3) if every_zero else (1, 2, 3)) if (training and sharded) else (0,)
    vs = [v for v in virtual_choices(p.model.layers, pp)
          if v == 1 or (training and nmb % pp == 0)]
    if "virtual_stages" in pins:  # interleaving is a training schedule
        vs = [pins["virtual_stages"]] if training or pins["virtual_stages"] == 1 else []
    flags = {k: pins[k] for k in ("overlap_grad_reduce", "overlap_tp_comm", *SPLIT_KEYS,
                                  *A2A_PINNED, *CAPACITY_PINNED) if k in pins}
    splits: list[dict] = [{}]
    if megatron_splits and training and pp > 1 and not any(flags.get(k) for k in SPLIT_KEYS):
        splits = megatron_split_options(p.model.layers, pp, tuple(vs))
    if cp > 1:  # p2p (ring) is searched: all_gather moves as much and hides none of it
        flags.update(cp=cp, cp_comm=pins.get("cp_comm", "p2p"))
    scheds = schedule_choices(p, pp, ep, nmb, pins)
    for split in splits:
        fl = {**flags, **split}
        v_ok = vs
        if any(fl.get(k) for k in SPLIT_KEYS):  # Megatron's checks of the (pinned) split
            v_ok = [v for v in vs if split_ok(p.model.layers, pp, v, fl)]
        for spare in _spare_choices(p, ep, pins):
            for a2a in _a2a_choices(p, (G, tp, pp, dp, ep, etp, mb), pins):
                for sched in scheds:
                    if sched != "1f1b" and (a2a.get("a2a_overlap") or split):
                        continue  # DualPipe overlaps the all-to-all itself; no split flags
                    _variants(G, tp, pp, dp, ep, etp, mb, nmb, recomputes, zeros,
                              v_ok if sched == "1f1b" else [1],
                              {**fl, **a2a, "spare_slots": spare, "pipeline_schedule": sched},
                              pins, out)


def schedule_choices(p: Problem, pp: int, ep: int, nmb: int, pins: dict) -> list[str]:
    """[dualpipe] Pipeline schedules: the pinned one, else 1F1B and, in training of a MoE
    model with EP > 1 on an even PP >= 2 with micro-batches >= 2 PP (DualPipe's conditions)
    where the GPU's SM count is known (the paired all-to-all needs it), DualPipeV (one copy
    of the weights) and, with an even micro-batch count, DualPipe (two copies)."""
    if "pipeline_schedule" in pins:
        return [pins["pipeline_schedule"]]
    pinned_off = (pins.get("virtual_stages", 1) > 1 or pins.get("a2a_overlap")
                  or pins.get("zero") == 3 or any(pins.get(k) for k in SPLIT_KEYS))
    if pinned_off or not (p.training and p.model.is_moe and ep > 1 and pp >= 2
                          and pp % 2 == 0 and nmb >= 2 * pp and p.hw.gpu.sms):
        return ["1f1b"]
    return ["1f1b", "dualpipev"] + (["dualpipe"] if nmb % 2 == 0 else [])


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
        and not pins.get("moe_pad_to_capacity") else ["alltoall"]  # flex: no padding
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


def virtual_choices(layers: int, pp: int) -> list[int]:
    """Interleaving degrees v offered on pp stages [pipeline-split]: the divisors of the
    layers per stage when pp divides the layers (equal chunks, Megatron's plain rule);
    otherwise the divisors of the larger stage size ceil(L / pp), up to the smaller one:
    the full stages split into equal chunks and the short ones, fewer, into uneven chunks,
    which Megatron runs with `--pipeline-model-parallel-layout` (or first / last stage
    counts) and autopar prices chunk by chunk (`pipeline.chunked_pipeline`)."""
    if layers % pp == 0:
        return _divisors(layers // pp)
    return [v for v in _divisors(layers // pp + 1) if v <= layers // pp]


def recompute_modules_pin(pins: dict, m: ModelSpec) -> tuple[str, ...]:
    """The pinned `recompute_modules` (a list or a comma-separated string) as a canonical
    tuple; a bad one is an InputError naming the pin."""
    raw = pins["recompute_modules"]
    mods = tuple(x.strip() for x in raw.split(",") if x.strip()) if isinstance(raw, str) \
        else tuple(raw)
    why = module_error(mods, m) if mods else "give at least one module"
    if why is None and pins.get("recompute", "selective") != "selective":
        why = f"modules need recompute 'selective', not {pins['recompute']!r}"
    if why:
        raise InputError("pins", "recompute_modules", why)
    return canonical(mods)


def recompute_choices(p: Problem, pins: dict) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(granularity, modules) pairs a training search tries [recompute-modules]: none, the
    selective sets of `searched_module_sets` (today's attention-core-only where it saves
    memory, the cheap set of norms / MoE activation / MLA up-projections) and full; pinned
    modules mean selective with exactly those, a pinned `selective` alone Megatron's default
    (core_attn)."""
    if "recompute_modules" in pins:
        mods = canonical(tuple(pins["recompute_modules"]))
        return (("selective", mods),) if pins.get("recompute", "selective") == "selective" \
            else ()
    out: list[tuple[str, tuple[str, ...]]] = []
    for rc in RECOMPUTE:
        if pins.get("recompute", rc) != rc:
            continue
        if rc != "selective":
            out.append((rc, ()))
        elif "recompute" in pins:
            out.append((rc, DEFAULT_MODULES))
        else:
            out += [(rc, mods) for mods in searched_module_sets(p.model, p.flash_attention)]
    return tuple(out)


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
    for rc, mods in recomputes:
        if overlap and rc == "full":
            continue
        for z in ([pins["zero"]] if "zero" in pins else zeros):
            sps = (tp > 1,) if "sequence_parallel" not in pins else (pins["sequence_parallel"],)
            for sp, v in ((sp, v) for sp in sps for v in vs):
                if overlap and pp > 1 and v == 1:
                    continue
                try:
                    out.append(Strategy(G, tp, pp, dp, ep, etp, mb, nmb, rc, z, sp, v,
                                        **flags, recompute_modules=mods))
                except StrategyError:
                    continue
