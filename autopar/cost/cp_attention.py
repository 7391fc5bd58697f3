"""Context parallelism's attention exchange [cp-attention].

Megatron-Core's `--context-parallel-size cp` splits each sequence over cp ranks (two chunks
per rank, mirrored, so that causal attention costs every rank the same); every layer but
attention is token-parallel, so a rank runs T / cp tokens through it. Attention needs the
keys and values of the whole sequence, exchanged over the CP group as `--cp-comm-type` says:

- `p2p` (ring attention): cp - 1 steps; in each a rank computes the attention of its queries
  against the KV chunk it holds while sending that chunk on to the next rank and receiving
  the previous rank's. A transfer hides behind the step's attention block (1 / cp of the
  rank's attention), so only what exceeds it waits. The backward sends the KV chunk and its
  gradient each step, behind 1 / cp of the attention backward.
- `all_gather`: the KV of the whole sequence gathered before the kernel (and again before
  the backward, whose KV gradients are reduce-scattered); the step waits for all of it.
- `a2a` (DeepSpeed-Ulysses): Q, K and V re-split from tokens to heads by an all-to-all before
  the kernel and the output back after it (gradients the same way in the backward); waited
  for. Needs the TP share of the heads to split over CP.

Selective and full recompute both run the attention forward again, its exchange included.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..spec import ModelSpec
from . import comm


@dataclass(frozen=True)
class CPTerms:
    """One layer's CP exchange per micro-batch: exposed forward and backward (recompute
    included), their time on the link and the bytes of one call."""

    fwd: float = 0.0
    bwd: float = 0.0
    link: float = 0.0  # every pass's exchange on the link, hidden or not
    bytes_per_call: float = 0.0


NO_CP = CPTerms()


def kv_bytes_per_token(m: ModelSpec, tp: int) -> float:
    """Keys and values of one token on one GPU (its TP share of the heads): GQA's KV heads
    (whole once TP exceeds them); MLA's up-projected per-head keys (nope + rope part) and
    values, what Megatron's MLA hands the attention kernel and its CP exchange moves."""
    b = m.dtype_bytes
    if m.mla is not None:
        x = m.mla
        return m.heads / tp * (x.qk_nope_head_dim + x.qk_rope_head_dim + x.v_head_dim) * b
    return 2 * max(m.kv_heads / tp, 1.0) * m.head_dim * b


def q_o_bytes_per_token(m: ModelSpec, tp: int) -> tuple[float, float]:
    """The queries and the attention output of one token on one GPU (a2a moves them too)."""
    qk = m.mla.qk_nope_head_dim + m.mla.qk_rope_head_dim if m.mla else m.head_dim
    v = m.mla.v_head_dim if m.mla else m.head_dim
    return m.heads / tp * qk * m.dtype_bytes, m.heads / tp * v * m.dtype_bytes


def calls_per_layer(cp: int, cp_comm: str, recompute: str, training: bool) -> int:
    """Exchange calls one layer makes per micro-batch over all passes: p2p sends cp - 1 KV
    chunks forward and 2 (cp - 1) backward (KV and its gradient); all_gather gathers once
    forward, gathers and reduce-scatters backward; a2a moves Q, K, V and the output in one
    call per pass. A recompute forward repeats the forward's."""
    fwd, bwd = {"p2p": (cp - 1, 2 * (cp - 1)), "all_gather": (1, 2), "a2a": (1, 1)}[cp_comm]
    if not training:
        return fwd
    return fwd + bwd + (fwd if recompute in ("selective", "full") else 0)


def cp_terms(p, s, T: float, costs: list, groups: dict) -> CPTerms:
    """[cp-attention] The exchange of one layer on one GPU with T tokens (its chunks), behind
    the attention kernel (`costs`' "heads" component) as its comm type allows."""
    if s.cp == 1:
        return NO_CP
    m, g, eff, n = p.model, groups["cp"], p.calib, s.cp
    attn_f = sum(c.time_s for c in costs if c.role == "heads")
    attn_b = sum(c.bwd_s for c in costs if c.role == "heads")
    kv = T * kv_bytes_per_token(m, s.tp)
    again = p.training and s.recompute in ("selective", "full")
    if s.cp_comm == "p2p":  # a ring: the slowest neighbour pair's link sets each step
        link, name = (p.hw.intra, "intra") if g.name == "intra" else (p.hw.inter, "inter")
        one = comm.p2p(kv, link, name, eff)
        f_link, b_link = (n - 1) * one, 2 * (n - 1) * one
        f_exp = (n - 1) * max(0.0, one - attn_f / n)
        b_exp = (n - 1) * max(0.0, 2 * one - attn_b / n)
        nbytes = kv
    elif s.cp_comm == "all_gather":
        f_link = f_exp = comm.all_gather(kv * n, g, eff)
        b_link = b_exp = f_link + comm.reduce_scatter(kv * n, g, eff)
        nbytes = kv * n
    else:  # a2a: Q, K, V to heads before the kernel, the output back after it
        q, o = (T * x for x in q_o_bytes_per_token(m, s.tp))
        f_link = f_exp = (comm.all_to_all(kv + q, g, p.hw, eff)
                          + comm.all_to_all(o, g, p.hw, eff))
        b_link = b_exp = f_link
        nbytes = kv + q + o
    if not p.training:
        return CPTerms(f_exp, 0.0, f_link, nbytes)
    return CPTerms(f_exp, b_exp + (f_exp if again else 0.0),
                   f_link + b_link + (f_link if again else 0.0), nbytes)

