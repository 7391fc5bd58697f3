"""A plan's figures recomputed from the specs and its stated layout, for `autopar check`.

Written from docs/cost-model.md and `autopar.model.components` alone: nothing here calls the cost
model, the evaluator or the search, so a planner bug cannot hide by being computed twice the
same way. Memory, collective sizes and FLOPs follow the named formulas (`memory-training`,
`memory`, `tp-comm`, `ep-comm`, `p2p`, `dp-comm`, `flops`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model.components import Component, embedding_components, head_components, layer_components
from ..model.mtp import mtp_extra_components, mtp_layer_index
from ..model.recompute import Rerun, block_reruns, module_reruns
from ..spec import HardwareSpec, ModelSpec, Workload
from . import zero3
from .a2a import deepep_min_time, remote_domains, wire_bytes
from .cp_attention import cp_collective
from .fp8 import copy_bytes_per_param, fp8_kept
from .fp8 import recipe as fp8_recipe
from .links import domain_members
from .links import link_bw as _link_bw
from .mtp import mtp_count, mtp_params
from .mxfp4 import expert_weight_bytes
from .pipeline import in_flight, mirror_stage, pipeline_time  # noqa: F401 (re-exported)
from .windows import kv_tokens


# --------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Layout:
    """The degrees a plan states, with Megatron's rank order: TP fastest, then CP, then DP,
    then PP; inside a stage the experts fold onto the same TP x CP x DP GPUs as ETP, EP, then
    EDP. A plan without `cp` has none (cp = 1)."""

    num_gpus: int
    tp: int
    pp: int
    dp: int
    ep: int
    etp: int
    micro_batch: int
    num_micro_batches: int
    recompute: str
    zero: int
    sequence_parallel: bool
    stage_layers: tuple[tuple[int, int], ...]
    virtual_stages: int = 1  # interleaved 1F1B: model chunks per pipeline stage
    recompute_modules: tuple[str, ...] = ()  # selective: Megatron-Core's modules
    cp: int = 1  # context parallelism: each sequence split over cp ranks [cp-attention]
    cp_comm: str = "p2p"
    a2a_overlap: bool = False  # combined 1F1B [a2a-overlap]
    moe_dispatcher: str = "alltoall"  # or "deepep" [deepep]
    a2a_fp8: bool = False
    a2a_node_limit: int = 0
    moe_capacity_factor: float = 0.0  # [capacity] 0: dropless
    moe_pad_to_capacity: bool = False
    moe_token_drop_policy: str = "probs"
    pipeline_schedule: str = "1f1b"  # or "dualpipe", "dualpipev" [dualpipe]

    @staticmethod
    def from_strategy(s: dict) -> Layout:
        mods = tuple(s.get("recompute_modules") or (
            ("core_attn",) if s["recompute"] == "selective" else ()))
        return Layout(int(s["num_gpus"]), int(s["tp"]), int(s["pp"]), int(s["dp"]),
                      int(s["ep"]), int(s["etp"]), int(s["micro_batch"]),
                      int(s["num_micro_batches"]), s["recompute"], int(s["zero"]),
                      bool(s["sequence_parallel"]),
                      tuple((int(a), int(b)) for a, b in s["stage_layers"]),
                      int(s.get("virtual_stages", 1)), mods, int(s.get("cp", 1)),
                      str(s.get("cp_comm", "p2p")), bool(s.get("a2a_overlap", False)),
                      str(s.get("moe_dispatcher", "alltoall")), bool(s.get("a2a_fp8", False)),
                      int(s.get("a2a_node_limit", 0)),
                      float(s.get("moe_capacity_factor", 0.0)),
                      bool(s.get("moe_pad_to_capacity", False)),
                      str(s.get("moe_token_drop_policy", "probs")),
                      str(s.get("pipeline_schedule", "1f1b")))

    @property
    def modules(self) -> tuple[str, ...]:
        """The modules selective recompute reruns (none under the other modes)."""
        return self.recompute_modules if self.recompute == "selective" else ()

    @property
    def width(self) -> int:
        return self.tp * self.cp * self.dp

    @property
    def dp_cp(self) -> int:
        """The gradient group (and ZeRO's shards): DP x CP GPUs hold the same weights."""
        return self.dp * self.cp

    @property
    def edp(self) -> int:
        return self.width // (self.ep * self.etp)

    def coords(self, gpu: int) -> dict[str, int]:
        local = gpu % self.width
        c = {"stage": gpu // self.width, "tp_rank": local % self.tp,
             "dp_rank": local // (self.tp * self.cp), "etp_rank": local % self.etp,
             "ep_rank": (local // self.etp) % self.ep,
             "edp_rank": local // (self.etp * self.ep)}
        if self.cp > 1:
            c["cp_rank"] = local // self.tp % self.cp
        return c

    def groups(self, kind: str) -> list[list[int]]:
        """Every group of one kind ("tp", "cp", "dp", "ep", "edp"), as GPU ids; "dp" is the
        gradient group, DP x CP GPUs."""
        out: dict[tuple, list[int]] = {}
        for g in range(self.num_gpus):
            c = self.coords(g)
            cp = c.get("cp_rank", 0)
            key = {"tp": (c["stage"], cp, c["dp_rank"]),
                   "cp": (c["stage"], c["tp_rank"], c["dp_rank"]),
                   "dp": (c["stage"], c["tp_rank"]),
                   "ep": (c["stage"], c["edp_rank"], c["etp_rank"]),
                   "edp": (c["stage"], c["ep_rank"], c["etp_rank"])}[kind]
            out.setdefault(key, []).append(g)
        return list(out.values())


def experts_in_tp_group(w: Workload, lay: Layout) -> bool:
    """[serving-moe] Serving without sequence parallelism, a TP group that holds whole EP x ETP
    groups runs its experts on the tokens every rank already has: no all-to-all, no buffers."""
    return (w.kind != "training" and not lay.sequence_parallel and lay.ep * lay.etp > 1
            and lay.tp % (lay.ep * lay.etp) == 0)


def gemm_dtype(m: ModelSpec, w: Workload | None) -> str:
    """[roofline, metrics] The precision the blocks' linear layers run at: the workload's
    `precision`, else the checkpoint's `weight_dtype` (fp8, nvfp4 serving), else the model dtype.
    MFU and HFU are taken against this precision's peak."""
    return (w.precision if w is not None else None) or m.weight_dtype or m.dtype


def tokens_per_micro_batch(w: Workload, lay: Layout) -> int:
    """On one GPU: a CP rank holds 1 / cp of each sequence."""
    return lay.micro_batch * w.tokens_per_sample // lay.cp


def samples_per_replica(w: Workload, lay: Layout) -> int:
    return -(-w.batch // lay.dp)


# --------------------------------------------------------------------------- memory
def _act(c: Component, m: ModelSpec, T: float, lay: Layout, imbalance: float,
         rerun: Rerun | None = None, fp8: tuple[str, bool] | None = None) -> float:
    """Saved activations of one component per micro-batch on one GPU (Korthikanti sec. 4,
    per component): TP splits the sharded part, sequence parallelism the replicated part;
    an expert keeps what the tokens routed to its EP rank (the busiest, by `imbalance`) need.
    `rerun`: what selective recompute does not keep; `fp8`: (recipe, flash attention) of an
    fp8 training run, whose fp8 GEMM inputs are kept at 1 byte + scales [fp8-activations]."""
    sp = lay.tp if lay.sequence_parallel else 1
    r = rerun or Rerun()
    sh, rep = c.act_bytes_sharded - r.drop_sharded, c.act_bytes_replicated - r.drop_replicated
    if fp8 is not None:  # the modules matter only to what a selective layer keeps
        sh, rep = fp8_kept(c, m.dtype_bytes, sh, rep, r, fp8,
                           lay.modules if rerun is not None else ())
    if c.is_expert:
        return T * m.top_k / lay.tp * imbalance * sh
    if c.role == "replicated":
        return T / sp * (sh + rep)
    return T * sh / lay.tp + T * rep / sp


def layer_activations(m: ModelSpec, w: Workload, lay: Layout, layer: int, imbalance: float,
                      flash: bool, recipe: str | None = None) -> tuple[float, float]:
    """(bytes saved under the plan's recompute mode, bytes saved with none) per micro-batch;
    selective recompute keeps what its modules do not drop [recompute-modules]; `recipe`:
    the fp8 recipe a training run uses (its GEMM inputs kept in fp8) [fp8-activations]."""
    T = tokens_per_micro_batch(w, lay)
    comps = layer_components(m, layer, w.context_len, w.causal, flash)
    fp8 = (recipe, flash) if recipe and w.kind == "training" else None
    full = sum(_act(c, m, T, lay, imbalance, None, fp8) for c in comps)
    if lay.recompute == "full":  # only the layer input is kept
        sp = lay.tp if lay.sequence_parallel else 1
        return T * m.hidden * m.dtype_bytes / sp, full
    if lay.recompute == "selective":
        reruns = module_reruns(m, comps, lay.modules, flash, w.context_len)
        return sum(_act(c, m, T, lay, imbalance, r, fp8)
                   for c, r in zip(comps, reruns, strict=True)), full
    return full, full


def edge_activations(m: ModelSpec, w: Workload, lay: Layout) -> tuple[float, float]:
    """(embedding, final norm + LM head) activations per micro-batch; none when serving."""
    if w.kind != "training":
        return 0.0, 0.0
    T = tokens_per_micro_batch(w, lay)
    return (sum(_act(c, m, T, lay, 1.0) for c in embedding_components(m)),
            sum(_act(c, m, T, lay, 1.0) for c in head_components(m)))


@dataclass(frozen=True)
class StageParams:
    dense: float  # non-expert parameters one GPU holds (TP-split ones divided)
    replicated: float  # of those, the ones every TP rank holds whole (TP > 1 only)
    expert: float  # expert parameters one GPU holds
    linear: float = 0.0  # of `dense`, the blocks' linear layers (stored in weight_dtype)


def stage_params(m: ModelSpec, lay: Layout, stage: int,
                 own_experts: dict[int, int], training: bool = False) -> StageParams:
    """Parameters on one GPU of `stage`; `own_experts[layer]` is how many experts (replicas
    included) this GPU's EP rank holds in that MoE layer."""
    first, last = lay.stage_layers[stage]
    dense = repl = expert = linear = 0.0
    for layer in range(first, last + 1):
        for c in layer_components(m, layer, 1.0):
            if c.is_expert:
                expert += own_experts.get(layer, m.experts) * c.params / lay.etp
            elif c.role == "replicated":
                dense += c.params
                repl += c.params if lay.tp > 1 else 0.0
            else:
                dense += c.params / lay.tp
                linear += c.params / lay.tp if c.role in ("column", "row") else 0.0
    edges = (embedding_components(m) if stage == 0 else []) + (
        head_components(m) if stage == lay.pp - 1 else [])
    for c in edges:
        dense += c.params if c.role == "replicated" else c.params / lay.tp
        repl += c.params if c.role == "replicated" and lay.tp > 1 else 0.0
    if m.tie_embeddings and lay.pp == 1:  # one table serves as embedding and LM head
        dense -= m.vocab * m.hidden / lay.tp
    n = mtp_count(m, training, stage, lay.pp)  # [mtp] on the last stage
    if n:
        own = own_experts.get(mtp_layer_index(m), m.experts)
        d, r, e, li = mtp_params(m, lay.tp, lay.etp, own)
        dense, repl, expert, linear = dense + n * d, repl + n * r, expert + n * e, linear + n * li
    return StageParams(dense, repl, expert, linear)


def kv_bytes_per_token_layer(m: ModelSpec, tp: int) -> float:
    """KV cache per token per layer on one GPU: GQA heads split over TP (one copy per rank
    once TP exceeds them); MLA's compressed latent and rope key on every rank."""
    if m.mla is not None:
        return (m.mla.kv_lora_rank + m.mla.qk_rope_head_dim) * m.dtype_bytes
    return 2 * max(m.kv_heads / tp, 1.0) * m.head_dim * m.dtype_bytes


def expected_memory(m: ModelSpec, hw: HardwareSpec, w: Workload, lay: Layout, stage: int,
                    own_experts: dict[int, int], imbalance: dict[int, float],
                    flash: bool = True, sent: float = 1.0) -> dict[str, float]:
    """One GPU's memory by term, keyed as in the plan's `gpus[].memory` [memory-training,
    memory]. Transient terms (one layer's activations, all-to-all buffers) are the largest
    over the whole model, as docs/cost-model.md states."""
    b = m.dtype_bytes
    first, last = lay.stage_layers[stage]
    par = stage_params(m, lay, stage, own_experts, w.kind == "training")
    other = mirror_stage(lay, stage) if w.kind == "training" else None
    if other is not None:  # [dualpipe] the rank also holds a copy of the mirror stage
        o = stage_params(m, lay, other, own_experts, True)
        par = StageParams(par.dense + o.dense, par.replicated + o.replicated,
                          par.expert + o.expert, par.linear + o.linear)
    acts = {layer: layer_activations(m, w, lay, layer, imbalance.get(layer, 1.0), flash,
                                     fp8_recipe(hw, w)) for layer in range(m.layers)}
    emb, head = edge_activations(m, w, lay)
    peak = max([none for _, none in acts.values()] + [emb, head])
    n_mtp = max(mtp_count(m, w.kind == "training", x, lay.pp)  # [mtp] layer + extra parts
                for x in (stage, lay.pp - 1 if other is not None else stage))
    extra = sum(_act(c, m, tokens_per_micro_batch(w, lay), lay, 1.0)
                for c in mtp_extra_components(m)) if n_mtp else 0.0
    mtp_kept, mtp_none = (n_mtp * (x + extra) for x in acts[mtp_layer_index(m)])
    moe = any(m.is_moe_layer(x) for x in range(m.layers)) and not experts_in_tp_group(w, lay)
    T = tokens_per_micro_batch(w, lay)
    out = dict.fromkeys(("weights_bytes", "gradients_bytes", "optimizer_bytes",
                         "activations_bytes", "activations_no_recompute_bytes",
                         "kv_cache_bytes", "tp_overhead_bytes", "fp8_weights_bytes"), 0.0)
    out["workspace_bytes"] = (2 * T / lay.tp * m.top_k * m.hidden * wire_bytes(m, lay.a2a_fp8)
                              * sent if moe else 0.0)  # send + receive; fp8 [deepep];
    # `sent`: the fullest MoE layer's rows sent per routed copy under a capacity [capacity]
    out["reserved_bytes"] = hw.reserved_bytes
    if w.kind == "training":
        def shard(level: int) -> tuple[int, int]:
            return (lay.dp_cp, lay.edp) if lay.zero >= level else (1, 1)

        for key, per_param, level in (("weights_bytes", b, 3),
                                      ("gradients_bytes", w.grad_bytes, 2),
                                      ("optimizer_bytes", w.optimizer_bytes, 1)):
            d, e = shard(level)
            out[key] = per_param * (par.dense / d + par.expert / e)
            out["tp_overhead_bytes"] += per_param * par.replicated / d
        k = in_flight(lay, stage)
        held = [stage] if other is None else [stage, other]  # [dualpipe] the mean of both
        for i, key in enumerate(("activations_bytes", "activations_no_recompute_bytes")):
            for st in held:
                a, z = lay.stage_layers[st]
                edges = (emb if st == 0 else 0.0) + (head if st == lay.pp - 1 else 0.0)
                mtp = (mtp_kept, mtp_none)[i] if mtp_count(m, True, st, lay.pp) else 0.0
                out[key] += k * (sum(acts[x][i] for x in range(a, z + 1)) + edges + mtp) \
                    / len(held)
        if lay.recompute == "full":  # one layer's activations live while it is recomputed
            out["activations_bytes"] += peak
        elif lay.recompute == "selective":  # what one layer's modules dropped, live again
            out["activations_bytes"] += max(none - kept for kept, none in acts.values())
        d, e = shard(3)  # [fp8-weights] ZeRO-3 shards the fp8 copies as the weights
        out["fp8_weights_bytes"] = copy_bytes_per_param(hw, w) * (par.linear / d + par.expert / e)
    else:  # the blocks' linear layers in the checkpoint's weight_dtype, experts in theirs
        out["weights_bytes"] = (b * (par.dense - par.linear) + m.linear_bytes * par.linear
                                + expert_weight_bytes(m) * par.expert)  # [mxfp4]
        out["tp_overhead_bytes"] = b * par.replicated
        out["kv_cache_bytes"] = (samples_per_replica(w, lay) * kv_tokens(m, first, last, w.kv_len)
                                 * kv_bytes_per_token_layer(m, lay.tp))  # [attention-window]
        out["activations_bytes"] = out["activations_no_recompute_bytes"] = peak
    out["total_bytes"] = sum(out[k] for k in (
        "weights_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes",
        "kv_cache_bytes", "workspace_bytes", "reserved_bytes", "fp8_weights_bytes"))
    return out


def static_bytes_lower_bound(m: ModelSpec, w: Workload, num_gpus: int) -> float:
    """Per-GPU bytes no layout can go below: every parameter's weights (and, for training,
    gradients and optimizer states) stored once, spread evenly over all GPUs."""
    from ..model.components import param_count, weight_bytes

    states = w.grad_bytes + w.optimizer_bytes if w.kind == "training" else 0
    return (weight_bytes(m) + param_count(m)["total"] * states) / num_gpus


# --------------------------------------------------------------------------- communication
@dataclass(frozen=True)
class Collective:
    collective: str
    group_size: int
    bytes_per_call: float
    calls_per_step: int
    min_time_per_call_s: float  # on the nominal link, no latency: nothing can be faster


def expected_collectives(m: ModelSpec, hw: HardwareSpec, w: Workload, lay: Layout,
                         fullest: dict[int, int] | None = None, zero3_mode: str = "prefetch",
                         sent: dict[int, float] | None = None,
                         ) -> dict[tuple[str, int, str], Collective]:
    """The collectives of each stage, keyed (group, stage, direction or part) [tp-comm,
    ep-comm, p2p, dp-comm]. Calls count forward, backward and the recompute forward.
    `fullest[layer]`: expert copies on the fullest EP rank (what ZeRO-3 gathers);
    `sent[layer]`: rows a capacity leaves to send per routed copy (the stage's fullest MoE
    layer's sets the all-to-all's size) [capacity]."""
    sent = sent or {}
    training = w.kind == "training"
    b, h = m.dtype_bytes, m.hidden
    T = tokens_per_micro_batch(w, lay)
    passes = 1 + (1 if training else 0) + (1 if lay.recompute == "full" else 0)
    out: dict[tuple[str, int, str], Collective] = {}
    for k, (first, last) in enumerate(lay.stage_layers):
        mtp = [mtp_layer_index(m)] * mtp_count(m, training, k, lay.pp)  # [mtp] as layers
        runs = list(range(first, last + 1)) + mtp
        n = len(runs)
        n_moe = sum(m.is_moe_layer(x) for x in runs)
        # a checkpointed MLP / MoE layer reruns its block's TP collective and all-to-alls
        again = [block_reruns(m, x, lay.modules) if training else (0, 0) for x in runs]
        if lay.tp > 1:
            S = T * h * b
            t = lay.tp
            bw = _link_bw(hw, lay.groups("tp"))
            out[("tp", k, "")] = Collective(
                "reduce_scatter+all_gather" if lay.sequence_parallel else "all_reduce", t, S,
                (2 * passes * n + sum(a[0] for a in again)) * lay.num_micro_batches,
                2 * (t - 1) / t * S / bw)
            # [tp-comm] the vocab-parallel embedding and the loss: one all-reduce per pass
            # (serving computes logits for each sequence's last position only)
            edges = (["embedding"] if k == 0 else []) + (["lm_head"] if k == lay.pp - 1
                                                         else []) + ["mtp"][:len(mtp)]
            for part in edges:
                Se = S if training or part == "embedding" else lay.micro_batch * h * b
                out[("tp", k, part)] = Collective(
                    "all_reduce", t, Se, lay.num_micro_batches * (2 if training else 1),
                    2 * (t - 1) / t * Se / bw)
        if lay.cp > 1:  # [cp-attention] the KV exchange of every layer and pass
            out[("cp", k, "")] = Collective(*cp_collective(m, hw, w, lay, n))
        if n_moe and (lay.ep > 1 or lay.etp > 1) and not experts_in_tp_group(w, lay):
            S = T / lay.tp * m.top_k * h * wire_bytes(m, lay.a2a_fp8) * max(
                sent.get(x, 1.0) for x in runs if m.is_moe_layer(x))
            e = lay.ep
            t_min = (e - 1) / e * S / _link_bw(hw, lay.groups("ep"), all_to_all=True)
            if lay.moe_dispatcher == "deepep":  # [deepep] a token once to each remote domain
                groups = lay.groups("ep")
                remote = remote_domains(m.experts, m.top_k, len(domain_members(hw, groups[0])),
                                        lay.a2a_node_limit, m.router_groups,
                                        m.router_group_topk)
                t_min = deepep_min_time(hw, groups, S, remote, m.top_k)
            out[("ep", k, "")] = Collective(
                "all_to_all", e, S,
                (2 * passes * n_moe + sum(a[1] for a in again)) * lay.num_micro_batches, t_min)
        if lay.pp > 1:
            S = T * h * b / lay.tp
            bw = max(hw.intra.bytes_per_s, hw.inter.bytes_per_s)
            v = lay.virtual_stages  # interleaved: a send per chunk boundary and micro-batch
            sends_f = v if k < lay.pp - 1 else v - 1  # the last chunk has no next one
            sends_b = v if k > 0 else v - 1
            if lay.pipeline_schedule == "dualpipev":  # [dualpipe] to both neighbours
                sends_f = sends_b = (k < lay.pp - 1) + (k > 0)
            if sends_f:
                out[("pp", k, "forward")] = Collective(
                    "send_recv", 2, S, lay.num_micro_batches * sends_f, S / bw)
            if training and sends_b:
                out[("pp", k, "backward")] = Collective(
                    "send_recv", 2, S, lay.num_micro_batches * sends_b, S / bw)
        if training and lay.zero < 3 and (lay.dp_cp > 1 or (m.is_moe and lay.edp > 1)):
            params = stage_params(m, lay, k, {}, training).dense
            if mirror_stage(lay, k) is not None:  # [dualpipe] both copies' gradients
                params += stage_params(m, lay, mirror_stage(lay, k), {}, training).dense
            S = params * w.grad_bytes
            d = lay.dp_cp
            bw = _link_bw(hw, lay.groups("dp"))
            if lay.zero >= 1:  # reduce-scatter the gradients, all-gather the new weights
                t_min = (d - 1) / d * (S + params * b) / bw
            else:
                t_min = 2 * (d - 1) / d * S / bw
            out[("dp", k, "")] = Collective(
                "reduce_scatter+all_gather" if lay.zero >= 1 else "all_reduce", d, S, 1, t_min)
        if training and lay.zero >= 3:  # [fsdp] per-unit gathers and reduce-scatters
            par = stage_params(m, lay, k, fullest or {}, training)
            out.update(zero3.collectives(m, hw, w, lay, k, par.dense, par.expert,
                                         zero3_mode, Collective))
    return out
