"""Context parallelism's attention exchange recomputed for `autopar check` [cp-attention].

Written from docs/cost-model.md, not from `autopar.cost.cp_attention`: a CP rank runs T / cp
tokens of each micro-batch; ring attention (`p2p`) sends cp - 1 chunks of its keys and
values forward and 2 (cp - 1) backward (keys and values, then their gradients); `all_gather`
gathers the cp chunks once forward and gathers and reduce-scatters them backward; `a2a`
(Ulysses) moves the queries, keys, values and output in one call per pass. Selective and
full recompute repeat the forward's calls.
"""

from __future__ import annotations

from ..spec import HardwareSpec, ModelSpec, Workload
from .links import link_bw

KIND = {"p2p": "send_recv", "all_gather": "all_gather+reduce_scatter", "a2a": "all_to_all"}


def kv_bytes(m: ModelSpec, tp: int) -> float:
    """K and V of one token on one GPU: the TP share of the KV heads (a whole head once TP
    exceeds them); MLA: the up-projected keys (nope + rope) and values of every head."""
    if m.mla is not None:
        x = m.mla
        per_head = x.qk_nope_head_dim + x.qk_rope_head_dim + x.v_head_dim
        return m.heads * per_head * m.dtype_bytes / tp
    return 2 * m.head_dim * m.dtype_bytes * max(m.kv_heads / tp, 1.0)


def q_o_bytes(m: ModelSpec, tp: int) -> float:
    """The queries and the attention output of one token on one GPU."""
    if m.mla is not None:
        x = m.mla
        per_head = x.qk_nope_head_dim + x.qk_rope_head_dim + x.v_head_dim
    else:
        per_head = 2 * m.head_dim
    return m.heads * per_head * m.dtype_bytes / tp


def cp_collective(m: ModelSpec, hw: HardwareSpec, w: Workload, lay,
                  n_layers: int) -> tuple[str, int, float, int, float]:
    """(collective, group size, bytes per call, calls per step, least time per call) of a
    stage of `n_layers` layers: the fields of `recompute.Collective`."""
    cp, kind = lay.cp, lay.cp_comm
    T = lay.micro_batch * w.tokens_per_sample / cp
    kv = T * kv_bytes(m, lay.tp)
    nbytes = {"p2p": kv, "all_gather": kv * cp, "a2a": kv + T * q_o_bytes(m, lay.tp)}[kind]
    fwd, bwd = {"p2p": (cp - 1, 2 * (cp - 1)), "all_gather": (1, 2), "a2a": (1, 1)}[kind]
    per_mb = fwd
    if w.kind == "training":
        per_mb += bwd + (fwd if lay.recompute in ("selective", "full") else 0)
    groups = lay.groups("cp")
    bw = link_bw(hw, groups, all_to_all=kind == "a2a")
    least = nbytes / bw if kind == "p2p" else (cp - 1) / cp * nbytes / bw
    return KIND[kind], cp, nbytes, per_mb * n_layers * lay.num_micro_batches, least
