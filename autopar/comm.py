"""Alpha-beta collective times on the link a group spans (DESIGN sec. 4).

Bandwidths are per GPU per direction; `eff` is the achieved fraction of line rate (NCCL's bus
bandwidth over the link's nominal rate), taken from the calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

from .spec import HardwareSpec, LinkSpec


@dataclass(frozen=True)
class GroupLink:
    """The links one communication group uses."""

    size: int
    nodes: int  # distinct nodes the group spans
    link: LinkSpec  # the bottleneck link for ring collectives
    cross_fraction: float  # share of a member's peers on other nodes (all-to-all)
    name: str  # "local" | "intra" | "inter"


def group_link(hw: HardwareSpec, gpus: list[int]) -> GroupLink:
    nodes = {hw.node_of(g) for g in gpus}
    n = len(gpus)
    if n == 1:
        return GroupLink(1, 1, hw.intra, 0.0, "local")
    me = hw.node_of(gpus[0])
    cross = sum(hw.node_of(g) != me for g in gpus) / (n - 1)
    if len(nodes) == 1:
        return GroupLink(n, 1, hw.intra, 0.0, "intra")
    return GroupLink(n, len(nodes), hw.inter, cross, "inter")


def _bw(g: GroupLink, eff: dict[str, float]) -> float:
    return g.link.bytes_per_s * eff.get(g.name, 1.0)


def all_reduce(nbytes: float, g: GroupLink, eff: dict[str, float]) -> float:
    """Ring all-reduce: 2 (n-1)/n S / B + 2 (n-1) alpha."""
    n = g.size
    if n == 1:
        return 0.0
    return 2 * (n - 1) / n * nbytes / _bw(g, eff) + 2 * (n - 1) * g.link.latency_s


def reduce_scatter(nbytes: float, g: GroupLink, eff: dict[str, float]) -> float:
    """Ring reduce-scatter (or all-gather) of an S-byte buffer: (n-1)/n S / B + (n-1) alpha."""
    n = g.size
    if n == 1:
        return 0.0
    return (n - 1) / n * nbytes / _bw(g, eff) + (n - 1) * g.link.latency_s


all_gather = reduce_scatter


def all_to_all(nbytes: float, g: GroupLink, hw: HardwareSpec, eff: dict[str, float]) -> float:
    """Each member sends nbytes spread evenly over the group; (n-1)/n of it leaves the GPU.

    The intra-node and inter-node parts move concurrently on their own links, so the slower
    of the two sets the time; one latency per link class is paid (the sends are concurrent).
    """
    n = g.size
    if n == 1:
        return 0.0
    remote = (n - 1) / n * nbytes
    inter = remote * g.cross_fraction
    intra = remote - inter
    t_intra = intra / (hw.intra.bytes_per_s * eff.get("intra", 1.0)) if intra else 0.0
    t_inter = inter / (hw.inter.bytes_per_s * eff.get("inter", 1.0)) if inter else 0.0
    lat = hw.inter.latency_s if inter else hw.intra.latency_s
    return max(t_intra, t_inter) + lat


def p2p(nbytes: float, link: LinkSpec, name: str, eff: dict[str, float]) -> float:
    if nbytes < 0:
        return 0.0
    return nbytes / (link.bytes_per_s * eff.get(name, 1.0)) + link.latency_s
