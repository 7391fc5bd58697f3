"""Read a plan's placement as it is and shrink its model to one that runs in seconds.

Everything here is plain Python (no torch), so a plan that cannot be run (a tensor no GPU
holds, a row shard that does not meet its column shard, a query head whose KV head lives on
another TP rank, an expert no GPU of an EP group holds) fails before any process starts,
naming the layer and the tensor.

The small model keeps what the plan's placement depends on: the layer kinds (dense / MoE,
shared experts), every attention head and KV head (so each TP rank keeps its heads and the
query heads per KV head), every expert, top-k and each kept layer's expert placement; it
shrinks what the placement only slices: hidden size, head_dim, FFN widths and vocabulary,
each to the smallest size on which every shard boundary of the plan stays a whole number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from ..check.echo import model_from_echo
from ..errors import InputError
from ..model.shards import split
from ..schema.gpus import ranges_text, read_gpus

HIDDEN, HEAD_DIM, SEQ = 16, 2, 8  # the small model's fixed sizes (float64 keeps them exact)
MIN_FFN, MIN_VOCAB, CAP = 4, 16, 4096  # a dimension's least and most size in the small model
MAX_PROCESSES = 64  # one CPU process per GPU of the plan
LAYERS_PER_STAGE = 3  # at most this many layers of one stage, one per distinct kind/placement

Span = tuple[int, int]


class ShardError(InputError):
    """The plan's placement cannot run: a tensor not covered, shards that do not meet."""

    exit_code = 1


@dataclass(frozen=True)
class Small:
    """The shrunken model: sizes, and the plan's layers it keeps (ids as in the plan)."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    expert_ffn: int
    shared_ffn: int
    vocab: int
    experts: int
    top_k: int
    gated: bool
    tie: bool
    layers: tuple[int, ...]
    moe: tuple[bool, ...]
    shared: bool


@dataclass(frozen=True)
class Gpu:
    """One GPU's part of the run: its ranks and the shard of every tensor it holds, in the
    small model's units (heads for q / kv; features for the rest)."""

    gpu: int
    node: int
    stage: int
    tp_rank: int
    dp_rank: int
    ep_rank: int
    etp_rank: int
    edp_rank: int
    spans: dict[str, Span]  # "L3.q" -> heads, "L3.kv", "L3.out", "L3.fc1", "embedding", ...
    experts: dict[int, tuple[tuple[int, ...], Span]]  # layer -> (expert ids, FFN span)


@dataclass(frozen=True)
class Layout:
    small: Small
    gpus: tuple[Gpu, ...]
    tp: int
    pp: int
    dp: int
    ep: int
    etp: int
    edp: int
    gpus_per_node: int
    stage_layers: tuple[tuple[int, ...], ...]  # kept layers of each stage
    training: bool
    seq: int
    micro_batch: int
    micro_batches: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def samples(self) -> int:
        return self.dp * self.micro_batches * self.micro_batch


class _Scale:
    """A dimension of the plan mapped onto the small model: exact where every boundary
    divides, else rounded (and said so in the notes)."""

    def __init__(self, name: str, size: int, cuts: set[int], least: int, notes: list[str]):
        g = size
        for c in cuts:
            g = math.gcd(g, c)
        unit = size // g if g else size
        self.size, self.small = size, unit * max(1, -(-least // unit))
        self.exact = self.small <= CAP
        if not self.exact:
            self.small = max(least, CAP)
            notes.append(f"{name}: shard boundaries of {size} rounded onto {self.small}")

    def __call__(self, b: int) -> int:
        return b * self.small // self.size if self.exact else round(b * self.small / self.size)


def _fail(where: str, tensor: str, problem: str) -> ShardError:
    return ShardError("plan", f"{where}: {tensor}", problem)


def _comp(rec: dict, name: str, layer: int | None) -> dict | None:
    for c in rec.get("components") or ():
        if not isinstance(c, dict) or c.get("name") != name:
            continue
        lay = c.get("layers")
        if layer is None or (isinstance(lay, list) and len(lay) == 2 and lay[0] <= layer <= lay[1]):
            return c
    return None


def _span(c: dict | None, key: str | None = None) -> Span | None:
    if c is None:
        return None
    s = c.get("shard") if key is None else (c.get("shard") or {}).get(key)
    if not isinstance(s, dict):
        return None
    if s.get("replicated"):
        return None
    return int(s["start"]), int(s["end"])


def _tile(spans: list[tuple[int, Span | None]], of: int, where: str, tensor: str,
          unit: str) -> None:
    """The spans of one group (GPU, span) cover [0, of) exactly once."""
    held = sorted((s, g) for g, s in spans if s is not None and s[1] > s[0])
    pos = 0
    for (a, b), g in held:
        if a > pos:
            raise _fail(where, tensor, f"{unit} [{pos}, {a}) of {of} on no GPU of the group "
                        f"(GPUs {ranges_text(x for x, _ in spans)})")
        if a < pos:
            raise _fail(where, tensor, f"{unit} [{a}, {min(b, pos)}) of {of} held twice "
                        f"(GPU {g} and another)")
        pos = b
    if pos < of:
        raise _fail(where, tensor, f"{unit} [{pos}, {of}) of {of} on no GPU of the group "
                    f"(GPUs {ranges_text(x for x, _ in spans)})")


def _kept_layers(stages: list[list[int]], moe_of, placement_of) -> list[tuple[int, ...]]:
    """Per stage, the first layer of each distinct (kind, expert placement), at most
    LAYERS_PER_STAGE; at least one."""
    out = []
    for a, b in stages:
        seen, keep = set(), []
        for layer in range(a, b + 1):
            sig = (moe_of(layer), placement_of(layer))
            if sig not in seen and len(keep) < LAYERS_PER_STAGE:
                seen.add(sig)
                keep.append(layer)
        out.append(tuple(keep))
    return out


def read_layout(plan: dict, source: str = "plan") -> Layout:
    """The plan's placement over the small model, every shard checked for coverage; a
    shard description that is not numbers where numbers belong is one InputError."""
    if not isinstance(plan, dict):
        raise InputError(source, "", "a plan must be a JSON object")
    if "mixed_groups" in plan:  # no per-GPU records: its groups state what runs where
        raise InputError(source, "mixed_groups", "a mixed-group plan states its stages per "
                         "group, not per GPU: verify runs one-type plans (`autopar check` "
                         "recomputes this one)")
    try:
        return _read_layout(plan, source)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise InputError(source, "gpus", f"unreadable shard description "
                         f"({type(exc).__name__}: {exc})") from None


def _read_layout(plan: dict, source: str) -> Layout:
    inputs = plan.get("inputs") if isinstance(plan.get("inputs"), dict) else {}
    if not isinstance(inputs.get("model"), dict):
        raise InputError(source, "inputs.model", "missing: verify rebuilds the model from it")
    m = model_from_echo(inputs["model"], source)
    if m.mla is not None:
        raise InputError(source, "inputs.model.mla", "MLA attention is not modelled by verify")
    st = plan.get("strategy")
    if not isinstance(st, dict):
        raise InputError(source, "strategy", "missing")
    try:
        tp, pp, dp, ep, etp = (int(st[k]) for k in ("tp", "pp", "dp", "ep", "etp"))
        stages = [list(map(int, s)) for s in st["stage_layers"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(source, "strategy", f"missing or bad {exc}") from None
    if int(st.get("cp", 1)) > 1:
        raise InputError(source, "strategy.cp", "context parallelism is not run by verify")
    wl = inputs.get("workload") if isinstance(inputs.get("workload"), dict) else {}
    training = wl.get("kind", "training") == "training"
    table = read_gpus(plan)
    if table.problems:
        path, problem = table.problems[0]
        raise ShardError(source, path, problem)
    recs = table.records
    if len(recs) > MAX_PROCESSES:
        raise InputError(source, "gpus.num_gpus", f"{len(recs)} GPUs: verify starts one "
                         f"process per GPU, at most {MAX_PROCESSES}")
    if len(recs) != tp * pp * dp or len(stages) != pp:
        raise InputError(source, "strategy", f"tp*pp*dp = {tp * pp * dp} and {len(stages)} "
                         f"stages do not match the {len(recs)} GPUs / pp={pp}")
    edp = max(1, tp * dp // (ep * etp))
    gpn = int(plan["gpus"].get("gpus_per_node", len(recs))) if isinstance(
        plan.get("gpus"), dict) else len(recs)

    def experts_of(rec: dict, layer: int) -> tuple[tuple[int, ...], Span] | None:
        for e in rec.get("experts") or ():
            lay = e.get("layers")
            if isinstance(lay, list) and lay[0] <= layer <= lay[1]:
                sh = e.get("etp_shard") or [0, m.expert_ffn_hidden]
                return tuple(sorted(int(x) for x in e.get("experts", ()))), (int(sh[0]),
                                                                             int(sh[1]))
        return None

    kept = _kept_layers(stages, m.is_moe_layer,
                        lambda L: tuple(experts_of(r, L) or () for r in recs)
                        if m.is_moe_layer(L) else None)
    notes: list[str] = []
    moe = [m.is_moe_layer(L) for s in kept for L in s]
    cuts: dict[str, set[int]] = {"ffn": set(), "expert_ffn": set(), "shared": set(),
                                 "vocab": set()}
    for r in recs:
        for c in r.get("components") or ():
            span = _span(c) if isinstance(c, dict) else None
            if span is None:
                continue
            key = {"fc1": "ffn", "fc2": "ffn", "shared_fc1": "shared", "shared_fc2": "shared",
                   "embedding": "vocab", "lm_head": "vocab"}.get(c.get("name"))
            if key:
                cuts[key].update(span)
        for e in r.get("experts") or ():
            cuts["expert_ffn"].update(int(x) for x in e.get("etp_shard") or ())
    shared_f = m.shared_experts * m.shared_expert_ffn_hidden
    sc = {"ffn": _Scale("ffn_hidden", max(m.ffn_hidden, 1), cuts["ffn"], MIN_FFN, notes),
          "expert_ffn": _Scale("expert_ffn_hidden", max(m.expert_ffn_hidden, 1),
                               cuts["expert_ffn"], MIN_FFN, notes),
          "shared": _Scale("shared experts' FFN", max(shared_f, 1), cuts["shared"], MIN_FFN,
                           notes),
          "vocab": _Scale("vocab", m.vocab, cuts["vocab"], MIN_VOCAB, notes)}
    small = Small(HIDDEN, m.heads, m.kv_heads, HEAD_DIM, sc["ffn"].small,
                  sc["expert_ffn"].small, sc["shared"].small if shared_f else 0,
                  sc["vocab"].small, m.experts, m.top_k, m.gated_mlp, m.tie_embeddings,
                  tuple(L for s in kept for L in s), tuple(moe), bool(shared_f))
    try:
        _check_groups([_bare(r, gpn) for r in recs], recs, kept, m, pp, experts_of)
        gpus = [_gpu(r, kept, m, sc, small, gpn, experts_of) for r in recs]
    except ShardError as exc:
        raise ShardError(source, exc.field, exc.problem) from None
    mb = max(1, min(int(st.get("micro_batch", 1)), 2))
    nmb = max(1, min(int(st.get("num_micro_batches", 1)), 2))
    return Layout(small, tuple(gpus), tp, pp, dp, ep, etp, edp, gpn, tuple(kept), training,
                  SEQ, mb, nmb, tuple(notes))


def _bare(r: dict, gpn: int) -> Gpu:
    """A GPU's ranks, before its shards are read."""
    g, ranks = int(r["id"]), r.get("ranks") or {}
    return Gpu(g, g // gpn, int(r["stage"]), int(ranks.get("tp_rank", 0)),
               int(ranks.get("dp_rank", 0)), int(ranks.get("ep_rank", 0)),
               int(ranks.get("etp_rank", 0)), int(ranks.get("edp_rank", 0)), {}, {})


def _gpu(r: dict, kept, m, sc, small: Small, gpn: int, experts_of) -> Gpu:
    """A GPU's shards in the small model's units, checked to meet each other: its KV heads
    serve its query heads, the output projection's rows are its heads' features, FC2's rows
    are FC1's columns."""
    bare = _bare(r, gpn)
    g, stage = bare.gpu, bare.stage
    spans: dict[str, Span] = {}
    hd = m.head_dim
    for L in kept[stage]:
        where = f"layer {L}"
        q = _span(_comp(r, "qkv", L))
        kv = _span(_comp(r, "qkv", L), "kv_heads")
        q = q or (0, m.heads)
        kv = kv or (0, m.kv_heads)
        group = m.heads // m.kv_heads
        if q[1] > q[0] and not (kv[0] <= q[0] // group and (q[1] - 1) // group < kv[1]):
            raise _fail(where, "qkv", f"GPU {g} holds query heads [{q[0]}, {q[1]}) but KV "
                        f"heads [{kv[0]}, {kv[1]}): grouped-query attention needs KV heads "
                        f"[{q[0] // group}, {(q[1] - 1) // group + 1})")
        out = _span(_comp(r, "out", L)) or (0, m.heads * hd)
        if out != (q[0] * hd, q[1] * hd):
            raise _fail(where, "out", f"GPU {g} holds rows [{out[0]}, {out[1]}) but the "
                        f"attention output of its heads [{q[0]}, {q[1]}) is rows "
                        f"[{q[0] * hd}, {q[1] * hd})")
        spans[f"L{L}.q"], spans[f"L{L}.kv"] = q, kv
        spans[f"L{L}.out"] = (q[0] * small.head_dim, q[1] * small.head_dim)
        pairs = [("shared_fc1", "shared_fc2", "shared", m.shared_experts *
                  m.shared_expert_ffn_hidden)] if m.is_moe_layer(L) else [
            ("fc1", "fc2", "ffn", m.ffn_hidden)]
        for a, b, key, size in pairs:
            if not size:
                continue
            s1 = _span(_comp(r, a, L)) or (0, size)
            s2 = _span(_comp(r, b, L)) or (0, size)
            if s1 != s2:
                raise _fail(where, b, f"GPU {g} holds rows [{s2[0]}, {s2[1]}) but {a} "
                            f"columns [{s1[0]}, {s1[1]}): the row shard must meet its column "
                            "shard")
            spans[f"L{L}.{a}"] = spans[f"L{L}.{b}"] = (sc[key](s1[0]), sc[key](s1[1]))
    for name in ("embedding", "lm_head"):
        c = _comp(r, name, None)
        if c is not None:
            v = _span(c) or (0, m.vocab)
            spans[name] = (sc["vocab"](v[0]), sc["vocab"](v[1]))
    experts: dict[int, tuple[tuple[int, ...], Span]] = {}
    for L in kept[stage]:
        if m.is_moe_layer(L):
            got = experts_of(r, L)
            ids, sh = got if got else ((), (0, 0))
            experts[L] = ids, (sc["expert_ffn"](sh[0]), sc["expert_ffn"](sh[1]))
    return replace(bare, spans=spans, experts=experts)


def _check_groups(gpus: list[Gpu], recs: list[dict], kept, m, pp: int, experts_of) -> None:
    """Each TP group covers every TP-split tensor once; each EP group every expert, each
    expert's FFN once over its ETP ranks; embedding and LM head where the model needs them."""
    tp_groups: dict[tuple[int, int], list[int]] = {}
    ep_groups: dict[tuple[int, int], list[int]] = {}
    for x in gpus:
        tp_groups.setdefault((x.stage, x.dp_rank), []).append(x.gpu)
        ep_groups.setdefault((x.stage, x.edp_rank), []).append(x.gpu)
    for (stage, _), ids in tp_groups.items():
        recs_g = [recs[i] for i in ids]
        tensors = [("embedding", None, "vocab", m.vocab)] if stage == 0 else []
        if stage == pp - 1 and not (m.tie_embeddings and pp == 1):
            tensors.append(("lm_head", None, "vocab", m.vocab))
        for L in kept[stage]:
            tensors += [("qkv", L, "heads", m.heads), ("out", L, "rows", m.heads * m.head_dim)]
            if not m.is_moe_layer(L):
                tensors += [("fc1", L, "columns", m.ffn_hidden), ("fc2", L, "rows", m.ffn_hidden)]
            elif m.shared_experts:
                f = m.shared_experts * m.shared_expert_ffn_hidden
                tensors += [("shared_fc1", L, "columns", f), ("shared_fc2", L, "rows", f)]
        for name, L, unit, of in tensors:
            where = f"layer {L}" if L is not None else f"stage {stage}"
            cs = [(r["id"], _comp(r, name, L)) for r in recs_g]
            if all(c is None for _, c in cs):
                raise _fail(where, name, f"no GPU of the stage's TP group (GPUs "
                            f"{ranges_text(ids)}) holds any shard")
            full = [(g, (0, of) if c is not None and _span(c) is None else _span(c))
                    for g, c in cs]
            _tile(full, of, where, name, unit)
    for (stage, _), ids in ep_groups.items():
        for L in kept[stage]:
            if not m.is_moe_layer(L):
                continue
            where = f"layer {L}"
            held = {i: experts_of(recs[i], L) or ((), (0, 0)) for i in ids}
            for e in range(m.experts):
                if not any(e in ex for ex, _ in held.values()):
                    raise _fail(where, f"expert {e}", f"on no GPU of the EP group (GPUs "
                                f"{ranges_text(ids)})")
            by_ep: dict[int, list[int]] = {}
            for i in ids:
                by_ep.setdefault(gpus[i].ep_rank, []).append(i)
            for r, members in by_ep.items():
                lists = {held[i][0] for i in members}
                if len(lists) > 1:
                    raise _fail(where, "experts", f"the ETP ranks of EP rank {r} (GPUs "
                                f"{ranges_text(members)}) hold different experts")
                _tile([(i, held[i][1]) for i in members], m.expert_ffn_hidden, where,
                      f"experts {ranges_text(held[members[0]][0])} fc1/fc2", "FFN columns")


def token_slice(tokens: int, tp: int, tp_rank: int) -> Span:
    """The tokens a TP rank dispatches to the experts (the TP group's copies split evenly)."""
    return split(tokens, tp, tp_rank)


def describe(layout: Layout) -> dict[str, Any]:
    s = layout.small
    return {"layers": list(s.layers), "hidden": s.hidden, "heads": s.heads,
            "kv_heads": s.kv_heads, "head_dim": s.head_dim, "ffn": s.ffn,
            "expert_ffn": s.expert_ffn, "shared_ffn": s.shared_ffn, "vocab": s.vocab,
            "experts": s.experts, "top_k": s.top_k, "seq": layout.seq,
            "micro_batch": layout.micro_batch, "micro_batches": layout.micro_batches,
            "samples": layout.samples, "notes": list(layout.notes)}
