"""What each GPU holds, checked against the layout: TP shards, KV heads and experts.

Per stage and model replica every TP-split tensor is tiled exactly once by its TP ranks (and
expert FFN columns by their ETP group); every expert of every MoE layer sits in every EP
group, and the plan's experts section agrees with the per-GPU lists. Findings are grouped per
message with the layers they concern (`_Grouped`), and `Pick` lets a plan's self-check walk
one group per distinct content instead of every group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..model.components import embedding_components, head_components, layer_components
from ..model.mtp import base_name, mtp_extra_components, mtp_layer_index, plan_name
from ..spec import ModelSpec
from .finding import Findings
from .layout import _ranges
from .mtp import mtp_count
from .recompute import Layout

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


# --------------------------------------------------------------------------- shards
def tensor_dims(m: ModelSpec) -> dict[str, tuple[str, int]]:
    """The split dimension and its extent of each TP-split tensor (Megatron column/row)."""
    v_dim = m.mla.v_head_dim if m.mla else m.head_dim
    shared = m.shared_experts * m.shared_expert_ffn_hidden
    return {"qkv": ("heads", m.heads), "attn": ("heads", m.heads),
            "out": ("rows", m.heads * v_dim),
            "fc1": ("columns", m.ffn_hidden), "fc2": ("rows", m.ffn_hidden),
            "shared_fc1": ("columns", shared), "shared_fc2": ("rows", shared),
            "embedding": ("vocab", m.vocab), "lm_head": ("vocab", m.vocab),
            "eh_proj": ("columns", m.hidden)}  # [mtp]


def _expected_components(m: ModelSpec, lay: Layout, stage: int,
                         training: bool = False) -> dict[tuple, str]:
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
    for i in range(mtp_count(m, training, stage, lay.pp)):  # [mtp] routed experts as one
        for c in layer_components(m, mtp_layer_index(m), 1.0) + mtp_extra_components(m):
            out[(plan_name(i, "experts" if c.is_expert else c.name), None)] = c.role
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


def _training(plan: dict) -> bool:
    """Whether the plan is a training one (its MTP modules are then on the last stage);
    a plan without inputs is the schema's finding, not this check's."""
    inputs = plan.get("inputs")
    w = inputs.get("workload") if isinstance(inputs, dict) else None
    return isinstance(w, dict) and w.get("kind") == "training"


def check_shards(f: Findings, plan: dict, m: ModelSpec, lay: Layout,
                 pick: Pick = every) -> None:
    """Per stage and model replica (a TP group), every TP-split tensor of every layer is
    tiled exactly once by its TP ranks; replicated ones are whole on every rank."""
    gpus = plan["gpus"]
    dims = tensor_dims(m)
    training = _training(plan)
    out = _Grouped()
    for members in pick("tp", lay.groups("tp")):
        stage = lay.coords(members[0])["stage"]
        first, last = lay.stage_layers[stage]
        expected = _expected_components(m, lay, stage, training)
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
            if role == "expert":  # an MTP layer's experts: held by EP rank, not TP-split
                continue
            dim, extent = dims[base_name(name)]
            bad = [(g, j, sh) for g, j, sh in parts if sh["of"] != extent or sh["dim"] != dim]
            for g, j, sh in bad[:1]:
                out.add(f"gpus[{g}].components[{j}].shard", f"{label}: split along the wrong "
                        "dimension or extent", layer, f"{sh['dim']} of {sh['of']}",
                        f"{dim} of {extent}")
            if bad:
                continue
            _tile([(sh["start"], sh["end"], f"gpus[{g}].components[{j}].shard")
                   for g, j, sh in parts], extent, label, out, layer)
            if base_name(name) == "qkv" and m.mla is None:
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
