"""Which link each group of a plan's layout runs on, recomputed from the hardware alone.

A group inside one NVLink domain (`nodes_per_domain` whole nodes of ids `id //
gpus_per_node`: one node on HGX, 18 trays of 4 on a GB200 NVL72) talks over NVLink, even
across the domain's nodes; a group spanning domains leaves each through its members' NICs.
Written from docs/cost-model.md [dp-comm], not from `autopar.cost.comm`.
"""

from __future__ import annotations

from ..spec import HardwareSpec
from .finding import Findings


def domain_members(hw: HardwareSpec, group: list[int]) -> dict[int, int]:
    """NVLink domain -> the members of `group` in it."""
    per: dict[int, int] = {}
    for x in group:
        d = x // hw.gpus_per_node // hw.nodes_per_domain
        per[d] = per.get(d, 0) + 1
    return per


def nvlink_bw(hw: HardwareSpec, k: int) -> float:
    """What k members of one domain can move per GPU: the switch port, or on a full mesh
    the k - 1 per-peer links driven at once."""
    if hw.intra_topology == "mesh":
        return (k - 1) * hw.intra.bytes_per_s
    return hw.intra.bytes_per_s


def link_bw(hw: HardwareSpec, groups: list[list[int]], all_to_all: bool = False) -> float:
    """The fastest rate any group of this kind could use [dp-comm]: NVLink inside a domain.
    Across domains a ring collective runs one ring per member in each domain, each out of
    its own member's NIC: `min(g x NIC, max(NVLink, NIC))` per GPU, `g` the fewest members
    the group has in any domain (one per domain: the NIC). An all-to-all sends over the NIC
    and NVLink at once, so NIC + NVLink bounds it."""
    best = 0.0
    for g in groups:
        per = domain_members(hw, g)
        k = min(per.values())
        if len(per) == 1:
            bw = nvlink_bw(hw, k)
        elif all_to_all:
            bw = hw.inter.bytes_per_s + nvlink_bw(hw, max(k, 2))
        else:
            bw = min(k * hw.inter.bytes_per_s, max(nvlink_bw(hw, k), hw.inter.bytes_per_s))
        best = max(best, bw)
    return best or hw.intra.bytes_per_s


def link_names(hw: HardwareSpec, groups: list[list[int]]) -> set[str]:
    """The link names a plan may state for groups of one kind: "intra" when every group lies
    in one domain, "inter" when every group spans domains, either when the stages differ
    (the plan states the slowest stage's)."""
    return {"intra" if len(domain_members(hw, g)) == 1 else "inter" for g in groups
            if len(g) > 1} or {"local"}


def check_links(f: Findings, plan: dict, hw: HardwareSpec, lay) -> None:
    """Each collective's `link` is the one its group spans on this hardware's domains."""
    kinds = {"tp": "tp", "ep": "ep", "dp": "dp", "edp": "edp", "cp": "cp"}
    want = {k: link_names(hw, lay.groups(k)) for k in kinds}
    for i, c in enumerate(plan.get("communication") or []):
        kind = kinds.get(c.get("group"))
        if kind is None or "link" not in c:
            continue
        if c["link"] not in want[kind]:
            f.error("communication", f"communication[{i}].link",
                    f"the link a {kind} group spans (NVLink domains of "
                    f"{hw.nvlink_domain} GPUs)", c["link"], " or ".join(sorted(want[kind])))
