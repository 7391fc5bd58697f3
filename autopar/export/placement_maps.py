"""An expert placement as each engine loads it, and those files read back.

Why: a placement only helps once the engine runs it, and each engine takes its own table of
physical slots (GPU g's local slots are `g * slots .. (g + 1) * slots - 1`, every slot holding
one logical expert):

- SGLang: `--init-expert-location FILE.json`, `{"physical_to_logical_map": [layers][slots]}`
  with a row for every layer of the model (its ExpertLocationMetadata.init_by_mapping takes
  the file's keys as its arguments, so no other key may be there; dense layers' rows are
  unused and get its trivial map, slot i -> expert i % E), with `--ep-num-redundant-experts`
  = slots - experts.
- vLLM: `--enable-eplb` with `--eplb-config '{"num_redundant_experts": R, ...}'`; released
  vLLM loads no initial placement (it starts from slot i -> expert i, then copies of experts
  0, 1, .., and rebalances every step_interval steps). The file is the placement in its
  EplbState layout, [MoE layers][slots], the JSON that the open vLLM PR #49572
  (`eplb_config.initial_expert_map_path`) reads.
- TensorRT-LLM: the MoE load balancer file that `moe_config.load_balancer` names: YAML with
  `num_slots`, `initial_global_assignments` ({model layer: [slots]}) and
  `layer_updates_per_iter: 0` (examples/ep_load_balancer, generate_eplb_config.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError
from ..spec.datafile import parse_json, parse_yaml, read_text

MAP_ENGINES = ("sglang", "vllm", "trtllm")
# vLLM's EPLBConfig defaults (vllm/config/parallel.py): the load window and the steps
# between rebalances, written out so the launch states them
VLLM_WINDOW, VLLM_INTERVAL = 1000, 3000
MAX_MAP_BYTES = 50 * 1024 * 1024

Layout = Sequence[Sequence[int]]  # one layer: the experts on each GPU


@dataclass(frozen=True)
class EngineMap:
    engine: str
    text: str  # the file the engine loads
    suffix: str
    args: dict[str, Any]  # the launch settings that go with it
    note: str = ""


@dataclass(frozen=True)
class ParsedMap:
    """A map file read back: per row its slots, keyed by model layer or MoE-layer ordinal."""

    engine: str
    rows: dict[int, list[int]]
    keyed_by: str  # "layer" (model layer index) | "moe" (ordinal among the MoE layers)
    extra: dict[str, Any] = field(default_factory=dict)


def flat_slots(gpus: Layout, slots: int) -> list[int]:
    """Physical slot -> logical expert, GPU-major; every GPU must fill exactly `slots`."""
    out: list[int] = []
    for g, ex in enumerate(gpus):
        if len(ex) != slots:
            raise ValueError(f"GPU {g} holds {len(ex)} experts, the table has {slots} slots")
        out.extend(sorted(int(e) for e in ex))
    return out


def engine_map(engine: str, layers: Sequence[Layout], layer_ids: Sequence[int],
               total_layers: int, num_experts: int, map_path: str = "FILE") -> EngineMap:
    """The file `engine` loads for these placements (one per MoE layer, at `layer_ids` of a
    model with `total_layers` layers) and the launch settings naming it as `map_path`."""
    ep = len(layers[0])
    slots = len(layers[0][0])
    phys = ep * slots
    rows = [flat_slots(gpus, slots) for gpus in layers]
    redundant = phys - num_experts
    if engine == "sglang":
        table = [[i % num_experts for i in range(phys)] for _ in range(total_layers)]
        for lid, row in zip(layer_ids, rows, strict=True):
            table[lid] = row
        text = json.dumps({"physical_to_logical_map": table}, separators=(",", ":"))
        args = {"ep-size": ep, "ep-num-redundant-experts": redundant,
                "init-expert-location": map_path}
        return EngineMap(engine, text, ".json", args,
                         "dense layers' rows are SGLang's trivial map (unused)")
    if engine == "vllm":
        cfg = {"num_redundant_experts": redundant, "window_size": VLLM_WINDOW,
               "step_interval": VLLM_INTERVAL}
        args = {"enable-expert-parallel": True, "enable-eplb": True,
                "eplb-config": json.dumps(cfg, separators=(",", ":"))}
        note = ("released vLLM loads no initial placement: it starts from its default map and "
                "rebalances every step_interval steps; the file is this placement in EplbState's "
                "layout ([MoE layers][slots]), for eplb_config.initial_expert_map_path of the "
                "open vLLM PR #49572; older vLLM releases spell the settings "
                "--num-redundant-experts, --eplb-window-size, --eplb-step-interval")
        return EngineMap(engine, json.dumps(rows, separators=(",", ":")), ".json", args, note)
    if engine == "trtllm":
        doc = {"num_slots": phys,
               "initial_global_assignments": {int(i): r for i, r in zip(layer_ids, rows,
                                                                         strict=True)},
               "layer_updates_per_iter": 0}
        text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=1 << 30)
        args = {"moe_expert_parallel_size": ep,
                "moe_config": {"backend": "WideEP", "load_balancer": map_path}}
        return EngineMap(engine, text, ".yaml", args,
                         "layer_updates_per_iter 0: the assignment stays as loaded")
    raise ValueError(f"unknown engine {engine!r} (one of {', '.join(MAP_ENGINES)})")


def read_map(path: str) -> ParsedMap:
    """Read an SGLang, vLLM or TensorRT-LLM map file (as `engine_map` writes them; a
    TensorRT-LLM LLM-API options file whose moe_config.load_balancer names one, inside the
    options file's folder, is followed)."""
    text = read_text(path, MAX_MAP_BYTES)
    if text.lstrip()[:1] in ("{", "["):
        doc = parse_json(text, path)
    else:  # TensorRT-LLM's table is keyed by layer number
        doc = parse_yaml(text, path, int_keys=True)
    if isinstance(doc, list):
        return ParsedMap("vllm", {i: _row(r, path, f"[{i}]") for i, r in enumerate(doc)}, "moe")
    if not isinstance(doc, dict):
        raise InputError(path, "", "expected an SGLang, vLLM or TensorRT-LLM expert map")
    if "physical_to_logical_map" in doc:
        if set(doc) != {"physical_to_logical_map"}:
            raise InputError(path, sorted(set(doc) - {"physical_to_logical_map"})[0],
                             "unknown key: SGLang's map holds only physical_to_logical_map")
        raw = doc["physical_to_logical_map"]
        if not isinstance(raw, list) or not raw:
            raise InputError(path, "physical_to_logical_map", "expected a list of layers")
        return ParsedMap("sglang", {i: _row(r, path, f"physical_to_logical_map[{i}]")
                                    for i, r in enumerate(raw)}, "layer")
    if "moe_config" in doc:
        lb = doc["moe_config"].get("load_balancer") if isinstance(doc["moe_config"], dict) \
            else None
        if isinstance(lb, str):
            return read_map(str(_inside(path, lb, "moe_config.load_balancer")))
        if isinstance(lb, dict):
            doc = lb
        else:
            raise InputError(path, "moe_config.load_balancer", "expected a file name or mapping")
    if "initial_global_assignments" in doc:
        raw = doc["initial_global_assignments"]
        if not isinstance(raw, dict) or not raw:
            raise InputError(path, "initial_global_assignments", "expected {layer: [slots]}")
        rows = {}
        for k, r in raw.items():
            if type(k) is not int or k < 0:
                raise InputError(path, f"initial_global_assignments.{k}",
                                 "layer keys must be integers >= 0")
            rows[k] = _row(r, path, f"initial_global_assignments.{k}")
        n = doc.get("num_slots")
        if any(len(r) != n for r in rows.values()):
            raise InputError(path, "num_slots", f"{n!r} does not match the assignments' length")
        return ParsedMap("trtllm", rows, "layer", {"num_slots": n})
    raise InputError(path, "", "no expert map (physical_to_logical_map, a list of layers, or "
                     "initial_global_assignments)")


def split_gpus(row: Sequence[int], ep: int, source: str, at: str) -> list[list[int]]:
    """A slot table cut into the EP group's GPUs (equal local slots, as every engine has)."""
    if len(row) % ep:
        raise InputError(source, at, f"{len(row)} slots do not split evenly over {ep} GPUs")
    k = len(row) // ep
    return [list(row[g * k:(g + 1) * k]) for g in range(ep)]


def check_layout(gpus: Layout, num_experts: int, source: str, at: str) -> None:
    """Every expert somewhere, every slot a known expert, none twice on one GPU."""
    seen: set[int] = set()
    for g, ex in enumerate(gpus):
        if len(set(ex)) != len(ex):
            twice = sorted(e for e in set(ex) if list(ex).count(e) > 1)[0]
            raise InputError(source, at, f"GPU {g} holds expert {twice} twice")
        for e in ex:
            if not 0 <= e < num_experts:
                raise InputError(source, at, f"GPU {g}: expert {e} outside 0..{num_experts - 1}")
        seen.update(ex)
    if len(seen) != num_experts:
        missing = sorted(set(range(num_experts)) - seen)
        raise InputError(source, at, f"expert {missing[0]} has no slot ({len(missing)} missing)")


def _row(raw: object, path: str, at: str) -> list[int]:
    if not isinstance(raw, list) or not raw or any(type(v) is not int for v in raw):
        raise InputError(path, at, "expected a non-empty list of integer expert ids")
    return list(raw)


def _inside(path: str, name: str, at: str) -> Path:
    """`name` relative to the folder of `path`, refused if it leads outside it."""
    base = Path(path).resolve().parent
    target = (base / name).resolve()
    if Path(name).is_absolute() or base not in target.parents:
        raise InputError(path, at, f"{name!r} is outside {base}: only files beside the "
                         "options file are followed")
    return target
