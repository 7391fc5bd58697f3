"""Compose per-layer costs into stages, per-GPU memory and the step time of one layout.

One function, `evaluate`, is the single definition of a layout's cost: the search, the
exhaustive oracle and the plan builder all call it, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from . import comm, fp8, fsdp
from .capacity import moe_index
from .dp_sync import adam_traffic, grad_sync
from .edges import edge_cost
from .layer import (
    LayerCost,
    MoEState,
    Problem,
    kv_bytes_per_token_layer,
    layer_cost,
    strategy_groups,
)
from .mtp import mtp_edges
from .pipeline import chunked_pipeline, dualpipe_pipeline, mirror
from .strategy import Strategy


@dataclass
class Memory:
    weights: float = 0.0
    gradients: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0
    activations_no_recompute: float = 0.0
    kv_cache: float = 0.0
    workspace: float = 0.0
    tp_overhead: float = 0.0  # part of weights+grads+optimizer replicated across the TP group
    reserved: float = 0.0
    fp8_weights: float = 0.0  # the cached fp8 copies of the linear layers [fp8-weights]

    @property
    def total(self) -> float:
        return (self.weights + self.gradients + self.optimizer + self.activations
                + self.kv_cache + self.workspace + self.reserved + self.fp8_weights)


@dataclass
class StageCost:
    index: int
    first_layer: int
    end_layer: int  # exclusive
    fwd: float  # per micro-batch, communication included
    bwd: float
    p2p_fwd: float
    p2p_bwd: float
    dp_sync: float
    dp_exposed: float
    optimizer: float
    memory: Memory
    in_flight: float
    overlap_window: float = 0.0  # backward compute the gradient sync can hide behind
    layer_costs: list[LayerCost] = field(repr=False, default_factory=list)
    edges: list[LayerCost] = field(repr=False, default_factory=list)
    # ZeRO-3: per-unit parameter gathers and gradient reduce-scatters, and their exposed
    # parts per micro-batch (in fwd and bwd) [fsdp]
    zero3: fsdp.StageFsdp | None = None
    wgrad: float = 0.0  # [dualpipe] of bwd, the weight-gradient GEMMs per micro-batch (W)

    @property
    def param_gather_dp(self) -> float:
        return self.zero3.gather_dp if self.zero3 else 0.0

    @property
    def param_gather_edp(self) -> float:
        return self.zero3.gather_edp if self.zero3 else 0.0

    @property
    def busy(self) -> float:
        return self.fwd + self.bwd


@dataclass
class Evaluation:
    strategy: Strategy
    stages: list[StageCost]
    step_time: float
    bubble: float
    capacity: float

    @property
    def feasible(self) -> bool:
        return all(st.memory.total <= self.capacity for st in self.stages)

    @property
    def max_memory(self) -> float:
        return max(st.memory.total for st in self.stages)


def layer_costs(p: Problem, s: Strategy, moe: list[MoEState]) -> list[LayerCost]:
    """Cost of every layer; identical (layer kind, MoE state) pairs are computed once."""
    groups = strategy_groups(p, s)
    cache: dict[tuple, LayerCost] = {}
    out = []
    for layer in range(p.model.layers):
        key = (p.model.is_moe_layer(layer), moe[layer], p.model.window(layer),
               # [capacity] the dropped share is the layer's own (its load-profile row)
               moe_index(p.model, layer) if s.moe_capacity_factor else None)
        if key not in cache:
            cache[key] = layer_cost(p, s, layer, moe[layer], groups)
        out.append(cache[key])
    return out


@dataclass(frozen=True)
class PeakTerms:
    """Transient memory that one layer at a time needs, taken over the whole model so that a
    stage's memory stays a sum over its layers (what the CP-SAT stage model can express)."""

    layer_act: float  # one layer's full activations (recompute working set, serving workspace)
    workspace: float  # all-to-all send + receive buffers of one MoE layer
    # selective recompute: what one layer's modules drop, live again during its backward
    rematerialized: float = 0.0

    @staticmethod
    def of(costs: list[LayerCost], edges: list[LayerCost]) -> PeakTerms:
        return PeakTerms(max(c.act_bytes_none for c in costs + edges),
                         2 * max(c.ep_bytes for c in costs),
                         max(c.act_bytes_none - c.act_bytes for c in costs))


def in_flight(s: Strategy, stage: int, training: bool) -> float:
    """Micro-batches whose activations a stage holds at once under 1F1B [pipeline-memory].

    Interleaved (v chunks per stage): Megatron's warm-up runs 2 (p - k - 1) + (v - 1) p chunk
    forwards before the first backward; with the one in flight each holds 1/v of the stage's
    layers, so stage 0 holds p (1 + (p - 1) / (p v)) micro-batches' worth (Korthikanti
    et al. 2022 sec. 4.2.3). Combined 1F1B (`a2a_overlap`) runs one more chunk forward
    first, so that each 1F1B step's forward and backward are independent (Megatron's
    get_pp_rank_microbatches): PP 1 holds two micro-batches. [dualpipe] DualPipe holds PP + 1
    chunks (a stage each), DualPipeV 2 PP + 1 chunks of half its layers."""
    if not training:
        return 1
    p, v, m = s.pp, s.virtual_stages, s.num_micro_batches
    if s.dualpipe:
        return p + 1 if s.pipeline_schedule == "dualpipe" else (2 * p + 1) / 2
    extra = 1 if s.a2a_overlap else 0  # [a2a-overlap] one more chunk forward before 1F1B
    if v == 1:
        return min(p - stage + extra, m)
    return min(2 * (p - stage - 1) + (v - 1) * p + 1 + extra, m * v) / v


def _stage_memory(p: Problem, s: Strategy, stage: int, layers: list[LayerCost],
                  edges: list[LayerCost], seqs: int, peak: PeakTerms) -> Memory:
    m, b = p.model, p.model.dtype_bytes
    dense = sum(c.params for c in layers) + sum(c.params for c in edges)
    expert = sum(c.params_expert for c in layers) + sum(c.params_expert for c in edges)
    repl = sum(c.params_replicated for c in layers) + sum(c.params_replicated for c in edges)
    mem = Memory(reserved=p.hw.reserved_bytes)
    if p.training:
        # ZeRO shards over the gradient group: DP x CP [cp-attention]
        shard_w = (s.dp_cp, s.edp) if s.zero >= 3 else (1, 1)
        shard_g = (s.dp_cp, s.edp) if s.zero >= 2 else (1, 1)
        shard_o = (s.dp_cp, s.edp) if s.zero >= 1 else (1, 1)
        mem.weights = b * (dense / shard_w[0] + expert / shard_w[1])
        gb, ob = p.workload.grad_bytes, p.workload.optimizer_bytes
        mem.gradients = gb * (dense / shard_g[0] + expert / shard_g[1])
        mem.optimizer = ob * (dense / shard_o[0] + expert / shard_o[1])
        mem.tp_overhead = repl * (b / shard_w[0] + gb / shard_g[0] + ob / shard_o[0])
        linear = sum(c.params_linear for c in layers)  # [fp8-weights] sharded as weights
        mem.fp8_weights = fp8.weight_copy_bytes(p) * (linear / shard_w[0] + expert / shard_w[1])
        k = in_flight(s, stage, True)
        per_mb = sum(c.act_bytes for c in layers) + sum(c.act_bytes for c in edges)
        mem.activations = k * per_mb
        mem.activations_no_recompute = k * (sum(c.act_bytes_none for c in layers)
                                            + sum(c.act_bytes_none for c in edges))
        if s.recompute == "full":  # one layer's activations live during its recompute
            mem.activations += peak.layer_act
        elif s.recompute == "selective":  # [recompute-modules]
            mem.activations += peak.rematerialized
    else:  # serving: the blocks' linear layers in the checkpoint's weight_dtype, the
        linear = sum(c.params_linear for c in layers)  # experts in theirs [mxfp4]
        mem.weights = b * (dense - linear) + m.linear_bytes * linear + m.expert_bytes * expert
        mem.tp_overhead = b * repl
        kv = kv_bytes_per_token_layer(m, s.tp)  # [attention-window] tokens each layer keeps
        mem.kv_cache = seqs * sum(c.kv_tokens for c in layers) * kv
        mem.activations = mem.activations_no_recompute = peak.layer_act
    mem.workspace = peak.workspace
    return mem


@dataclass(frozen=True)
class Context:
    """What every stage of one layout shares: groups, links, peaks, sequences per replica."""

    groups: dict
    emb: LayerCost
    head: LayerCost
    peak: PeakTerms
    seqs: int
    p2p_bytes: float
    zero3_lead: tuple[float, float, float] = (0.0, 0.0, 0.0)  # [fsdp] fsdp.lead
    mtp: tuple[LayerCost, ...] = ()  # [mtp] the MTP modules' pseudo-layers, last stage
    # stage_zero3 answers by (recompute, unit identities): the search costs the same units
    # under many micro-batch counts and ZeRO stages; the units are kept so ids stay theirs
    memo: dict = field(default_factory=dict, compare=False, repr=False)

    @staticmethod
    def of(p: Problem, s: Strategy, costs: list[LayerCost],
           edges: tuple[LayerCost, LayerCost] | None = None) -> Context:
        """`edges`: the embedding's and the LM head's costs where already known (they do
        not depend on PP or DP); never changed here."""
        emb, head = edges or (edge_cost(p, s, "embedding"), edge_cost(p, s, "lm_head"))
        if p.model.tie_embeddings and s.pp == 1:  # one shared table on the only stage
            head = replace(head, params=head.params - p.model.vocab * p.model.hidden / s.tp)
        T = s.micro_batch * p.workload.tokens_per_sample // s.cp  # a CP rank's chunks
        groups = strategy_groups(p, s)
        lead = (0.0, 0.0, 0.0)
        if p.training and s.zero >= 3:
            distinct = {id(c): c for c in costs}.values()
            lead = fsdp.lead([zero3_unit(p, s, c, groups) for c in distinct], p.zero3_gather)
        return Context(groups, emb, head, PeakTerms.of(costs, [emb, head]),
                       -(-p.workload.batch // s.dp),
                       T * p.model.hidden * p.model.dtype_bytes / s.tp, lead,
                       mtp_edges(p, s, costs[-1]) if costs else ())  # [mtp]

    def edges(self, s: Strategy, k: int) -> list[LayerCost]:
        return ([self.emb] if k == 0 else []) + ([self.head, *self.mtp] if k == s.pp - 1
                                                 else [])


def stage_cost(p: Problem, s: Strategy, k: int, lc: list[LayerCost], edges: list[LayerCost],
               ctx: Context, first: int = 0, end: int = 0) -> StageCost:
    """Cost of stage k holding the layers in `lc` (and the edge pseudo-layers in `edges`).

    Every field is a sum over `lc` plus terms that do not depend on it (affine), which is
    what lets `stages.StageInputs` turn it into prefix sums for the exact stage models.
    """
    eff = p.calib
    fwd = sum(c.fwd for c in lc) + sum(c.fwd for c in edges)
    bwd = sum(c.bwd for c in lc) + sum(c.bwd for c in edges) if p.training else 0.0
    # [p2p] activations forward, gradients backward, over the link between stages
    p2p_f = p2p_b = 0.0
    if s.pp > 1:
        # interleaved: every chunk boundary is a send (the last chunk of the last stage and
        # the first chunk of the first stage have none); forward to the next stage (the last
        # stage's wrap to the first), backward to the previous (the first's to the last)
        v = s.virtual_stages

        def send(to: int) -> float:
            same = p.hw.domain_of(k * s.stage_width) == p.hw.domain_of(to * s.stage_width)
            link, name = (p.hw.intra, "intra") if same else (p.hw.inter, "inter")  # NVLink
            one = comm.p2p(ctx.p2p_bytes, link, name, eff)  # across trays too
            if s.tp > 1 and not s.sequence_parallel:  # [p2p] scatter-gather: each TP rank
                one += comm.all_gather(ctx.p2p_bytes * s.tp, ctx.groups["tp"], eff)  # 1/t
            return one

        if s.pipeline_schedule == "dualpipev":  # [dualpipe] chunk k to rank k + 1, chunk
            # 2p - 1 - k to rank k - 1; the V's turn (chunk p - 1 to p) stays on rank p - 1
            sends = [t for t in (k + 1, k - 1) if 0 <= t < s.pp]
            p2p_f = sum(send(t) for t in sends)
            p2p_b = p2p_f if p.training else 0.0
        else:
            p2p_f = send((k + 1) % s.pp) * (v if k < s.pp - 1 else v - 1)
            if p.training:
                p2p_b = send((k - 1) % s.pp) * (v if k > 0 else v - 1)
    mem = _stage_memory(p, s, k, lc, edges, ctx.seqs, ctx.peak)
    dp_sync, exposed, opt, last_bwd, zero3, fwd_z3, bwd_z3 = _stage_sync(p, s, lc, edges, ctx,
                                                                         bwd)
    fwd, bwd = fwd + fwd_z3, bwd + bwd_z3
    wgrad = sum(c.wgrad for c in lc) + sum(c.wgrad for c in edges)
    return StageCost(k, first, end, fwd + p2p_f, bwd + p2p_b, p2p_f, p2p_b, dp_sync, exposed,
                     opt, mem, in_flight(s, k, p.training), last_bwd, lc, edges, zero3, wgrad)


def _stage_sync(p: Problem, s: Strategy, lc: list[LayerCost], edges: list[LayerCost],
                ctx: Context, bwd: float) -> tuple:
    """The stage's gradient sync, its exposed part and the optimizer step (ZeRO-3's exposed
    gathers added to the passes): (dp_sync, exposed, opt, last_bwd, zero3, fwd +, bwd +).
    Memoized on the Context: the search asks it for many micro-batch counts and virtual
    stages of the same layers, which it does not depend on beyond M."""
    key = ("sync", s.zero, s.num_micro_batches, s.overlap_grad_reduce, s.recompute, bwd,
           *map(id, lc), None, *map(id, edges))
    if key in ctx.memo:
        return ctx.memo[key][0]
    eff = p.calib
    dp_sync = opt = exposed = last_bwd = fwd_z3 = bwd_z3 = 0.0
    zero3 = None
    if p.training:
        dense = sum(c.params for c in lc) + sum(c.params for c in edges)
        expert = sum(c.params_expert for c in lc) + sum(c.params_expert for c in edges)
        gb, b = p.workload.grad_bytes, p.model.dtype_bytes
        if s.zero < 3:  # ZeRO-3 reduce-scatters per unit, behind the backward [fsdp]
            dp_sync = grad_sync(dense, gb, b, ctx.groups["dp"], s, eff)
            if p.model.is_moe:
                dp_sync += grad_sync(expert, gb, b, ctx.groups["edp"], s, eff)
        last_bwd = bwd
        if s.zero == 2:  # gradients are sharded: reduce-scattered after every micro-batch,
            rs = (dp_sync - grad_sync(dense, 0, b, ctx.groups["dp"], s, eff)  # each behind
                  - (grad_sync(expert, 0, b, ctx.groups["edp"], s, eff)      # its backward
                     if p.model.is_moe else 0.0))
            dp_sync += (s.num_micro_batches - 1) * rs
            last_bwd = bwd * s.num_micro_batches
        if s.zero >= 3:  # [fsdp] per-unit gathers and reduce-scatters, what stays exposed
            zero3 = stage_zero3(p, s, lc + edges, ctx)
            fwd_z3 = zero3.exposed_gather_fwd
            bwd_z3 = zero3.exposed - zero3.exposed_gather_fwd
            last_bwd = (bwd + bwd_z3) * s.num_micro_batches
        if not s.overlap_grad_reduce:  # reduced after the last backward, nothing hidden
            last_bwd = 0.0
        exposed = max(0.0, dp_sync - last_bwd)  # [dp-overlap] buckets reduce during backward
        shard = s.dp_cp if s.zero >= 1 else 1
        eshard = s.edp if s.zero >= 1 else 1
        opt = adam_traffic(p) * (dense / shard + expert / eshard) / (
            p.hw.gpu.hbm_bytes_per_s * p.calib.hbm_eff)
        opt += sum(c.fp8_weight_cast for c in lc)  # [fp8-weights] once per step, after Adam
    out = (dp_sync, exposed, opt, last_bwd, zero3, fwd_z3, bwd_z3)
    ctx.memo[key] = (out, tuple(lc), tuple(edges))
    return out


def mirrored(stages: list[StageCost]) -> list[StageCost]:
    """[dualpipe] DualPipe's rank k holds stage k and a copy of stage p - 1 - k: both
    stages' weights, gradients and optimizer states, their gradient syncs and optimizer
    steps, and the mean of their activations (its PP + 1 chunks in flight are of both).
    The per-micro-batch times stay the stage's own (the pipeline takes the slowest)."""
    out = []
    for st in stages:
        o = stages[mirror(st.index, len(stages))]
        a, b = st.memory, o.memory
        mem = replace(a, weights=a.weights + b.weights, gradients=a.gradients + b.gradients,
                      optimizer=a.optimizer + b.optimizer, tp_overhead=a.tp_overhead
                      + b.tp_overhead, fp8_weights=a.fp8_weights + b.fp8_weights,
                      activations=(a.activations + b.activations) / 2,
                      activations_no_recompute=(a.activations_no_recompute
                                                + b.activations_no_recompute) / 2)
        sync, window = st.dp_sync + o.dp_sync, st.overlap_window + o.overlap_window
        out.append(replace(st, memory=mem, dp_sync=sync, overlap_window=window,
                           dp_exposed=max(0.0, sync - window),
                           optimizer=st.optimizer + o.optimizer))
    return out


def zero3_unit(p: Problem, s: Strategy, c: LayerCost, groups: dict) -> fsdp.UnitComm:
    """One layer (or edge) as an FSDP unit [fsdp]: one call per gather when prefetched
    (coalesced), one per parameter tensor on demand."""
    calls = 1 if p.zero3_gather == "prefetch" else max(1, fsdp.tensors(
        not p.model.gated_mlp, [x.params for x in c.components]))
    return fsdp.unit_comm(c.params, c.params_expert, calls, p.model.dtype_bytes,
                          p.workload.grad_bytes, groups["dp"],
                          groups["edp"] if p.model.is_moe else None, p.calib, c.fwd, c.bwd)


def stage_zero3(p: Problem, s: Strategy, units: list[LayerCost], ctx: Context
                ) -> fsdp.StageFsdp:
    """[fsdp] A stage's ZeRO-3 traffic: the sum over its units plus the lead of each pass
    (a constant, so the stage cost stays affine in its layers)."""
    key = ("zero3", s.recompute, *map(id, units))
    if key not in ctx.memo:
        ctx.memo[key] = (_stage_zero3(p, s, units, ctx), tuple(units))
    return ctx.memo[key][0]


def _stage_zero3(p: Problem, s: Strategy, units: list[LayerCost], ctx: Context
                 ) -> fsdp.StageFsdp:
    n = fsdp.gathers_per_micro_batch(p.zero3_gather, s.recompute)
    g_dp = g_edp = red = ex_f = ex_b = ex_r = 0.0
    calls = 0
    seen: dict[int, tuple] = {}  # a model has a handful of distinct layers
    for c in units:
        if id(c) not in seen:
            u = zero3_unit(p, s, c, ctx.groups)
            dense = fsdp.unit_comm(c.params, 0.0, u.calls, p.model.dtype_bytes, 0,
                                   ctx.groups["dp"], None, p.calib, 0.0, 0.0).gather
            seen[id(c)] = (u, dense, fsdp.exposed(u, p.zero3_gather, n))
        u, dense, (f, b_, r) = seen[id(c)]
        g_dp, g_edp, red, calls = g_dp + dense, g_edp + u.gather - dense, red + u.reduce, \
            calls + u.calls
        ex_f, ex_b, ex_r = ex_f + f, ex_b + b_, ex_r + r
    lf, lb, lr = ctx.zero3_lead
    ex_f, ex_b, ex_r = ex_f + lf, ex_b + lb, ex_r + lr
    # the total never exceeds the link time (fsdp.lead); the split between the gathers
    # and the reduce-scatters may, by the lead: move what one part has too much to the other
    over = max(0.0, ex_b - (n - 1) * (g_dp + g_edp)) - max(0.0, ex_r - red)
    return fsdp.StageFsdp(g_dp, g_edp, red, calls, n, ex_f, ex_b - over, ex_r + over)


def compose(stages: list[StageCost], m: int, v: int = 1, schedule: str = "1f1b"
            ) -> tuple[float, float]:
    """Step = pipeline + the largest exposed gradient sync + the largest optimizer step; and
    the bubble (the pipeline beyond m x the slowest stage), chunk by chunk where the layers
    do not split evenly over the v chunks (`pipeline.chunked_pipeline`), or DualPipe's
    (`pipeline.dualpipe_pipeline`)."""
    counts = [st.end_layer - st.first_layer for st in stages]
    if schedule != "1f1b":
        pipeline, bubble = dualpipe_pipeline([st.busy for st in stages],
                                             [st.bwd for st in stages],
                                             [st.wgrad for st in stages], counts, m, schedule)
    else:
        pipeline, bubble = chunked_pipeline([st.busy for st in stages], counts, m, v)
    step = pipeline + max(st.dp_exposed for st in stages) + max(st.optimizer for st in stages)
    return step, bubble


def evaluate(p: Problem, s: Strategy, bounds: list[int], moe: list[MoEState],
             costs: list[LayerCost] | None = None) -> Evaluation:
    """Cost of layout `s` with stage k holding layers bounds[k]..bounds[k+1]-1."""
    if costs is None:
        costs = layer_costs(p, s, moe)
    ctx = Context.of(p, s, costs)
    stages = [stage_cost(p, s, k, costs[bounds[k]:bounds[k + 1]], ctx.edges(s, k), ctx,
                         bounds[k], bounds[k + 1]) for k in range(s.pp)]
    if s.pipeline_schedule == "dualpipe" and p.training:
        stages = mirrored(stages)
    step, bubble = compose(stages, s.num_micro_batches, s.virtual_stages,
                           s.pipeline_schedule if p.training else "1f1b")
    return Evaluation(s, stages, step, bubble, p.hw.gpu.memory_bytes)
