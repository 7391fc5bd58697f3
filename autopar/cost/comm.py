"""Alpha-beta collective times on the link a group spans (DESIGN sec. 4).

Bandwidths are per GPU per direction; `eff` is the achieved fraction of line rate (NCCL's bus
bandwidth over the link's nominal rate), taken from the calibration.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..spec import HardwareSpec, LinkSpec


@dataclass(frozen=True)
class GroupLink:
    """The links one communication group uses."""

    size: int
    nodes: int  # distinct NVLink domains the group spans (a domain is one node on HGX)
    link: LinkSpec  # the bottleneck link for ring collectives
    cross_fraction: float  # share of a member's peers in other domains (all-to-all)
    name: str  # "local" | "intra" (one NVLink domain) | "inter" (across domains, NICs)


def group_link(hw: HardwareSpec, gpus: list[int]) -> GroupLink:
    """The link a group's ring collectives run at. Inside one NVLink domain that is the intra
    link, even across the domain's nodes (NVL72 trays). A group spanning domains with g
    members in each runs g rings at once, each leaving its domain through its own member's
    NIC, so it moves g x the per-GPU NIC rate (capped by NVLink, which every ring also
    crosses; on a mesh, by the g - 1 links among the g: `HardwareSpec.intra_rate`)."""
    per = hw.gpus_per_node * hw.nodes_per_domain  # GPUs a domain holds: hw.domain_of
    members = Counter(map(per.__rfloordiv__, gpus))  # domain -> members in it
    n = len(gpus)
    if n == 1:
        return GroupLink(1, 1, hw.intra, 0.0, "local")
    cross = (n - members[hw.domain_of(gpus[0])]) / (n - 1)
    if len(members) == 1:
        return GroupLink(n, 1, LinkSpec(hw.intra_rate(n), hw.intra.latency_s), 0.0, "intra")
    per_domain = min(members.values())
    rate = min(per_domain * hw.inter.bytes_per_s,
               max(hw.intra_rate(per_domain), hw.inter.bytes_per_s))
    return GroupLink(n, len(members), LinkSpec(rate, hw.inter.latency_s), cross, "inter")


def _rate(g: GroupLink, eff, nbytes: float, op: str) -> tuple[float, float]:
    """(bus bandwidth, per-step latency) of a ring collective of `nbytes` on group g.

    `eff` is a Calibration (a measured bus-bandwidth table for the link wins; else the
    achieved fraction of line rate) or a plain {link: fraction} dict."""
    if hasattr(eff, "busbw"):
        measured = eff.busbw(g.name, g.size, nbytes, op)
        if measured:  # nccl-tests bus bandwidth already includes latency; never above the
            return min(measured, g.link.bytes_per_s), 0.0  # line rate (what check allows)
        return g.link.bytes_per_s * eff.link(g.name), g.link.latency_s
    return g.link.bytes_per_s * eff.get(g.name, 1.0), g.link.latency_s


def _link_eff(eff, name: str) -> float:
    return eff.link(name) if hasattr(eff, "link") else eff.get(name, 1.0)


def all_reduce(nbytes: float, g: GroupLink, eff) -> float:
    """Ring all-reduce: 2 (n-1)/n S / B + 2 (n-1) alpha."""
    n = g.size
    if n == 1:
        return 0.0
    bw, alpha = _rate(g, eff, nbytes, "all_reduce")
    return 2 * (n - 1) / n * nbytes / bw + 2 * (n - 1) * alpha


def reduce_scatter(nbytes: float, g: GroupLink, eff, op: str = "reduce_scatter") -> float:
    """Ring reduce-scatter (or all-gather) of an S-byte buffer: (n-1)/n S / B + (n-1) alpha."""
    n = g.size
    if n == 1:
        return 0.0
    bw, alpha = _rate(g, eff, nbytes, op)
    return (n - 1) / n * nbytes / bw + (n - 1) * alpha


def all_gather(nbytes: float, g: GroupLink, eff) -> float:
    """Ring all-gather into an S-byte buffer: the reduce-scatter's formula, its own table."""
    return reduce_scatter(nbytes, g, eff, "all_gather")


def all_reduce_one_shot(nbytes: float, g: GroupLink, eff) -> float:
    """One-shot all-reduce inside an NVLink island (vLLM / SGLang custom all-reduce, used for
    small messages): every member reads the n - 1 others' buffers directly and reduces
    locally, one flag exchange before and after: (n-1) S / B + 2 alpha. It beats the ring's
    2 (n-1) alpha at decode sizes [serving-allreduce]."""
    n = g.size
    if n == 1:
        return 0.0
    bw = g.link.bytes_per_s * _link_eff(eff, g.name)
    return (n - 1) * nbytes / bw + 2 * g.link.latency_s


def all_to_all(nbytes: float, g: GroupLink, hw: HardwareSpec, eff) -> float:
    """Each member sends nbytes spread evenly over the group; (n-1)/n of it leaves the GPU.

    The parts inside the member's NVLink domain and to other domains move concurrently on
    their own links, so the slower of the two sets the time; one latency per link class is
    paid (the sends are concurrent). On a mesh the intra part spreads over the links to the
    group's n / domains members of the domain (`HardwareSpec.intra_rate`).
    """
    n = g.size
    if n == 1:
        return 0.0
    remote = (n - 1) / n * nbytes
    nvlink = hw.intra_rate(max(n // max(g.nodes, 1), 2))
    measured = eff.busbw(g.name, n, nbytes, "alltoall") if hasattr(eff, "busbw") else None
    if measured:  # nccl-tests' alltoall bus bandwidth: (n-1)/n S / time, capped at the links
        return remote / min(measured, nvlink + hw.inter.bytes_per_s)
    inter = remote * g.cross_fraction
    intra = remote - inter
    t_intra = intra / (nvlink * _link_eff(eff, "intra")) if intra else 0.0
    t_inter = inter / (hw.inter.bytes_per_s * _link_eff(eff, "inter")) if inter else 0.0
    lat = hw.inter.latency_s if inter else hw.intra.latency_s
    return max(t_intra, t_inter) + lat


def p2p(nbytes: float, link: LinkSpec, name: str, eff) -> float:
    if nbytes < 0:
        return 0.0
    return nbytes / (link.bytes_per_s * _link_eff(eff, name)) + link.latency_s
