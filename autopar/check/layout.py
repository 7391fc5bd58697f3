"""Structural checks of a plan's layout: degrees, rank layout, stage cut, divisibility, TP
shards and expert placement. Each appends findings; none trusts the plan's own derived
fields (ranks, edp) without recomputing them from the degrees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..model.components import embedding_components, head_components, layer_components
from ..spec import HardwareSpec, ModelSpec, Workload
from .finding import Findings
from .recompute import Layout


def _ranges(xs: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    xs = sorted(set(xs))
    out: list[str] = []
    start = prev = None
    for x in xs + [None]:
        if start is None:
            start = prev = x
        elif x is not None and x == prev + 1:
            prev = x
        else:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = x
    return ", ".join(out)


# Which groups of GPUs a check walks: (kind, every group of that kind) -> the groups to
# check. Kinds: "tp" (TP groups, shards), "etp" (expert-TP groups), "ep" (EP groups) and
# "gpu" (single GPUs, experts). `autopar check` walks every group; a plan's own self-check
# walks one per distinct content (`selfcheck`), since the builder's patterns make the rest
# copies.
Pick = Callable[[str, Iterable[list[int]]], Iterable[list[int]]]


def every(kind: str, groups: Iterable[list[int]]) -> Iterable[list[int]]:
    return groups


def _span(layers: list, lo: int, hi: int) -> tuple[range, bool]:
    """The part of an inclusive [first, last] layer range inside [lo, hi], and whether any of
    it lies outside (never expanded beyond the model, whatever the file claims)."""
    a, b = int(layers[0]), int(layers[1])
    return range(max(a, lo), min(b, hi) + 1), a < lo or b > hi or a > b


# --------------------------------------------------------------------------- degrees
def check_degrees(f: Findings, s: dict, num_gpus: int, w: Workload | None) -> Layout | None:
    """tp x dp x pp = GPUs, the expert folding ep x etp x edp = tp x dp, and the batch split;
    returns the layout when it is sound enough to check anything that depends on it."""
    n0 = len(f.items)
    tp, pp, dp, ep, etp = (int(s[k]) for k in ("tp", "pp", "dp", "ep", "etp"))
    if s["num_gpus"] != num_gpus:
        f.error("degrees", "strategy.num_gpus", "the plan is for another GPU count than the "
                "hardware", s["num_gpus"], num_gpus)
    if tp * dp * pp != num_gpus:
        f.error("degrees", "strategy", "tp x dp x pp must equal the GPU count",
                f"tp x dp x pp = {tp}x{dp}x{pp} = {tp * dp * pp}", num_gpus)
    width = tp * dp
    if width % (ep * etp):
        f.error("degrees", "strategy.ep", "experts fold onto the tp x dp GPUs of a stage: "
                "ep x etp must divide tp x dp", f"ep x etp = {ep}x{etp} = {ep * etp}",
                f"a divisor of tp x dp = {width}")
    elif s["edp"] != width // (ep * etp):
        f.error("degrees", "strategy.edp", "ep x etp x edp must equal tp x dp", s["edp"],
                width // (ep * etp))
    if "stage_width" in s and s["stage_width"] != width:
        f.error("degrees", "strategy.stage_width", "a stage has tp x dp GPUs",
                s["stage_width"], width)
    if s["sequence_parallel"] and tp == 1:
        f.error("degrees", "strategy.sequence_parallel", "sequence parallelism needs tp > 1",
                True, False)
    if w is not None:
        per = -(-w.batch // dp)
        mb, nmb = int(s["micro_batch"]), int(s["num_micro_batches"])
        if mb * nmb != per:
            f.error("degrees", "strategy.num_micro_batches",
                    "micro_batch x num_micro_batches must be the samples per replica, "
                    "ceil(batch / dp)", f"{mb}x{nmb} = {mb * nmb}", per)
        if s.get("samples_per_replica", per) != per:
            f.error("degrees", "strategy.samples_per_replica", "ceil(batch / dp)",
                    s["samples_per_replica"], per)
        if w.kind == "training" and w.batch < dp:
            f.error("degrees", "strategy.dp", "more data-parallel replicas than samples",
                    dp, f"<= {w.batch}")
    if len(f.items) > n0:
        return None
    return Layout.from_strategy(s)


def check_ranks(f: Findings, gpus: list[dict], lay: Layout, hw: HardwareSpec | None) -> None:
    """Each GPU's id, stage, node and ranks follow the Megatron rank order of the degrees."""
    if len(gpus) != lay.num_gpus:
        f.error("degrees", "gpus", "one entry per GPU", len(gpus), lay.num_gpus)
    for i, g in enumerate(gpus[:lay.num_gpus]):
        c = lay.coords(i)
        if g["id"] != i:
            f.error("degrees", f"gpus[{i}].id", "GPU ids must be 0..n-1 in order", g["id"], i)
        if g["stage"] != c["stage"]:
            f.error("degrees", f"gpus[{i}].stage", "stage = id // (tp x dp)", g["stage"],
                    c["stage"])
        ranks = g.get("ranks") if isinstance(g.get("ranks"), dict) else {}
        for k, v in c.items():
            if k in ranks and ranks[k] != v:
                f.error("degrees", f"gpus[{i}].ranks.{k}",
                        "rank order: TP fastest, then DP, then PP (experts: ETP, EP, EDP)",
                        ranks[k], v)
        if hw is not None and g["node"] != i // hw.gpus_per_node:
            f.error("degrees", f"gpus[{i}].node", "node = id // gpus_per_node", g["node"],
                    i // hw.gpus_per_node)
        if isinstance(g.get("layers"), list) and c["stage"] < len(lay.stage_layers) and \
                tuple(g["layers"]) != lay.stage_layers[c["stage"]]:
            f.error("stages", f"gpus[{i}].layers", "a GPU holds its stage's layers",
                    g["layers"], list(lay.stage_layers[c["stage"]]))


def check_stages(f: Findings, lay: Layout, layers: int) -> bool:
    """The stage cut covers layers 0..L-1 in order, one non-empty range per stage."""
    n0 = len(f.items)
    if len(lay.stage_layers) != lay.pp:
        f.error("stages", "strategy.stage_layers", "one layer range per pipeline stage",
                len(lay.stage_layers), lay.pp)
    pos = 0
    for i, (a, b) in enumerate(lay.stage_layers):
        if a != pos or b < a:
            f.error("stages", f"strategy.stage_layers[{i}]", "stages must cover the layers in "
                    "order, each at least one layer", [a, b], f"[{pos}, >= {pos}]")
            break
        pos = b + 1
    else:
        if pos != layers:
            f.error("stages", "strategy.stage_layers", "the stages must end at the last layer",
                    pos - 1, layers - 1)
    return len(f.items) == n0


def check_divisibility(f: Findings, plan: dict, m: ModelSpec, lay: Layout) -> None:
    if m.heads % lay.tp:
        f.error("divisibility", "strategy.tp", "attention heads must split evenly over TP",
                f"{m.heads} heads over tp {lay.tp}", "tp dividing the heads")
    if m.mla is None and m.kv_heads % lay.tp and lay.tp % m.kv_heads:
        f.error("divisibility", "strategy.tp", "KV heads must split evenly over TP or be "
                "copied evenly (tp a multiple of kv_heads)",
                f"{m.kv_heads} KV heads over tp {lay.tp}", "tp dividing or divided by kv_heads")
    if not m.is_moe:
        if lay.ep > 1:
            f.error("divisibility", "strategy.ep", "a dense model has no experts", lay.ep, 1)
        return
    if lay.ep > m.experts:
        f.error("divisibility", "strategy.ep", "more EP ranks than experts", lay.ep,
                f"<= {m.experts}")
    elif m.experts % lay.ep and not _lists_placement(plan):
        f.error("divisibility", "strategy.ep", "experts do not split evenly over EP and the "
                "plan lists no placement", f"{m.experts} experts over ep {lay.ep}",
                "ep dividing the experts, or gpus[].experts listing them")


def _lists_placement(plan: dict) -> bool:
    return any(g.get("experts") for g in plan.get("gpus") or [] if isinstance(g, dict))


# --------------------------------------------------------------------------- shards
def tensor_dims(m: ModelSpec) -> dict[str, tuple[str, int]]:
    """The split dimension and its extent of each TP-split tensor (Megatron column/row)."""
    v_dim = m.mla.v_head_dim if m.mla else m.head_dim
    shared = m.shared_experts * m.shared_expert_ffn_hidden
    return {"qkv": ("heads", m.heads), "attn": ("heads", m.heads),
            "out": ("rows", m.heads * v_dim),
            "fc1": ("columns", m.ffn_hidden), "fc2": ("rows", m.ffn_hidden),
            "shared_fc1": ("columns", shared), "shared_fc2": ("rows", shared),
            "embedding": ("vocab", m.vocab), "lm_head": ("vocab", m.vocab)}


def _expected_components(m: ModelSpec, lay: Layout, stage: int) -> dict[tuple, str]:
    """(name, layer or None for the embedding / head) -> TP role, for one stage."""
    first, last = lay.stage_layers[stage]
    out: dict[tuple, str] = {}
    for layer in range(first, last + 1):
        for c in layer_components(m, layer, 1.0):
            if not c.is_expert:
                out[(c.name, layer)] = c.role
    edges = (embedding_components(m) if stage == 0 else []) + (
        head_components(m) if stage == lay.pp - 1 else [])
    for c in edges:
        out[(c.name, None)] = c.role
    return out


class _Grouped:
    """Findings gathered per (path, message) with the layers they concern, so that a shard
    missing from 60 layers is one finding, not 60."""

    def __init__(self) -> None:
        self.items: dict[tuple, tuple[list, Any, Any]] = {}

    def add(self, path: str, message: str, layer: int | None, claimed: Any = None,
            expected: Any = None) -> None:
        entry = self.items.setdefault((path, message), ([], claimed, expected))
        if layer is not None:
            entry[0].append(layer)

    def emit(self, f: Findings, check: str) -> None:
        for (path, message), (layers, claimed, expected) in self.items.items():
            where = f" (layers {_ranges(layers)})" if layers else ""
            f.error(check, path, message + where, claimed, expected)


def _tile(parts: list[tuple[int, int, str]], extent: int, label: str, out: _Grouped,
          layer: int | None) -> None:
    """Pieces [start, end) must tile [0, extent) exactly once."""
    pos = 0
    for a, b, path in sorted(parts):
        if a > pos:
            out.add(path, f"{label}: gap, nobody holds [{pos}, {a})", layer, a, pos)
        elif a < pos:
            out.add(path, f"{label}: overlap, [{a}, {min(b, pos)}) held twice", layer, a, pos)
        pos = max(pos, b)
    if pos != extent:
        out.add(parts[-1][2] if parts else "gpus", f"{label}: shards end at {pos}, the tensor "
                f"has {extent}", layer, pos, extent)


def check_shards(f: Findings, plan: dict, m: ModelSpec, lay: Layout,
                 pick: Pick = every) -> None:
    """Per stage and model replica (a TP group), every TP-split tensor of every layer is
    tiled exactly once by its TP ranks; replicated ones are whole on every rank."""
    gpus = plan["gpus"]
    dims = tensor_dims(m)
    out = _Grouped()
    for members in pick("tp", lay.groups("tp")):
        stage = lay.coords(members[0])["stage"]
        first, last = lay.stage_layers[stage]
        expected = _expected_components(m, lay, stage)
        held: dict[tuple, list[tuple[int, int, dict]]] = {}
        for g in members:
            for j, comp in enumerate(gpus[g]["components"]):
                keys: list[tuple] = [(comp["name"], None)]
                if comp["layers"]:
                    inside, outside = _span(comp["layers"], first, last)
                    keys = [(comp["name"], x) for x in inside]
                    if outside:
                        out.add(f"gpus[{g}].components[{j}].layers", f"{comp['name']}: layers "
                                f"outside stage {stage}", None, comp["layers"], [first, last])
                for key in keys:
                    if key not in expected:
                        out.add(f"gpus[{g}].components[{j}]", f"{comp['name']} is not a "
                                f"component of stage {stage}", key[1])
                        continue
                    held.setdefault(key, []).append((g, j, comp["shard"]))
        for key, role in expected.items():
            name, layer = key
            parts = held.get(key, [])
            label = f"{name} (stage {stage}, GPUs {members[0]}-{members[-1]})"
            if len({g for g, _, _ in parts}) != len(members) or len(parts) != len(members):
                out.add(f"gpus[{members[0]}].components", f"{label}: every TP rank holds "
                        "exactly one shard", layer, len(parts), len(members))
                continue
            if role == "replicated":
                for g, j, sh in parts:
                    if sh["start"] != 0 or sh["end"] != sh["of"]:
                        out.add(f"gpus[{g}].components[{j}].shard", f"{label}: replicated "
                                "but partial", layer, [sh["start"], sh["end"]], [0, sh["of"]])
                continue
            dim, extent = dims[name]
            bad = [(g, j, sh) for g, j, sh in parts if sh["of"] != extent or sh["dim"] != dim]
            for g, j, sh in bad[:1]:
                out.add(f"gpus[{g}].components[{j}].shard", f"{label}: split along the wrong "
                        "dimension or extent", layer, f"{sh['dim']} of {sh['of']}",
                        f"{dim} of {extent}")
            if bad:
                continue
            _tile([(sh["start"], sh["end"], f"gpus[{g}].components[{j}].shard")
                   for g, j, sh in parts], extent, label, out, layer)
            if name == "qkv" and m.mla is None:
                _kv_heads(parts, m.kv_heads, len(members), label, out, layer)
    out.emit(f, "shards")
    _expert_shards(f, plan, m, lay, pick)


def _kv_heads(parts: list, kv: int, tp: int, label: str, out: _Grouped,
              layer: int | None) -> None:
    """KV heads split over TP, or each copied to tp / kv ranks when TP exceeds them."""
    copies = max(1, tp // kv)
    count = [0] * kv
    for _g, _j, sh in parts:
        k = sh.get("kv_heads")
        if not isinstance(k, dict):
            return  # older plans list query heads only
        for x in range(max(0, k["start"]), min(kv, k["end"])):
            count[x] += 1
    wrong = [i for i, c in enumerate(count) if c != copies]
    if wrong:
        out.add(f"gpus[{parts[0][0]}].components[{parts[0][1]}].shard.kv_heads",
                f"{label}: KV head {wrong[0]} held {count[wrong[0]]} times", layer,
                count[wrong[0]], copies)


def _expert_shards(f: Findings, plan: dict, m: ModelSpec, lay: Layout,
                   pick: Pick = every) -> None:
    """Expert-TP: the GPUs of one ETP group split each expert's FFN columns exactly once."""
    if not m.is_moe or not m.expert_ffn_hidden:
        return
    out = _Grouped()
    groups: dict[tuple, list[int]] = {}
    for g in range(lay.num_gpus):
        groups.setdefault((g // lay.width, (g % lay.width) // lay.etp), []).append(g)
    for members in pick("etp", groups.values()):
        per_layer: dict[int, list[tuple[int, int, str]]] = {}
        for g in members:
            for j, e in enumerate(plan["gpus"][g]["experts"]):
                sh = e.get("etp_shard")
                if not isinstance(sh, list) or len(sh) != 2:
                    continue
                for layer in _span(e["layers"], 0, m.layers - 1)[0]:
                    per_layer.setdefault(layer, []).append(
                        (sh[0], sh[1], f"gpus[{g}].experts[{j}].etp_shard"))
        for layer, parts in per_layer.items():
            _tile(parts, m.expert_ffn_hidden, f"expert FFN columns (ETP GPUs "
                  f"{members[0]}-{members[-1]})", out, layer)
    out.emit(f, "shards")


# --------------------------------------------------------------------------- experts
def check_experts(f: Findings, plan: dict, m: ModelSpec, lay: Layout,
                  pick: Pick = every) -> None:
    """Every expert of every MoE layer sits in every EP group; the per-GPU lists agree with
    the experts section, whose replica counts add up."""
    gpus = plan["gpus"]
    n = min(len(gpus), lay.num_gpus)
    single = [grp[0] for grp in pick("gpu", ([i] for i in range(lay.num_gpus)))]
    if not m.is_moe:
        for i in [x for x in single if x < n] + list(range(lay.num_gpus, len(gpus))):
            if gpus[i]["experts"]:
                f.error("experts", f"gpus[{i}].experts", "a dense model has no experts",
                        len(gpus[i]["experts"]), 0)
        return
    ep_groups = list(pick("ep", lay.groups("ep")))
    out = _Grouped()
    have: dict[tuple[int, int], list[int]] = {}
    for i in sorted(x for x in set(single).union(*ep_groups) if x < n):
        g = gpus[i]
        first, last = lay.stage_layers[lay.coords(i)["stage"]]
        for j, e in enumerate(g["experts"]):
            ids = e["experts"]
            bad = [x for x in ids if not isinstance(x, int) or not 0 <= x < m.experts]
            if bad:
                out.add(f"gpus[{i}].experts[{j}].experts", "expert ids out of range", None,
                        bad[:5], f"0..{m.experts - 1}")
            inside, outside = _span(e["layers"], first, last)
            if outside:
                out.add(f"gpus[{i}].experts[{j}].layers", "layers outside this GPU's stage",
                        None, e["layers"], [first, last])
            for layer in inside:
                if not m.is_moe_layer(layer):
                    out.add(f"gpus[{i}].experts[{j}].layers", "not an MoE layer of this "
                            "GPU's stage", layer)
                    continue
                have.setdefault((i, layer), []).extend(ids)
    for (i, layer), ids in have.items():
        if len(set(ids)) != len(ids):
            out.add(f"gpus[{i}].experts", "an expert listed twice on one GPU", layer,
                    len(ids), len(set(ids)))
    listed = 0  # the ids of missing experts are listed for the first few gaps only
    for members in ep_groups:
        first, last = lay.stage_layers[lay.coords(members[0])["stage"]]
        for layer in range(first, last + 1):
            if not m.is_moe_layer(layer):
                continue
            got = {x for g in members for x in have.get((g, layer), [])
                   if isinstance(x, int) and 0 <= x < m.experts}
            if len(got) >= m.experts:
                continue
            if listed < 16:
                listed += 1
                missing = sorted(set(range(m.experts)) - got)
                what = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
            else:
                what = f"{m.experts - len(got)}"
            out.add(f"gpus[{members[0]}].experts", f"EP group GPUs {members}: experts "
                    f"{what} placed nowhere", layer, len(got), m.experts)
    out.emit(f, "experts")
    _expert_section(f, plan, m, lay, have, single)


def _expert_section(f: Findings, plan: dict, m: ModelSpec, lay: Layout,
                    have: dict[tuple[int, int], list[int]], gpus: list[int]) -> None:
    """The experts section against the strategy and against the per-GPU lists of `gpus`."""
    sec = plan.get("experts")
    if not isinstance(sec, dict) or not isinstance(sec.get("layers"), list):
        return
    for key in ("ep", "etp", "edp"):
        if key in sec and sec[key] != getattr(lay, key):
            f.error("experts", f"experts.{key}", "must match the strategy", sec[key],
                    getattr(lay, key))
    by_stage: dict[int, list[int]] = {}
    for g in gpus:
        by_stage.setdefault(lay.coords(g)["stage"], []).append(g)
    seen = set()
    for i, entry in enumerate(sec["layers"]):
        layer = entry["layer"]
        seen.add(layer)
        path = f"experts.layers[{i}]"
        if not (isinstance(layer, int) and 0 <= layer < m.layers and m.is_moe_layer(layer)):
            f.error("experts", f"{path}.layer", "not an MoE layer", layer, None)
            continue
        ge = entry.get("gpu_experts")
        if not isinstance(ge, list):
            continue
        if len(ge) != lay.ep:
            f.error("experts", f"{path}.gpu_experts", "one expert list per EP rank", len(ge),
                    lay.ep)
            continue
        slots = [x for row in ge for x in row]
        if "replicas" in entry and entry["replicas"] != len(slots) - m.experts:
            f.error("experts", f"{path}.replicas", "replicas = expert slots - experts",
                    entry["replicas"], len(slots) - m.experts)
        cnt = entry.get("logcnt")
        if isinstance(cnt, list) and cnt != [slots.count(e) for e in range(m.experts)]:
            f.error("experts", f"{path}.logcnt", "copies of each expert over the EP group",
                    cnt[:8], [slots.count(e) for e in range(m.experts)][:8])
        stage = next(k for k, (a, b) in enumerate(lay.stage_layers) if a <= layer <= b)
        for g in by_stage.get(stage, []):
            mine = sorted(have.get((g, layer), []))
            want = sorted(ge[lay.coords(g)["ep_rank"]])
            if mine != want:
                f.error("experts", f"gpus[{g}].experts", f"layer {layer}: differs from "
                        f"{path}.gpu_experts", mine[:8], want[:8])
    absent = [x for x in range(m.layers) if m.is_moe_layer(x) and x not in seen]
    if absent:
        f.error("experts", "experts.layers", f"MoE layers {_ranges(absent)} have no entry",
                len(seen), m.moe_layer_count)
    loads = [e["max_over_mean"] for e in sec["layers"] if "max_over_mean" in e]
    mt = plan.get("metrics")
    if loads and isinstance(mt, dict) and "expert_load_max_over_mean" in mt and \
            abs(mt["expert_load_max_over_mean"] - max(loads)) > 1e-9 * max(loads):
        f.error("experts", "metrics.expert_load_max_over_mean", "the worst layer's "
                "max/mean", mt["expert_load_max_over_mean"], max(loads))
