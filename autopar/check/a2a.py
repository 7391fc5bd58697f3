"""The expert all-to-all options of a plan's layout, recomputed for `autopar check` from
docs/cost-model.md [deepep, a2a-overlap] alone (not from `autopar.cost.a2a`): the bytes a
value takes on the wire, the remote NVLink domains a token reaches under DeepEP's
deduplicated dispatch, and the fastest such an all-to-all could run on nominal links."""

from __future__ import annotations

from math import comb

from ..spec import HardwareSpec, ModelSpec
from .links import domain_members, nvlink_bw

FP8_WIRE = 1 + 1 / 32  # e4m3 values with one scale byte per 32 (MXFP8)


def wire_bytes(m: ModelSpec, fp8: bool) -> float:
    """Mean bytes a hidden value takes over an EP call: fp8 dispatches (tokens out, output
    gradients out) and bf16 combines, as many of each."""
    return (FP8_WIRE + m.dtype_bytes) / 2 if fp8 else m.dtype_bytes


def remote_domains(experts: int, top_k: int, domains: int, limit: int, groups: int = 0,
                   group_topk: int = 0) -> float:
    """Expected other domains a token's top_k distinct experts sit in (uniform routing,
    experts even over the domains; node-limited routing picks `limit` domains first; else
    the model's group-limited routing, where its groups and the domains align)."""
    if domains <= 1:
        return 0.0
    if not limit and groups and group_topk < groups:
        hit = _group_hit(experts, top_k, domains, groups, group_topk)
        if hit is not None:
            return hit * (domains - 1)
    n = min(domains, limit) if limit else domains
    pool = experts * n / domains  # experts in the chosen domains
    other = pool - experts / domains
    if other != int(other) or pool != int(pool):  # uneven split: the product form
        none = 1.0
        for i in range(top_k):
            none *= max(0.0, (other - i) / (pool - i))
    else:
        none = comb(int(other), top_k) / comb(int(pool), top_k)
    return n * (1 - none) * (domains - 1) / domains


def _group_hit(experts: int, top_k: int, domains: int, groups: int, topk: int
               ) -> float | None:
    """One domain's chance of receiving the token: over the ways the token's `topk` groups
    fall (whole groups per domain, or each group split over domains), that some of its
    top_k picks among those groups' experts lands in the domain."""
    per_group = experts // groups
    chosen = topk * per_group  # experts the token picks among
    if groups % domains == 0:
        mine = groups // domains  # whole groups in a domain
        total = 0.0
        for j in range(1, min(mine, topk) + 1):  # j of the chosen groups are the domain's
            ways = comb(mine, j) * comb(groups - mine, topk - j) / comb(groups, topk)
            total += ways * (1 - comb(chosen - j * per_group, top_k) / comb(chosen, top_k))
        return total
    span = domains // groups  # domains one group's experts spread over
    if domains % groups or per_group % span:
        return None
    here = per_group // span
    return topk / groups * (1 - comb(chosen - here, top_k) / comb(chosen, top_k))


def deepep_min_time(hw: HardwareSpec, groups: list[list[int]], copies_bytes: float,
                    remote: float, top_k: int) -> float:
    """No DeepEP call beats its NIC part (the remote domains' share of the tokens) or its
    NVLink part (every copy but the entry GPU's), on the nominal links, no latency."""
    best = None
    for g in groups:
        per = domain_members(hw, g)
        if len(per) == 1:
            k = len(g)
            t = (k - 1) / k * copies_bytes / nvlink_bw(hw, k)
        else:
            k = min(per.values())
            t = max(copies_bytes / top_k * remote / hw.inter.bytes_per_s,
                    copies_bytes * (k - 1) / k / nvlink_bw(hw, max(k, 2)))
        best = t if best is None else min(best, t)
    return best or 0.0


def check_a2a(f, plan: dict, m: ModelSpec, hw: HardwareSpec, lay) -> None:
    """The layout's all-to-all options are ones Megatron-Core accepts (TransformerConfig:
    EP > 1, no full recompute, interleaving when PP > 1; DeepEP's options need DeepEP),
    and a DeepEP entry's remote domains per token follow from the routing."""
    if lay.a2a_overlap:
        if lay.ep == 1 or lay.recompute == "full" or (lay.pp > 1 and lay.virtual_stages == 1):
            f.error("strategy", "strategy.a2a_overlap", "combined 1F1B needs ep > 1, no full "
                    "recompute and interleaving when pp > 1", True,
                    f"ep={lay.ep} recompute={lay.recompute} pp={lay.pp} "
                    f"v={lay.virtual_stages}")
    if lay.moe_dispatcher not in ("alltoall", "deepep"):
        f.error("strategy", "strategy.moe_dispatcher", "alltoall or deepep",
                lay.moe_dispatcher, None)
    if (lay.a2a_fp8 or lay.a2a_node_limit) and lay.moe_dispatcher != "deepep":
        f.error("strategy", "strategy.a2a_fp8", "fp8 dispatch and node-limited routing are "
                "DeepEP's", lay.moe_dispatcher, "deepep")
    for i, c in enumerate(plan.get("communication") or []):
        if c.get("group") != "ep" or "remote_domains_per_token" not in c:
            continue
        groups = lay.groups("ep")
        want = remote_domains(m.experts, m.top_k, len(domain_members(hw, groups[0])),
                              lay.a2a_node_limit, m.router_groups, m.router_group_topk)
        if abs(c["remote_domains_per_token"] - want) > 1e-6 * max(1.0, want):
            f.error("communication", f"communication[{i}].remote_domains_per_token",
                    "expected remote NVLink domains a token reaches (uniform routing, "
                    "node limit)", c["remote_domains_per_token"], want)
