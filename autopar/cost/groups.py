"""Which link each parallel group of a layout spans (tp, cp, dp, ep, etp, edp; dp is the
gradient group, DP x CP GPUs): the slowest
stage's, cached on the geometry, since thousands of candidates share a few dozen."""

from __future__ import annotations

from functools import lru_cache

from ..spec import GPUSpec, HardwareSpec, LinkSpec
from . import comm
from .strategy import Strategy


def group_links(hw: HardwareSpec, s: Strategy) -> dict[str, comm.GroupLink]:
    """Links of each group kind; where stages differ (a stage spanning a domain boundary),
    the slowest stage's group is taken."""
    return _groups(hw.nodes, hw.gpus_per_node, hw.nodes_per_domain, hw.intra_topology,
                   hw.intra, hw.inter, s.num_gpus, s.tp, s.dp, s.pp, s.ep, s.etp, s.cp)


@lru_cache(maxsize=4096)
def _groups(nodes: int, gpn: int, per_domain: int, topology: str, intra: LinkSpec,
            inter: LinkSpec, num_gpus: int, tp: int, dp: int, pp: int, ep: int,
            etp: int, cp: int = 1) -> dict[str, comm.GroupLink]:
    s = Strategy(num_gpus, tp, pp, dp, ep, etp, cp=cp)
    hw = HardwareSpec("", GPUSpec("", 1.0, {}, 1.0), nodes, gpn, intra, inter,
                      nodes_per_domain=per_domain, intra_topology=topology)
    worst: dict[str, comm.GroupLink] = {}
    D, W = gpn * per_domain, s.stage_width  # every stage sits on the domains alike when
    alike = nodes % per_domain == 0 and (W % D == 0 or D % W == 0)  # they tile evenly
    for stage in range(1 if alike else pp):
        g0 = stage * s.stage_width
        for name, members in (("tp", s.tp_group(g0)), ("dp", s.dp_group(g0)),
                              ("ep", s.ep_group(g0)), ("etp", s.etp_group(g0)),
                              ("edp", s.edp_group(g0)), ("cp", s.cp_group(g0))):
            gl = comm.group_link(hw, members)
            cur = worst.get(name)
            if cur is None or (gl.link.bytes_per_s, -gl.cross_fraction) < (
                    cur.link.bytes_per_s, -cur.cross_fraction):
                worst[name] = gl
    return worst
