"""Which slice of the small model each GPU holds, its process groups, and where its
router sends each expert's tokens: all read from the Layout (the plan's placement). Needs
torch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layers import Routing, rows_index
from .shrink import Gpu, Layout

Index = tuple[str, int, torch.Tensor | None]  # (full tensor, dim, indices along it; None: all)


def _rng(span: tuple[int, int], unit: int = 1) -> torch.Tensor:
    return torch.arange(span[0] * unit, span[1] * unit, dtype=torch.int64)


def local_index(lay: Layout, g: Gpu) -> dict[str, Index]:
    """Every tensor GPU `g` holds: the full tensor it is cut from and how."""
    s = lay.small
    hd, up = s.head_dim, 2 if s.gated else 1
    out: dict[str, Index] = {}
    first, last = g.stage == 0, g.stage == lay.pp - 1
    if first:
        out["embedding"] = ("embedding", 0, _rng(g.spans.get("embedding", (0, s.vocab))))
    if last:
        out["final_norm"] = ("final_norm", 0, None)
        span = g.spans.get("lm_head", g.spans.get("embedding", (0, s.vocab)))
        name = "embedding" if s.tie else "lm_head"
        out[name] = (name, 0, _rng(span))
    for L in lay.stage_layers[g.stage]:
        p = f"L{L}."
        moe = s.moe[s.layers.index(L)]
        for n in ("norm_attn", "norm_mlp") + (("router",) if moe else ()):
            out[p + n] = (p + n, 0, None)
        out[p + "q"] = (p + "q", 0, _rng(g.spans[p + "q"], hd))
        out[p + "k"] = (p + "k", 0, _rng(g.spans[p + "kv"], hd))
        out[p + "v"] = (p + "v", 0, _rng(g.spans[p + "kv"], hd))
        out[p + "out"] = (p + "out", 1, _rng(g.spans[p + "out"]))
        mlps = [("", s.ffn)] if not moe else ([("shared_", s.shared_ffn)] if s.shared else [])
        for prefix, f in mlps:
            span = g.spans[p + prefix + "fc1"]
            out[p + prefix + "fc1"] = (p + prefix + "fc1", 0, rows_index(up * f, span, s.gated))
            out[p + prefix + "fc2"] = (p + prefix + "fc2", 1, _rng(span))
        if moe:
            ids, span = g.experts[L]
            for e in ids:
                q = f"{p}e{e}."
                out[q + "fc1"] = (q + "fc1", 0, rows_index(up * s.expert_ffn, span, s.gated))
                out[q + "fc2"] = (q + "fc2", 1, _rng(span))
    return out


def take(full: torch.Tensor, ix: Index) -> torch.Tensor:
    _, dim, idx = ix
    return full.clone() if idx is None else full.index_select(dim, idx)


@dataclass(frozen=True)
class Groups:
    """Global ranks (sorted) of every group, keyed by what they share; made in this order on
    every process, as torch.distributed requires."""

    tp: dict[tuple, list[int]]
    ep: dict[tuple, list[int]]
    dp: dict[tuple, list[int]]
    expert_dp: dict[tuple, list[int]]
    tie: dict[tuple, list[int]]
    kv: dict[tuple, list[int]]  # (stage, DP rank, layer, KV span): TP ranks sharing KV heads

    def all(self) -> list[list[int]]:
        seen, out = set(), []
        for d in (self.tp, self.ep, self.dp, self.expert_dp, self.tie, self.kv):
            for key in sorted(d):
                ranks = d[key]
                if len(ranks) > 1 and tuple(ranks) not in seen:
                    seen.add(tuple(ranks))
                    out.append(ranks)
        return out


def groups(lay: Layout) -> Groups:
    tp: dict[tuple, list[int]] = {}
    ep: dict[tuple, list[int]] = {}
    dp: dict[tuple, list[int]] = {}
    edp: dict[tuple, list[int]] = {}
    tie: dict[tuple, list[int]] = {}
    kv: dict[tuple, list[int]] = {}
    for g in lay.gpus:
        for L in lay.stage_layers[g.stage]:
            kv.setdefault((g.stage, g.dp_rank, L, g.spans[f"L{L}.kv"]), []).append(g.gpu)
        tp.setdefault((g.stage, g.dp_rank), []).append(g.gpu)
        ep.setdefault((g.stage, g.edp_rank), []).append(g.gpu)
        dp.setdefault((g.stage, g.tp_rank), []).append(g.gpu)
        edp.setdefault((g.stage, g.etp_rank), []).append(g.gpu)
        if lay.small.tie and lay.pp > 1 and g.stage in (0, lay.pp - 1):
            tie.setdefault((g.tp_rank, g.dp_rank), []).append(g.gpu)
    for d in (tp, ep, dp, edp, tie, kv):
        for v in d.values():
            v.sort()
    return Groups(tp, ep, dp, edp, tie, {k: v for k, v in kv.items() if len(v) > 1})


def peer(lay: Layout, g: Gpu, stage: int) -> int:
    """The GPU of `stage` with g's TP and DP ranks (the pipeline's point-to-point peer)."""
    for x in lay.gpus:
        if x.stage == stage and x.tp_rank == g.tp_rank and x.dp_rank == g.dp_rank:
            return x.gpu
    raise ValueError(f"no GPU of stage {stage} has TP rank {g.tp_rank}, DP rank {g.dp_rank}")


def routing(lay: Layout, g: Gpu, L: int, members: list[int],
            weights: dict[str, torch.Tensor]) -> Routing:
    """For each expert, the replicas GPU `g` may send its tokens to under the plan's rule:
    the replicas on its own node if there are any, else all of them; each replica is the EP
    rank's members (all its ETP ranks), as indices into `members`."""
    by_rank: dict[int, list[int]] = {}
    for k, i in enumerate(members):
        by_rank.setdefault(lay.gpus[i].ep_rank, []).append(k)
    replicas: dict[int, list[list[int]]] = {}
    for e in range(lay.small.experts):
        ranks = sorted(r for r, ks in by_rank.items()
                       if e in lay.gpus[members[ks[0]]].experts[L][0])
        near = [r for r in ranks if lay.gpus[members[by_rank[r][0]]].node == g.node]
        replicas[e] = [by_rank[r] for r in (near or ranks)]
    local = {e: (weights[f"L{L}.e{e}.fc1"], weights[f"L{L}.e{e}.fc2"])
             for e in g.experts[L][0] if f"L{L}.e{e}.fc1" in weights}
    return Routing(replicas, local)
