"""The expert all-to-all as engines run it: DeepEP's node-deduplicated dispatch with
node-limited routing and fp8 dispatch [deepep], and Megatron-Core's combined 1F1B, which
hides one micro-batch's all-to-all behind another's compute on SMs it shares [a2a-overlap].

Only reached when a layout sets one of these options (`Strategy.a2a_options`); the plain
all-to-all of `layer._collectives` is unchanged otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

from ..errors import InputError
from . import comm

FP8_DISPATCH_BYTES = 1 + 1 / 32  # e4m3 values + one scale byte per 32 (MXFP8; DeepSeek-V3's
# 1 x 128 tiles with fp32 scales are the same 1 + 4/128)
PRE_DISPATCH = ("expert_", "shared_")  # name prefixes of the MLP side of a MoE layer


@dataclass(frozen=True)
class EPPass:
    """One pass (forward or backward) of a MoE layer's expert communication on one GPU."""

    dispatch: float  # tokens to the experts (the forward dispatch, the backward of combine)
    combine: float  # results back (the forward combine, the backward of dispatch)
    dispatch_bytes: float  # per GPU, the copies one all-to-all sends (tokens x top_k)
    combine_bytes: float
    inter_bytes: float = 0.0  # [deepep] of the dispatch, what crosses NVLink domains

    @property
    def total(self) -> float:
        return self.dispatch + self.combine


def value_bytes(s, dtype_bytes: int) -> tuple[float, float]:
    """Bytes a hidden value takes on the wire: (dispatch direction, combine direction).
    fp8 dispatch quantizes the tokens (and, in the backward, the output gradients) sent
    to the experts; the combine and its gradient stay 16-bit (DeepSeek-V3 sec. 3.3.2)."""
    return (FP8_DISPATCH_BYTES if s.a2a_fp8 else dtype_bytes), dtype_bytes


def remote_nodes(experts: int, top_k: int, nodes: int, limit: int = 0, groups: int = 0,
                 group_topk: int = 0) -> float:
    """[deepep] Expected NVLink domains other than its own that one token's top_k copies
    reach, under uniform routing over `experts` spread evenly over `nodes` domains. With
    node-limited routing the router first picks `limit` domains, then top_k experts among
    theirs (Megatron's --moe-router-num-groups = domains, --moe-router-group-topk = limit).
    A domain of the n chosen misses all k picks among n x e experts with probability
    C((n-1) e, k) / C(n e, k); the token's own domain is among those reached with the same
    share as any other, so (N - 1) / N of the distinct domains are remote. Without a limit,
    the model's own group-limited routing (`groups`, `group_topk`) bounds it where groups
    and domains align (`grouped_reach`)."""
    if nodes <= 1:
        return 0.0
    if not limit and groups and group_topk < groups:
        reach = grouped_reach(experts, top_k, nodes, groups, group_topk)
        if reach is not None:
            return nodes * reach * (nodes - 1) / nodes
    n = min(nodes, limit) if limit else nodes
    per = experts / nodes
    miss = 1.0
    for i in range(top_k):
        miss *= max(0.0, ((n - 1) * per - i) / (n * per - i))
    return n * (1.0 - miss) * (nodes - 1) / nodes


def grouped_reach(experts: int, top_k: int, nodes: int, groups: int, group_topk: int
                  ) -> float | None:
    """[deepep] The chance one domain receives a token under group-limited routing: the
    token takes L = `group_topk` of the G contiguous groups (uniformly), then top_k of their
    L e experts (e = E / G). G a multiple of the N domains (g = G / N whole groups each): j
    of its groups are chosen with the hypergeometric chance C(g, j) C(G - g, L - j) / C(G, L)
    and some pick lands in them with 1 - C((L - j) e, k) / C(L e, k). N a multiple of G
    (a group spans r = N / G domains, e / r experts in each): L / G x (1 - C(L e - e / r, k)
    / C(L e, k)). Otherwise None (no alignment to exploit)."""
    e = experts // groups
    pool = comb(group_topk * e, top_k)
    if groups % nodes == 0:
        g = groups // nodes
        return sum(comb(g, j) * comb(groups - g, group_topk - j) / comb(groups, group_topk)
                   * (1 - comb((group_topk - j) * e, top_k) / pool)
                   for j in range(1, min(g, group_topk) + 1))
    if nodes % groups == 0 and e % (nodes // groups) == 0:
        per = e // (nodes // groups)
        return group_topk / groups * (1 - comb(group_topk * e - per, top_k) / pool)
    return None


def deepep_time(nbytes: float, remote: float, top_k: int, g: comm.GroupLink, hw,
                eff) -> float:
    """[deepep] One DeepEP all-to-all of `nbytes` (top_k copies of each token) per GPU: each
    token crosses to each remote domain once (`remote` of them, on the NIC to the GPU of the
    same local rank there), then fans out over NVLink to the experts' GPUs, so every copy
    but the one landing on the entry GPU crosses NVLink once. Both links run at once; the
    slower sets the time. Inside one domain it is the NVLink all-to-all."""
    if g.size == 1:
        return 0.0
    if g.nodes <= 1:
        return comm.all_to_all(nbytes, g, hw, eff)
    per_domain = max(g.size // g.nodes, 1)
    inter = nbytes / top_k * remote
    intra = nbytes * (per_domain - 1) / per_domain
    t_inter = inter / (hw.inter.bytes_per_s * comm._link_eff(eff, "inter"))
    nvlink = hw.intra_rate(max(per_domain, 2)) * comm._link_eff(eff, "intra")
    return max(t_inter, intra / nvlink if intra else 0.0) + hw.inter.latency_s


def ep_pass(p, s, T: float, moe, groups: dict) -> EPPass:
    """Dispatch and combine of one pass with the layout's options; expert-TP's all-gather
    goes with the dispatch and its reduce-scatter with the combine [ep-comm]."""
    m, eff = p.model, p.calib
    bd, bc = value_bytes(s, m.dtype_bytes)
    copies = T / s.tp * m.top_k * m.hidden
    sent = copies * getattr(moe, "mean_share", 1.0)  # [capacity] the rows a capacity leaves
    g = groups["ep"]
    inter = 0.0
    if s.moe_dispatcher == "deepep":
        remote = remote_nodes(m.experts, m.top_k, g.nodes, s.a2a_node_limit,
                              m.router_groups, m.router_group_topk)
        disp = deepep_time(copies * bd * moe.imbalance, remote, m.top_k, g, p.hw, eff)
        comb = deepep_time(copies * bc * moe.imbalance, remote, m.top_k, g, p.hw, eff)
        inter = copies / m.top_k * remote * bd
    else:
        if moe.cross_node_share is not None and g.size > 1:
            g = comm.GroupLink(g.size, g.nodes, g.link, moe.cross_node_share, g.name)
        disp = comm.all_to_all(copies * bd * moe.imbalance, g, p.hw, eff)
        comb = comm.all_to_all(copies * bc * moe.imbalance, g, p.hw, eff)
    if s.etp > 1:
        routed = copies * s.etp * moe.imbalance
        disp += comm.all_gather(routed * bd, groups["etp"], eff)
        comb += comm.reduce_scatter(routed * bc, groups["etp"], eff)
    return EPPass(disp, comb, sent * bd, sent * bc, inter * sent / copies)


def sm_share(p, s) -> float:
    """[a2a-overlap] The share of the GPU's SMs the overlapped communication kernels hold."""
    sms = p.hw.gpu.sms
    if sms is None:
        raise InputError("hardware", "gpu.sms", "unknown for this GPU; a2a_overlap and "
                         "dualpipe need the SM count (set gpu: {sms: N})")
    if s.a2a_sms >= sms:
        raise InputError("pins", "a2a_sms", f"{s.a2a_sms} SMs leave none of the GPU's "
                         f"{sms} for compute")
    return s.a2a_sms / sms


def window(comm_s: float, compute_s: float, share: float) -> float:
    """[a2a-overlap] Communication exposed beyond the compute it runs beside: while it runs
    the compute has 1 - share of the SMs, so the window takes max(comm, compute + share x
    comm) and the exposed part is max(comm - compute, share x comm)."""
    if comm_s <= 0:
        return 0.0
    return max(comm_s - compute_s, share * comm_s)


def overlapped(costs, ep: EPPass, share: float) -> tuple[float, float]:
    """[a2a-overlap] Exposed expert communication (forward, backward parts) of one MoE layer
    under combined 1F1B, where the forward of one micro-batch runs with the backward of
    another (Megatron's TransformerLayerSchedulePlan.run):

        comm:    combine_bwd    | dispatch_fwd -> dispatch_bwd | combine_fwd
        compute: pre_dispatch_f | mlp_bwd -> mlp_fwd           | pre_dispatch_bwd

    pre-dispatch is the attention block, the norms and the router; the MLP side the routed
    and shared experts. The backward of combine moves tokens to the experts (the dispatch
    direction), the backward of dispatch results back."""
    pre_f = sum(c.time_s for c in costs if not c.name.startswith(PRE_DISPATCH))
    pre_b = sum(c.bwd_s for c in costs if not c.name.startswith(PRE_DISPATCH))
    mlp_f = sum(c.time_s for c in costs if c.name.startswith(PRE_DISPATCH))
    mlp_b = sum(c.bwd_s for c in costs if c.name.startswith(PRE_DISPATCH))
    w1 = window(ep.dispatch, pre_f, share)  # the backward's combine-gradient
    w2 = window(ep.dispatch + ep.combine, mlp_b + mlp_f, share)
    w3 = window(ep.combine, pre_b, share)  # the forward's combine
    mid = ep.dispatch / ep.total if ep.total else 0.5  # the forward's dispatch share of w2
    return w3 + w2 * mid, w1 + w2 * (1 - mid)


def a2a_plan_fields(p, s, g: comm.GroupLink) -> dict:
    """The EP entry's record of how the all-to-all is sent: dispatcher, wire bytes a value in
    each direction and, for DeepEP across domains, the expected remote domains a token
    reaches and the dispatch bytes per call that cross them."""
    m = p.model
    bd, bc = value_bytes(s, m.dtype_bytes)
    out = {"dispatcher": s.moe_dispatcher, "dispatch_value_bytes": bd,
           "combine_value_bytes": bc, "overlap": "combined-1f1b" if s.a2a_overlap else "none"}
    if s.moe_dispatcher == "deepep":
        r = remote_nodes(m.experts, m.top_k, g.nodes, s.a2a_node_limit, m.router_groups,
                         m.router_group_topk)
        out["remote_domains_per_token"] = r
        out["node_limit"] = s.a2a_node_limit
    return out
