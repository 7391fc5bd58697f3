"""What each training or serving framework can run: one data table per framework
(`data/frameworks/<name>.yaml`), each rule with the framework's doc or code it comes from.

A rule is a `forbid:` expression over a layout's fields (the `Strategy` fields, plus a few
facts of the model and workload in `FACTS`): true for a layout the framework refuses. The
expressions are a small, checked subset of Python (comparisons, `and` / `or` / `not`,
`+ - * // %`, names and constants) evaluated here without `eval`, so the search (which
filters its enumeration with them) and `autopar check` (which reports the rules a plan
breaks) read the same tables and cannot drift apart. `any` is no table: today's full space.
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

from ..errors import InputError

FRAMEWORKS = ("any", "megatron", "torchtitan", "deepspeed", "vllm", "sglang", "trtllm")
KINDS = ("training", "inference")
# the layout fields a rule may name, with the value a plan that omits one means (plans state
# the split, CP and all-to-all options only when set; `Strategy`'s defaults)
LAYOUT_DEFAULTS: dict[str, Any] = {
    "tp": 1, "pp": 1, "dp": 1, "ep": 1, "etp": 1, "cp": 1, "micro_batch": 1,
    "num_micro_batches": 1, "recompute": "none", "zero": 0, "sequence_parallel": False,
    "virtual_stages": 1, "overlap_grad_reduce": True, "overlap_tp_comm": False,
    "spare_slots": 0, "first_stage_layers": 0, "last_stage_layers": 0,
    "embedding_in_split": False, "loss_in_split": False, "cp_comm": "p2p",
    "a2a_overlap": False, "moe_dispatcher": "alltoall", "a2a_fp8": False,
    "a2a_node_limit": 0, "pipeline_schedule": "1f1b", "moe_capacity_factor": 0.0,
    "moe_pad_to_capacity": False,
    # the cut stated stage by stage (Megatron's --pipeline-model-parallel-layout): what a
    # mixed-group plan exports, whose slower groups' stages hold fewer layers
    "pipeline_layout": False,
}
FACTS = ("layers", "experts", "moe", "seq_len", "heads", "global_batch")  # model, workload
_NAMES = frozenset(LAYOUT_DEFAULTS) | frozenset(FACTS)
_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_CMP = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
        ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
        ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}


@dataclass(frozen=True)
class Rule:
    id: str
    field: str  # the layout field a finding names
    forbid: str  # expression: true for a layout the framework refuses
    why: str
    source: str  # the framework's doc URL or code path (and version) the rule comes from
    tree: ast.Expression

    def breaks(self, values: dict[str, Any]) -> bool:
        """Does the layout (`values`: every name in LAYOUT_DEFAULTS and FACTS) break it?"""
        return bool(_eval(self.tree.body, values))

    def describe(self) -> str:
        return f"{self.id} ({self.why}; {self.source})"


@dataclass(frozen=True)
class Framework:
    name: str
    title: str
    versions: str  # the version range the rules were read from
    kinds: tuple[str, ...]  # workload kinds it runs: training or inference
    source: str
    rules: tuple[Rule, ...]

    def broken(self, values: dict[str, Any]) -> list[Rule]:
        """The rules a layout breaks, in table order."""
        return [r for r in self.rules if r.breaks(values)]

    def refuses(self, values: dict[str, Any]) -> bool:
        return any(r.breaks(values) for r in self.rules)

    def check_kind(self, kind: str, source: str = "options") -> None:
        """One-line InputError when the workload is of a kind the framework does not run."""
        if kind not in self.kinds:
            other = [n for n in FRAMEWORKS[1:] if kind in load_framework(n).kinds]
            raise InputError(source, "framework",
                             f"{self.name} runs {' and '.join(self.kinds)} workloads, not "
                             f"{kind}; for {kind} use {', '.join(other)} or any")

    def record(self) -> dict[str, str]:
        """What a plan states about the framework it was planned for."""
        return {"name": self.name, "versions": self.versions}


def layout_values(layout: dict[str, Any], layers: int, experts: int, seq_len: int,
                  heads: int, global_batch: int = 0) -> dict[str, Any]:
    """A layout's fields (a plan's `strategy` section or `Strategy.to_dict()`), with the
    defaults for those it omits, and the model / workload facts the rules read
    (`seq_len` and `global_batch` are a training step's; 0 where the workload serves)."""
    out = {k: layout.get(k, v) for k, v in LAYOUT_DEFAULTS.items()}
    out.update(layers=layers, experts=experts, moe=experts > 0, seq_len=seq_len, heads=heads,
               global_batch=global_batch)
    return out


def framework_choice(name: Any, source: str = "options") -> str:
    """The framework's name, or a one-line InputError listing the choices."""
    if not isinstance(name, str) or name not in FRAMEWORKS:
        raise InputError(source, "framework",
                         f"{name!r} is not a framework; choose one of {', '.join(FRAMEWORKS)}")
    return name


def load_framework(name: str, source: str = "options") -> Framework | None:
    """The framework's rules (None for `any`: no rules); a bad name is a one-line error."""
    if framework_choice(name, source) == "any":
        return None
    return _load(name)


@cache
def _load(name: str) -> Framework:
    path = f"data/frameworks/{name}.yaml"
    data = yaml.safe_load(resources.files("autopar").joinpath(path).read_text())
    return parse_framework(data, f"autopar/{path}")


def parse_framework(data: Any, src: str) -> Framework:
    """A framework table, checked: every key known, every rule with an id, a field, a
    parseable expression over known names, a reason and a source."""
    if not isinstance(data, dict):
        raise InputError(src, "", "a framework table is a mapping")
    top = {"name", "title", "versions", "kinds", "source", "rules"}
    _keys(data, top, top, src, "")
    kinds = data["kinds"]
    if not isinstance(kinds, list) or not kinds or any(k not in KINDS for k in kinds):
        raise InputError(src, "kinds", f"a list of {', '.join(KINDS)}, got {kinds!r}")
    if not isinstance(data["rules"], list):
        raise InputError(src, "rules", "a list of rules")
    rules, seen = [], set()
    for i, r in enumerate(data["rules"]):
        where = f"rules[{i}]"
        if not isinstance(r, dict):
            raise InputError(src, where, "a rule is a mapping")
        keys = {"id", "field", "forbid", "why", "source"}
        _keys(r, keys, keys, src, where)
        if r["id"] in seen:
            raise InputError(src, f"{where}.id", f"duplicate rule id {r['id']!r}")
        seen.add(r["id"])
        if r["field"] not in LAYOUT_DEFAULTS:
            raise InputError(src, f"{where}.field", f"{r['field']!r} is not a layout field")
        rules.append(Rule(r["id"], r["field"], r["forbid"], r["why"], r["source"],
                          _parse(r["forbid"], src, f"{where}.forbid")))
    return Framework(data["name"], data["title"], data["versions"], tuple(kinds),
                     data["source"], tuple(rules))


def _keys(d: dict, need: set[str], known: set[str], src: str, where: str) -> None:
    for k in d:
        if k not in known:
            raise InputError(src, f"{where}.{k}".lstrip("."), "unknown key")
    for k in sorted(need):
        if k not in d:
            raise InputError(src, f"{where}.{k}".lstrip("."), "missing")
        if k not in ("kinds", "rules") and (not isinstance(d[k], str) or not d[k].strip()):
            raise InputError(src, f"{where}.{k}".lstrip("."), "a non-empty string")


def _parse(text: str, src: str, where: str) -> ast.Expression:
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise InputError(src, where, f"not an expression: {exc.msg}") from None
    for node in ast.walk(tree):
        ok = isinstance(node, (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp,
                               ast.Not, ast.USub, ast.BinOp, ast.Compare, ast.Name, ast.Load,
                               ast.Constant, ast.Tuple, *_BIN, *_CMP))
        if not ok:
            raise InputError(src, where, f"{type(node).__name__} is not allowed in a rule")
        if isinstance(node, ast.Name) and node.id not in _NAMES:
            raise InputError(src, where, f"unknown name {node.id!r}")
    return tree


def _eval(node: ast.AST, v: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return v[node.id]
    if isinstance(node, ast.Tuple):
        return tuple(_eval(e, v) for e in node.elts)
    if isinstance(node, ast.BoolOp):
        vals = (_eval(e, v) for e in node.values)
        return all(vals) if isinstance(node.op, ast.And) else any(vals)
    if isinstance(node, ast.UnaryOp):
        x = _eval(node.operand, v)
        return (not x) if isinstance(node.op, ast.Not) else -x
    if isinstance(node, ast.BinOp):
        return _BIN[type(node.op)](_eval(node.left, v), _eval(node.right, v))
    left = _eval(node.left, v)  # ast.Compare, chained as Python chains it
    for op, right_node in zip(node.ops, node.comparators, strict=True):
        right = _eval(right_node, v)
        if not _CMP[type(op)](left, right):
            return False
        left = right
    return True


__all__ = ["FRAMEWORKS", "Framework", "Rule", "framework_choice", "layout_values",
           "load_framework", "parse_framework"]


def plan_refusals(plan: dict[str, Any], name: str) -> list[str]:
    """What framework `name` refuses of a plan's layout, one `rule id: why` each: an
    exporter adds them to its `why` (a plan searched under `any` may hold some)."""
    m, w, s = plan["inputs"]["model"], plan["inputs"]["workload"], plan["strategy"]
    values = layout_values(s, int(m["layers"]), int(m.get("experts") or 0),
                           int(w.get("seq_len") or 0), int(m["heads"]), _batch(w))
    fw = load_framework(name)
    return [f"rule {r.id}: {r.why}" for r in fw.broken(values)] if fw else []


def _batch(w: dict[str, Any]) -> int:
    """A plan's training batch (what the batch rules read); 0 for a serving workload."""
    return int(w.get("batch") or 0) if w.get("kind") == "training" else 0
