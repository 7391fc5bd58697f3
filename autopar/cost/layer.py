"""Per-layer cost on one GPU for one micro-batch: compute (roofline), TP / EP communication,
parameters held and activations saved. Stage, step and memory totals are composed in
`timing.py` and `memory.py` from these.

Formulas are named in `docs/cost-model.md`; the key of each is in brackets in the comments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model.components import (
    EW_BWD,
    LINEAR_ROLES,
    Component,
    layer_components,
    param_bytes,
)
from ..spec import HardwareSpec, ModelSpec, Workload
from . import a2a, comm, fp8, tp_overlap
from .calibration import Calibration
from .capacity import capped_state
from .cp_attention import cp_terms
from .fsdp import ZERO3_GATHERS
from .fused_moe import expert_flops_share, fused_moe_applies, fused_moe_time
from .groups import group_links
from .kv_cache import attended, kv_bytes_per_token_layer, kv_tokens
from .recompute import saved_bytes, selective
from .strategy import Strategy

# [backward] FlashAttention-2 (Dao 2023, its benchmarks): a fused attention's backward runs
# 5 matmuls to the forward's 2 (it recomputes the scores), 2.5x the FLOPs
FLASH_BWD = 2.5


@dataclass(frozen=True)
class Problem:
    """The instance: validated inputs the cost model and search read and never change."""

    model: ModelSpec
    hw: HardwareSpec
    workload: Workload
    calib: Calibration = field(default_factory=Calibration)
    flash_attention: bool = True
    # The weight-gradient GEMM accumulates into the main gradient in its epilogue (Megatron's
    # gradient_accumulation_fusion); False: a separate add after every micro-batch.
    fused_grad_accumulation: bool = True
    # Backward: each column-parallel layer's input-gradient all-reduce (reduce-scatter under
    # sequence parallelism) runs behind its weight-gradient GEMM (Megatron's
    # async_tensor_model_parallel_allreduce, on by default since late 2021); False: exposed.
    async_tp_allreduce: bool = True
    # How ZeRO-3 gathers parameters (`cost.fsdp`): "prefetch" (Megatron-FSDP, FSDP2) or
    # "on-demand" (DeepSpeed ZeRO-3 of 2021: per tensor, waited for)
    zero3_gather: str = "prefetch"

    def __post_init__(self) -> None:  # measured defaults of this GPU fill what is unset
        object.__setattr__(self, "calib", self.calib.resolve(self.hw.gpu))
        if self.zero3_gather not in ZERO3_GATHERS:
            raise ValueError(f"zero3_gather {self.zero3_gather!r} is not one of "
                             f"{ZERO3_GATHERS}")

    @property
    def training(self) -> bool:
        return self.workload.kind == "training"

    @property
    def gemm_dtype(self) -> str:
        """The precision weight GEMMs run in (fp8 only where the GPU has fp8 tensor cores);
        an fp8 checkpoint runs fp8 GEMMs, as vLLM and SGLang do on GPUs that have them."""
        return self.workload.precision or self.model.weight_dtype or self.model.dtype


@dataclass(frozen=True)
class MoEState:
    """How one MoE layer's experts sit on its EP group (from the placement)."""

    imbalance: float = 1.0  # routed tokens on the busiest EP rank over the mean
    max_slots: int = 1  # expert copies on the fullest EP rank
    cross_node_share: float | None = None  # None: uniform traffic over the group's geometry
    # [capacity] rows computed and sent per routed copy, mean over the EP group (1: dropless)
    mean_share: float = 1.0


@dataclass
class ComponentCost:
    name: str
    role: str
    params: float  # parameters on this GPU
    flops: float  # forward FLOPs on this GPU per micro-batch
    time_s: float  # forward time on this GPU per micro-batch
    ew_s: float = 0.0  # of which memory-bound elementwise kernels [elementwise]
    cast_s: float = 0.0  # of ew_s, the fp8 quantize of the input [fp8-cast]
    cast_bwd_s: float = 0.0  # the backward's: the output gradient's
    # recompute: share of the kernel (and its input cast) and of the elementwise kernels
    # that the backward runs again (1, 1 under full recompute) [recompute-modules]
    again: float = 0.0
    again_ew: float = 0.0
    gemm_bwd_s: float | None = None  # the backward's GEMMs where not 2x the forward's [tp-overlap]

    @property
    def gemm_bwd(self) -> float:
        """[backward] The backward's GEMMs: dgrad + wgrad = 2x the forward's, unless set."""
        return 2 * (self.time_s - self.ew_s) if self.gemm_bwd_s is None else self.gemm_bwd_s

    @property
    def bwd_s(self) -> float:
        """[backward] GEMMs, EW_BWD x the elementwise, the output gradient's fp8 casts."""
        return self.gemm_bwd + EW_BWD * (self.ew_s - self.cast_s) + self.cast_bwd_s


@dataclass
class LayerCost:
    compute_fwd: float
    compute_bwd: float
    recompute: float
    tp_fwd: float
    tp_bwd: float
    ep_fwd: float
    ep_bwd: float
    params: float  # non-expert parameters on this GPU
    params_expert: float
    params_replicated: float  # parameters every TP rank holds whole (the TP overhead)
    act_bytes: float  # saved for backward per micro-batch, under the recompute mode
    act_bytes_none: float  # the same with no recompute
    act_input: float  # the layer's input, what full recompute keeps
    flops_fwd: float
    tp_bytes: float  # per collective
    ep_bytes: float  # per all-to-all, per GPU
    components: list[ComponentCost]
    params_linear: float = 0.0  # of `params`, in the blocks' linear layers (weight_dtype)
    # the forward TP collectives on the link, before overlap hides any of them: what the
    # plan lists as their time (tp_fwd / tp_bwd are the exposed parts) [tp-overlap]
    tp_link: float = 0.0
    ep_link: float = 0.0  # one pass's dispatch + combine on the link (ep_fwd: the exposed part)
    fp8_cast: float = 0.0  # of the compute, fp8 quantize kernels (fwd + bwd + recompute)
    fp8_weight_cast: float = 0.0  # per optimizer step: the fp8 weight copies [fp8-weights]
    # [cp-attention] the CP exchange: exposed forward / backward, all passes on the link
    cp_fwd: float = 0.0
    cp_bwd: float = 0.0
    cp_link: float = 0.0
    cp_bytes: float = 0.0  # per call
    # [dualpipe] of compute_bwd, the weight-gradient GEMMs (DualPipe's W)
    wgrad: float = 0.0
    kv_tokens: float = 0.0  # [kv-cache] KV tokens one sequence keeps here (window-capped)

    @property
    def fwd(self) -> float:
        return self.compute_fwd + self.tp_fwd + self.ep_fwd + self.cp_fwd

    @property
    def bwd(self) -> float:
        return self.compute_bwd + self.recompute + self.tp_bwd + self.ep_bwd + self.cp_bwd


def micro_batch_tokens(p: Problem, s: Strategy) -> int:
    """Tokens of one micro-batch on one GPU: a CP rank holds 1 / cp of each sequence."""
    return s.micro_batch * p.workload.tokens_per_sample // s.cp


def experts_touched(m: ModelSpec, routed: float, slots: int) -> float:
    """[experts-touched] Expected share of a GPU's expert copies that receive a token, so
    whose weights a serving step reads: its `routed` token copies come from
    routed x E / (k x slots) tokens, each of which misses a given expert with probability
    1 - k / E (uniform routing). Near 1 for large batches, k / E for one token."""
    if slots <= 0 or m.top_k >= m.experts:
        return 1.0
    tokens = routed * m.experts / (m.top_k * slots)
    return 1.0 - (1.0 - m.top_k / m.experts) ** tokens


def experts_in_tp_group(p: Problem, s: Strategy) -> bool:
    """[serving-moe] Serving without sequence parallelism leaves every token on every rank of
    the TP group after the attention all-reduce; when a TP group holds whole EP x ETP groups
    each rank runs its experts on the tokens it has, and the MLP all-reduce (already counted)
    sums their outputs, as vLLM does for TP (+ EP) without DP: no all-to-all, no ETP gather."""
    return (not p.training and not s.sequence_parallel and s.ep * s.etp > 1
            and s.tp % (s.ep * s.etp) == 0)


def _time(flops: float, nbytes: float, eff: float, p: Problem, dtype: str | None = None) -> float:
    """Roofline [roofline]: the slower of compute at achieved efficiency and HBM traffic, and
    never under one kernel's floor."""
    gpu = p.hw.gpu
    return max(flops / (gpu.flops(dtype or p.model.dtype) * eff), _hbm(nbytes, p),
               p.calib.kernel_floor_s)


def _hbm(nbytes: float, p: Problem) -> float:
    return nbytes / (p.hw.gpu.hbm_bytes_per_s * p.calib.hbm_eff)


def _elementwise(nbytes: float, p: Problem) -> float:
    """[elementwise] The memory-bound kernels after a component: HBM speed, one kernel floor."""
    return max(_hbm(nbytes, p), p.calib.kernel_floor_s) if nbytes > 0 else 0.0


def _component(c: Component, p: Problem, s: Strategy, T: float, moe: MoEState,
               ctx: float) -> tuple[ComponentCost, float]:
    """Forward time of one component on one GPU, and its saved activations (no recompute;
    fp8 GEMM inputs as the recipe keeps them [fp8-activations]).

    The GEMM (or attention kernel) is a roofline; the memory-bound kernels after it run
    separately, at HBM speed, and add to it [elementwise]."""
    m, b, tp = p.model, p.model.dtype_bytes, s.tp
    sp_div = tp if s.sequence_parallel else 1
    k, n = c.gemm
    cast = 0.0, 0.0  # fp8 quantize of the input (forward), of the output gradient (backward)
    # fp8 runs the transformer blocks' linear layers; router and LM head stay 16-bit (as TE)
    dtype = fp8.linear_dtype(p, c.role) if k and c.role in LINEAR_ROLES else m.dtype
    pk = fp8.gemm_key(p, dtype), p.hw.gpu.flops(dtype)  # a measured table of it wins
    wb = param_bytes(m, c.role)
    act = saved_bytes(c, p, s, T, moe, *fp8.saved_per_token(c, p))
    if c.is_expert:
        routed = T * m.top_k * s.etp / tp * moe.imbalance  # tokens this EP rank's experts see
        params = moe.max_slots * c.params / s.etp
        flops_busiest = routed * c.flops_per_token / s.etp
        # FLOPs are the group's mean (conserved: dropped copies do none, padding adds rows
        # [capacity]); time sees the busiest rank
        flops = flops_busiest / moe.imbalance * moe.mean_share
        fused = None if p.training else fused_moe_time(m, p.hw, p.calib, s.etp, s.ep,
                                                        routed, pk[0], moe.max_slots)
        if fused is not None:  # the op's time, split over fc1 / fc2 by their FLOPs
            share = expert_flops_share(m, c.name)
            return ComponentCost(c.name, c.role, params, flops, fused * share, 0.0), act
        per_expert = max(routed / max(moe.max_slots, 1), 1.0)
        kk, nn = (k, n / s.etp) if c.name.endswith("fc1") else (k / s.etp, n)
        eff = p.calib.gemm_eff(per_expert, nn, kk, *pk)
        cast = fp8.linear_casts(p, routed, kk, nn)
        touched = 1.0 if p.training else experts_touched(m, routed, moe.max_slots)
        nbytes = params * wb * touched + routed * (k + n) * b / s.etp
        ew = routed * (c.ew_bytes + c.ew_bytes_repl) / s.etp
    elif c.role == "replicated":
        toks = T / sp_div
        params = c.params
        flops = toks * c.flops_per_token
        eff = p.calib.gemm_eff(toks, n, k, *pk) if k else 1.0
        nbytes = params * b + toks * (k + n if k else 2 * m.hidden) * b
        ew = toks * (c.ew_bytes + c.ew_bytes_repl)
        if c.name == "router" and not p.training and fused_moe_applies(
                m, p.calib, fp8.gemm_key(p, fp8.linear_dtype(p, "expert"))):  # it permutes and
            ew = toks * c.ew_bytes  # sums the routed copies itself [fused-moe]
    else:  # column / row / heads / vocab: the work splits over the TP group
        params = c.params / tp
        flops = T * c.flops_per_token / tp
        if c.role == "heads":
            kv = kv_bytes_per_token_layer(m, tp)
            q_o = 2 * m.heads * m.head_dim * b / tp
            # decode reads every sequence's whole KV cache once per generated token
            kv_read = kv * ctx if (not p.training and p.workload.phase == "decode") else kv
            nbytes = T * (q_o + kv_read)
            if p.flash_attention:
                eff = p.calib.attention_eff
            else:  # two batched GEMMs (ctx x d by d x ctx, ctx x ctx by ctx x d) that write
                eff = p.calib.gemm_eff(ctx, ctx, m.head_dim, *pk)  # the scores and read them back
                nbytes += T * 2 * b * m.heads * ctx / tp
        else:
            kk, nn = (k, n / tp) if c.role in ("column", "vocab") else (k / tp, n)
            eff = p.calib.gemm_eff(T, nn, kk, *pk) if k else 1.0
            nbytes = params * wb + T * (kk + nn) * b
            if c.role in LINEAR_ROLES:
                cast = fp8.linear_casts(p, T, kk, nn)
            if k and c.role in ("column", "row") and tp > 1 and s.overlap_tp_comm \
                    and p.training:  # [tp-overlap] the GEMM as the userbuffers run it
                def rows(r: float) -> float:
                    return _time(flops * r / T, params * wb + r * (kk + nn) * b,
                                 p.calib.gemm_eff(r, nn, kk, *pk), p, dtype)
                t, t_bwd = tp_overlap.gemm_times(rows, T, tp, c.role, p.hw.gpu.sms)
                ew_t = _elementwise(T * c.ew_bytes / tp + T * c.ew_bytes_repl / sp_div,
                                    p) + cast[0]
                return ComponentCost(c.name, c.role, params, flops, t + ew_t, ew_t, *cast,
                                     gemm_bwd_s=t_bwd), act
        ew = T * c.ew_bytes / tp + T * c.ew_bytes_repl / sp_div
    t = _time(flops_busiest if c.is_expert else flops, nbytes, eff, p, dtype)
    ew_t = _elementwise(ew, p) + cast[0]
    # norms and gathers are elementwise too
    ew_s = ew_t + t if not k and c.role not in ("heads", "expert") else ew_t
    # [backward] a fused attention's backward recomputes the scores: 5 GEMMs to 2
    bwd = FLASH_BWD * t if c.role == "heads" and p.flash_attention else None
    return ComponentCost(c.name, c.role, params, flops, t + ew_t, ew_s, *cast,
                         gemm_bwd_s=bwd), act


def _collectives(p: Problem, s: Strategy, T: float, moe_layer: bool, moe: MoEState,
                 groups: dict[str, comm.GroupLink]) -> tuple[float, float, float, float]:
    """Forward TP and EP communication per layer and micro-batch, and their message sizes.

    [tp-comm] Megatron column/row split: one all-reduce (or RS + AG with sequence parallel,
    same bytes) after the attention block and one after the MLP, each of T*h values.
    [ep-comm] each MoE layer dispatches and combines T/tp * top_k hidden vectors per GPU.
    """
    m, b, eff = p.model, p.model.dtype_bytes, p.calib
    tp_bytes = T * m.hidden * b
    tp_time = 0.0
    if s.tp > 1:
        if s.sequence_parallel:
            one = comm.reduce_scatter(tp_bytes, groups["tp"], eff) + comm.all_gather(
                tp_bytes, groups["tp"], eff)
        else:
            one = comm.all_reduce(tp_bytes, groups["tp"], eff)
            if not p.training and groups["tp"].name == "intra":  # serving: the faster one
                one = min(one, comm.all_reduce_one_shot(tp_bytes, groups["tp"], eff))
        tp_time = 2 * one
    ep_bytes, ep_time = 0.0, 0.0
    if moe_layer and not experts_in_tp_group(p, s) and s.a2a_options():  # [deepep]
        one = a2a.ep_pass(p, s, T, moe, groups)
        return tp_time, one.total, tp_bytes, (one.dispatch_bytes + one.combine_bytes) / 2
    if moe_layer and not experts_in_tp_group(p, s):
        nominal = T / s.tp * m.top_k * m.hidden * b
        ep_bytes = nominal * moe.mean_share  # [capacity] what a capacity leaves to send
        g = groups["ep"]
        if moe.cross_node_share is not None and g.size > 1:
            g = comm.GroupLink(g.size, g.nodes, g.link, moe.cross_node_share, g.name)
        # the busiest rank receives imbalance x the mean; dispatch and combine
        busiest = nominal * moe.imbalance
        ep_time = 2 * comm.all_to_all(busiest, g, p.hw, eff)
        if s.etp > 1:  # expert-TP: gather routed tokens over ETP and scatter results back
            routed = busiest * s.etp
            if not p.training and s.ep == 1:  # every rank holds a slice of every expert:
                routed = T / s.tp * m.hidden * b * s.etp  # serving gathers the tokens once
            ep_time += comm.all_gather(routed, groups["etp"], eff) + comm.reduce_scatter(
                routed, groups["etp"], eff)
    return tp_time, ep_time, tp_bytes, ep_bytes


def strategy_groups(p: Problem, s: Strategy) -> dict[str, comm.GroupLink]:
    """Links of each group kind of layout `s` on the problem's hardware (`groups`)."""
    return group_links(p.hw, s)


def layer_cost(p: Problem, s: Strategy, layer: int, moe: MoEState,
               groups: dict[str, comm.GroupLink]) -> LayerCost:
    m = p.model
    T = micro_batch_tokens(p, s)
    if m.is_moe_layer(layer):  # [capacity] the rows a capacity leaves (dropless: moe)
        moe = capped_state(p, s, T, layer, moe)
    ctx = p.workload.context_len
    comps = layer_components(m, layer, ctx, p.workload.causal, p.flash_attention,
                             p.workload.decoding)
    costs, acts = [], 0.0
    span = attended(ctx, m.window(layer)) if p.workload.decoding else ctx  # [attention-window]
    for c in comps:
        cc, act = _component(c, p, s, T, moe, span)
        costs.append(cc)
        acts += act
    compute = sum(c.time_s for c in costs)
    compute_bwd = sum(c.bwd_s for c in costs) + grad_accumulation(p, sum(c.params for c in costs))
    moe_layer = m.is_moe_layer(layer)
    tp_t, ep_t, tp_b, ep_b = _collectives(p, s, T, moe_layer, moe, groups)
    tp_f, tp_b1 = tp_t, tp_t
    if s.overlap_tp_comm:  # [tp-overlap] hidden behind the column / row GEMMs next to it
        tp_f, tp_b1 = tp_overlap.layer_exposed(p.training, s.tp, costs, tp_t)
    elif p.training and p.async_tp_allreduce and s.tp > 1:
        tp_b1 = max(0.0, tp_t - tp_overlap.async_tp_hidden(costs, tp_t, s.sequence_parallel))
    ep_f = ep_b1 = ep_t
    if (s.a2a_overlap or s.dualpipe) and p.training and ep_t:  # [a2a-overlap, dualpipe]
        ep_f, ep_b1 = a2a.overlapped(costs, a2a.ep_pass(p, s, T, moe, groups),
                                     a2a.sm_share(p, s))
    sp_div = s.tp if s.sequence_parallel else 1
    act_input = T * m.hidden * m.dtype_bytes / sp_div
    z3 = (s.dp_cp, s.edp) if s.zero >= 3 else (1, 1)  # ZeRO-3 stores (and casts) a shard
    fp8_w = [(c.params / moe.max_slots / z3[1], moe.max_slots) if c.role == "expert" else
             (c.params / z3[0], 1) for c in costs if c.role in LINEAR_ROLES]
    if s.recompute == "full":  # [recompute] one more forward, its comm included
        act, recompute, tp_bwd, ep_bwd = act_input, compute, tp_b1 + tp_f, 2 * ep_t
        for cc in costs:
            cc.again = cc.again_ew = 1.0
    elif s.recompute == "selective":  # the modules [recompute-modules]
        act, recompute, tp_x, ep_x = selective(p, s, layer, comps, costs, T, moe, tp_f, ep_t)
        tp_bwd, ep_bwd = tp_b1 + tp_x, ep_b1 + ep_x
    else:
        act, recompute, tp_bwd, ep_bwd = acts, 0.0, tp_b1, ep_b1
    casts = sum(c.cast_s * (1 + c.again) + c.cast_bwd_s for c in costs)
    cpt = cp_terms(p, s, T, costs, groups)
    return LayerCost(
        compute_fwd=compute,
        compute_bwd=compute_bwd,
        recompute=recompute,
        tp_fwd=tp_f,
        tp_bwd=tp_bwd,
        ep_fwd=ep_f,
        ep_bwd=ep_bwd,
        params=sum(c.params for c in costs if c.role != "expert"),
        params_expert=sum(c.params for c in costs if c.role == "expert"),
        params_replicated=sum(c.params for c in costs if c.role == "replicated") if s.tp > 1
        else 0.0,
        act_bytes=act,
        act_bytes_none=acts,
        act_input=act_input,
        flops_fwd=sum(c.flops for c in costs),
        tp_bytes=tp_b,
        ep_bytes=ep_b,
        components=costs,
        params_linear=sum(c.params for c in costs if c.role in ("column", "row")),
        tp_link=tp_t, ep_link=ep_t,
        fp8_cast=casts, fp8_weight_cast=fp8.weight_cast_time(p, fp8_w),
        cp_fwd=cpt.fwd, cp_bwd=cpt.bwd, cp_link=cpt.link, cp_bytes=cpt.bytes_per_call,
        wgrad=weight_grad(costs) if p.training else 0.0,
        kv_tokens=kv_tokens(m, layer, p.workload.kv_len),
    )


def weight_grad(costs: list[ComponentCost]) -> float:
    """[dualpipe] The weight-gradient GEMMs of a backward (DualPipe's W): a weighted GEMM's
    backward is its input-gradient and its weight-gradient GEMM, each as long as the forward
    one (`bwd_s`), so W is the forward GEMM time of the components with weights; the
    attention core's backward (no weights) and the elementwise kernels are all B."""
    return sum(c.time_s - c.ew_s for c in costs if c.params > 0)


def grad_accumulation(p: Problem, params: float) -> float:
    """[grad-accum] Unfused gradient accumulation, once per micro-batch: the fresh 16-bit
    weight gradient is read and added into the main gradient (read and written)."""
    if not p.training or p.fused_grad_accumulation:
        return 0.0
    return _hbm(params * (p.model.dtype_bytes + 2 * p.workload.grad_bytes), p)
