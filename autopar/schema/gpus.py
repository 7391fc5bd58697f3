"""The plan's `gpus` section in its two forms, and the one reader that turns either into
per-GPU records.

Schema 1.x lists one record per GPU. On a large cluster most of those records are copies
(every TP rank 0 of a stage holds the same shards), which made a 10,000-GPU plan 83 MB;
schema 2.x states each distinct part once with the GPU ids it applies to:

    gpus: {form: "patterns", num_gpus, gpus_per_node, type,
           shards:  [{gpu_ids, stage, layers, ranks: {tp_rank}, components: [...]}],
           experts: [{gpu_ids, stage, ranks: {ep_rank, etp_rank}, experts: [...]}],
           memory:  [{gpu_ids, stage, memory: {...}}]}

Every GPU id 0..num_gpus-1 is in exactly one pattern of each list; its node is
`id // gpus_per_node`. `gpu_ids` is a list of `[first, last, step]` triples (ids first,
first + step, ..., last). The parts are separate lists because they vary with different
ranks (shards with the TP rank, experts with the EP rank), so one list of whole-GPU patterns
would grow with TP x EP.

`read_gpus` is what `autopar check`, `export` and the report read: the 1.x records as they
are, or the 2.x patterns expanded, with every broken id list, missing or doubly claimed GPU
as a problem to report. It imports nothing from the search, so check may use it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

FORM = "patterns"
PARTS = ("shards", "experts", "memory")  # the pattern lists of a 2.x gpus section
# the fields of an expanded record each part supplies (the rest are derived)
PART_FIELDS = {"shards": ("layers", "components"), "experts": ("experts",),
               "memory": ("memory",)}
RANK_PART = {"tp_rank": "shards", "ep_rank": "experts", "etp_rank": "experts"}


# --------------------------------------------------------------------------- id lists
def encode_ids(ids: Iterable[int]) -> list[list[int]]:
    """Sorted GPU ids as [first, last, step] runs: [0, 8, 16, 1, 2] -> [[0, 2, 1], [8, 16, 8]].
    The GPUs of one pattern are a few arithmetic progressions by construction (a rank
    repeats every TP or EP x ETP GPUs of a stage), so this stays short."""
    xs = sorted(set(ids))
    out: list[list[int]] = []
    i = 0
    while i < len(xs):
        if i + 1 == len(xs):
            out.append([xs[i], xs[i], 1])
            break
        step = xs[i + 1] - xs[i]
        j = i + 1
        while j + 1 < len(xs) and xs[j + 1] - xs[j] == step:
            j += 1
        out.append([xs[i], xs[j], step])
        i = j + 1
    return out


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def decode_ids(runs: Any, num_gpus: int) -> tuple[list[int], str | None]:
    """The ids of a `gpu_ids` list, or the problem with it (never more than num_gpus ids)."""
    if not isinstance(runs, list) or not runs:
        return [], "must be a non-empty list of [first, last, step]"
    ids: list[int] = []
    for k, r in enumerate(runs):
        if not (isinstance(r, list) and len(r) == 3 and all(_is_int(x) for x in r)):
            return ids, f"[{k}] = {r!r:.40}: not [first, last, step] integers"
        a, b, step = r
        if not (0 <= a <= b < num_gpus and step >= 1 and (b - a) % step == 0):
            return ids, (f"[{k}] = {r}: needs 0 <= first <= last < {num_gpus} GPUs and a "
                         "step >= 1 that reaches last from first")
        if len(ids) + (b - a) // step + 1 > num_gpus:
            return ids, f"more ids than the {num_gpus} GPUs"
        ids.extend(range(a, b + 1, step))
    return ids, None


def ranges_text(xs: Iterable[int], limit: int = 6) -> str:
    """[0, 1, 2, 5] -> '0-2, 5' (the first `limit` runs)."""
    runs: list[list[int]] = []
    for x in sorted(set(xs)):
        if runs and x == runs[-1][1] + 1:
            runs[-1][1] = x
        else:
            runs.append([x, x])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:limit])
    return text + (" ..." if len(runs) > limit else "")


# --------------------------------------------------------------------------- writing
def patterns(groups: Iterable[tuple[list[int], dict[str, Any]]],
             merge: bool = True) -> list[dict[str, Any]]:
    """(GPU ids, content) pairs as patterns: equal contents merged (`merge=False` where the
    caller's contents are distinct by construction, which saves serializing each to compare),
    each stated once with its ids first, in the order of their lowest GPU id."""
    merged: dict[Any, tuple[list[int], dict[str, Any]]] = {}
    for n, (ids, content) in enumerate(groups):
        key = json.dumps(content, sort_keys=True) if merge else n
        if key in merged:
            merged[key][0].extend(ids)
        else:
            merged[key] = (list(ids), content)
    out = [(min(ids), {"gpu_ids": encode_ids(ids), **content})
           for ids, content in merged.values()]
    return [x for _, x in sorted(out, key=lambda t: t[0])]


def gpu_flops(components: list[dict], experts: list[dict]) -> float:
    """A GPU's FLOPs per step: its components' and experts' (exactly rounded, so any order of
    summing gives the same figure)."""
    return math.fsum([c["flops_per_step"] for c in components] +
                     [e["flops_per_step"] for e in experts])


# --------------------------------------------------------------------------- reading
@dataclass
class GpuTable:
    """Per-GPU records of a plan, in id order, and what was wrong reading them.

    `where[id][part]` is the index of the pattern that gave GPU `id` its part (2.x only),
    so findings about a record can name the pattern that states it."""

    records: list[dict[str, Any]]
    problems: list[tuple[str, str]] = field(default_factory=list)
    where: dict[int, dict[str, int]] | None = None

    @property
    def compact(self) -> bool:
        return self.where is not None


def is_compact(plan: dict) -> bool:
    return isinstance(plan.get("gpus"), dict)


def _major(plan: dict) -> str | None:
    v = plan.get("schema_version")
    return v.split(".")[0] if isinstance(v, str) else None


def _coords(strategy: Any) -> Any:
    """GPU id -> Megatron rank coordinates (TP fastest, then CP, DP, PP; experts ETP, EP,
    EDP), or None when the strategy cannot give them."""
    try:
        tp, dp, ep, etp = (int(strategy[k]) for k in ("tp", "dp", "ep", "etp"))
        cp = int(strategy.get("cp", 1))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if min(tp, dp, ep, etp, cp) < 1:
        return None
    width = tp * cp * dp

    def coords(g: int) -> dict[str, int]:
        local = g % width
        c = {"stage": g // width, "tp_rank": local % tp, "dp_rank": local // (tp * cp),
             "etp_rank": local % etp, "ep_rank": (local // etp) % ep,
             "edp_rank": local // (etp * ep)}
        if cp > 1:
            c["cp_rank"] = local // tp % cp
        return c
    return coords


def read_gpus(plan: dict) -> GpuTable:
    """One record per GPU from either form of `gpus` (schema 1.x list or 2.x patterns), with
    every way the 2.x id lists fail to give each GPU exactly one part of each kind."""
    gpus = plan.get("gpus")
    major = _major(plan)
    if isinstance(gpus, list):
        problems = [] if major in (None, "1") else [
            ("gpus", f"schema_version {plan['schema_version']} states gpus as patterns "
                     "(an object), not one record per GPU")]
        return GpuTable([g for g in gpus if isinstance(g, dict)], problems)
    if not isinstance(gpus, dict):
        return GpuTable([], [("gpus", "must be a list of GPU records or a patterns object")])
    problems: list[tuple[str, str]] = []
    if major == "1":
        problems.append(("gpus", f"schema_version {plan['schema_version']} lists one record "
                                 "per GPU; patterns need schema 2.x"))
    n, gpn = gpus.get("num_gpus"), gpus.get("gpus_per_node")
    if not (_is_int(n) and n >= 1 and _is_int(gpn) and gpn >= 1):
        return GpuTable([], problems + [("gpus", "num_gpus and gpus_per_node must be "
                                                 "positive integers")])
    owner: dict[str, list[int | None]] = {}
    for part in PARTS:
        owner[part] = _claims(gpus.get(part), part, n, problems)
    for part in PARTS:
        missing = [g for g, k in enumerate(owner[part]) if k is None]
        if missing:
            problems.append((f"gpus.{part}", f"no {part} pattern lists GPU "
                                             f"{ranges_text(missing)} ({len(missing)} of {n} "
                                             "GPUs): each GPU is in exactly one"))
    if problems:
        return GpuTable([], problems)
    coords = _coords(plan.get("strategy"))
    records, where = [], {}
    flops: dict[tuple[int, int], float] = {}
    staged = []
    for g in range(n):
        k = {part: owner[part][g] for part in PARTS}
        pat = {part: gpus[part][k[part]] for part in PARTS}
        stages = {part: pat[part].get("stage") for part in PARTS}
        if len(set(map(repr, stages.values()))) > 1:
            staged.append((g, stages))
        ranks = dict(coords(g)) if coords else {}
        for part in ("shards", "experts"):
            if isinstance(pat[part].get("ranks"), dict):
                ranks.update(pat[part]["ranks"])
        comps, exps = pat["shards"].get("components"), pat["experts"].get("experts")
        key = (k["shards"], k["experts"])
        if key not in flops:
            try:
                flops[key] = gpu_flops(comps, exps)
            except (KeyError, TypeError):
                flops[key] = math.nan
        records.append({"id": g, "node": g // gpn, "type": gpus.get("type"),
                        "stage": stages["shards"], "ranks": ranks,
                        "layers": pat["shards"].get("layers"),
                        "memory": pat["memory"].get("memory"),
                        "components": comps, "experts": exps, "flops_per_step": flops[key]})
        where[g] = k
    problems.extend(_stage_problems(staged, where))
    return GpuTable(records, problems, where)


def _stage_problems(staged: list[tuple[int, dict]], where: dict[int, dict[str, int]],
                    keep: int = 3) -> list[tuple[str, str]]:
    """GPUs whose parts name different stages, reported at the pattern that differs from
    the other two (the shards pattern when all three differ), once per pattern."""
    groups: dict[tuple[str, int], tuple[dict, list[int]]] = {}
    for g, stages in staged:
        said = [repr(stages[part]) for part in PARTS]
        odd = next((part for part, x in zip(PARTS, said, strict=True)
                    if said.count(x) == 1 and len(set(said)) == 2), "shards")
        groups.setdefault((odd, where[g][odd]), (stages, []))[1].append(g)
    out = []
    for (odd, k), (stages, gs) in list(groups.items())[:keep]:
        others = ", ".join(f"{part} {stages[part]!r}" for part in PARTS if part != odd)
        out.append((f"gpus.{odd}[{k}].stage", f"says stage {stages[odd]!r} for GPUs "
                    f"{ranges_text(gs)}, whose other patterns say {others}"))
    if len(groups) > keep:
        out.append(("gpus", f"{len(groups) - keep} more patterns whose stage differs from "
                            "that of their GPUs' other patterns"))
    return out


def _claims(pats: Any, part: str, n: int, problems: list) -> list[int | None]:
    """GPU id -> the index of the pattern of `part` that lists it (None: no pattern); a GPU
    listed twice is a problem."""
    owner: list[int | None] = [None] * n
    if not isinstance(pats, list):
        problems.append((f"gpus.{part}", "must be a list of patterns"))
        return owner
    twice: list[tuple[int, int, int]] = []
    for k, pat in enumerate(pats):
        if not isinstance(pat, dict):
            problems.append((f"gpus.{part}[{k}]", "must be an object"))
            continue
        ids, bad = decode_ids(pat.get("gpu_ids"), n)
        if bad:
            problems.append((f"gpus.{part}[{k}].gpu_ids", bad))
        for g in ids:
            if owner[g] is None:
                owner[g] = k
            else:
                twice.append((g, owner[g], k))
    for g, a, b in twice[:3]:
        problems.append((f"gpus.{part}[{b}].gpu_ids", f"GPU {g} is also in {part}[{a}]: "
                         f"each GPU is in exactly one {part} pattern"))
    if len(twice) > 3:
        problems.append((f"gpus.{part}", f"{len(twice) - 3} more GPUs in two {part} "
                                         "patterns"))
    return owner


def gpu_records(plan: dict, source: str = "plan") -> list[dict[str, Any]]:
    """The per-GPU records of a plan in either form; a plan whose `gpus` cannot be read is an
    InputError naming the field (for `export` and scripts; `check` reports every problem)."""
    from ..errors import InputError

    table = read_gpus(plan)
    if table.problems:
        path, problem = table.problems[0]
        raise InputError(source, path, problem)
    return table.records


def with_records(plan: dict, source: str = "plan") -> dict[str, Any]:
    """A shallow copy of `plan` whose `gpus` is the per-GPU list (what the checks walk)."""
    return {**plan, "gpus": gpu_records(plan, source)}


def records_form(plan: dict) -> dict[str, Any]:
    """The same plan in the schema 1.0 form, one independent record per GPU (large: about
    8 kB per GPU)."""
    out = json.loads(json.dumps(with_records(plan)))
    out["schema_version"] = "1.0"
    return out


_RECORD_PATH = re.compile(r"^gpus\[(\d+)\]\.([a-z_]+)(.*)$")


def pattern_path(path: str, where: dict[int, dict[str, int]]) -> str:
    """A finding's path into an expanded record (`gpus[17].memory.weights_bytes`) as the path
    of the pattern that states it (`gpus.memory[2].memory.weights_bytes`)."""
    m = _RECORD_PATH.match(path)
    if not m or int(m.group(1)) not in where:
        return path
    g, key, rest = int(m.group(1)), m.group(2), m.group(3)
    part = next((p for p, keys in PART_FIELDS.items() if key in keys), None)
    if key == "stage":
        part = "shards"
    if key == "ranks":
        rank = rest.lstrip(".")
        part = RANK_PART.get(rank)
        if part is None:
            return path
    if key == "node":
        return "gpus.gpus_per_node"
    if part is None:
        return path
    return f"gpus.{part}[{where[g][part]}].{key}{rest}"


__all__ = ["FORM", "PARTS", "GpuTable", "encode_ids", "decode_ids", "patterns", "gpu_flops",
           "read_gpus", "gpu_records", "with_records", "records_form", "pattern_path",
           "is_compact", "ranges_text"]
