"""DeepSeek's EPLB (expert-parallelism load balancer), re-implemented step for step as a baseline.

Why: EPLB is what engines run online (SGLang, vLLM); autopar's placers are compared with it on
the same loads and under the same routing rule. Source: github.com/deepseek-ai/EPLB, eplb.py
(commit d52c72d), `rebalance_experts` for one layer; it is torch code and not on PyPI, so the
steps are ported to numpy here (ties: lowest index first; EPLB's torch sort leaves equal
loads in no set order):

1. hierarchical policy (when the expert groups divide over the nodes): pack the groups of
   experts onto nodes, the same number on each, heaviest group first into the lightest node
   (`balanced_packing`);
2. replicate inside each node: each redundant slot goes to the expert with the highest load
   per replica (`replicate_experts`);
3. pack each node's physical experts onto its GPUs, the same number on each, heaviest first
   into the lightest GPU with room (`balanced_packing` again).

The global policy is the same with one group on one node. Like EPLB it fills every slot and
does not stop two replicas of one expert landing on one GPU (the benchmark counts those).
EPLB requires equal nodes and experts divisible into the groups; otherwise it falls back to
global, as EPLB does when the groups do not divide over the nodes.
"""

from __future__ import annotations

import numpy as np

from .problem import PlacementProblem


def eplb(problem: PlacementProblem, groups: int | None) -> tuple[list[list[int]], str]:
    """EPLB's placement (experts per GPU) and the policy it ran: hierarchical over `groups`
    expert groups, or global (`groups` None, or a shape EPLB's hierarchical policy refuses)."""
    w = np.asarray(problem.loads, dtype=float)
    e, g = len(w), problem.num_gpus
    nodes = len(problem.node_sizes)
    per_gpu = problem.slot_cap
    policy = f"hierarchical, {groups} groups"
    if groups is None:
        groups, nodes, policy = 1, 1, "global"
    elif e % groups or groups % nodes or len(set(problem.node_sizes)) > 1:
        policy = f"global ({e} experts in {groups} groups do not divide over {nodes} equal nodes)"
        groups, nodes = 1, 1
    phy = _rebalance(w, g * per_gpu, groups, nodes, g)
    return [phy[k * per_gpu:(k + 1) * per_gpu].tolist() for k in range(g)], policy


def _rebalance(w: np.ndarray, num_phy: int, groups: int, nodes: int, gpus: int) -> np.ndarray:
    """`rebalance_experts_hierarchical` for one layer: physical slot -> logical expert, slots
    numbered GPU-major (slot s is on GPU s // (num_phy / gpus))."""
    e = len(w)
    size = e // groups
    # step 1: groups onto nodes; mlog = the experts renumbered node by node
    pack, rank = _balanced_packing(w.reshape(groups, size).sum(axis=1), nodes)
    per_node_groups = groups // nodes
    log2mlog = ((pack * per_node_groups + rank) * size)[:, None] + np.arange(size)[None, :]
    log2mlog = log2mlog.reshape(-1)
    mlog2log = np.empty(e, dtype=np.int64)
    mlog2log[log2mlog] = np.arange(e)
    # step 2: replicas inside each node
    e_node, phy_node = e // nodes, num_phy // nodes
    out = np.empty(num_phy, dtype=np.int64)
    for n in range(nodes):
        tokens = w[mlog2log[n * e_node:(n + 1) * e_node]]
        phy2mlog, cnt = _replicate(tokens, phy_node)
        # step 3: the node's physical experts onto its GPUs
        pack_g, rank_g = _balanced_packing(tokens[phy2mlog] / cnt[phy2mlog], gpus // nodes)
        slot = pack_g * (num_phy // gpus) + rank_g
        local = np.empty(phy_node, dtype=np.int64)
        local[slot] = phy2mlog
        out[n * phy_node:(n + 1) * phy_node] = mlog2log[local + n * e_node]
    return out


def _balanced_packing(weight: np.ndarray, packs: int) -> tuple[np.ndarray, np.ndarray]:
    """Items onto `packs` packs of equal count: heaviest first into the lightest pack with
    room (lowest index on ties). Returns each item's pack and its rank inside it."""
    n = len(weight)
    per = n // packs
    if per == 1:
        return np.arange(n), np.zeros(n, dtype=np.int64)
    pack = np.full(n, -1, dtype=np.int64)
    rank = np.full(n, -1, dtype=np.int64)
    load = [0.0] * packs
    items = [0] * packs
    for item in np.argsort(-weight, kind="stable"):
        k = min((i for i in range(packs) if items[i] < per), key=load.__getitem__)
        pack[item], rank[item] = k, items[k]
        load[k] += float(weight[item])
        items[k] += 1
    return pack, rank


def _replicate(weight: np.ndarray, num_phy: int) -> tuple[np.ndarray, np.ndarray]:
    """Physical expert -> logical one and the replica counts: every redundant slot goes to
    the expert with the highest load per replica."""
    phy2log = np.concatenate([np.arange(len(weight)), np.zeros(num_phy - len(weight), int)])
    cnt = np.ones(len(weight), dtype=np.int64)
    for i in range(len(weight), num_phy):
        hot = int(np.argmax(weight / cnt))
        phy2log[i] = hot
        cnt[hot] += 1
    return phy2log, cnt
