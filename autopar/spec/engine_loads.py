"""Measured expert loads in the forms engines dump them: per MoE layer, the tokens routed to
each logical expert, as `autopar place` reads them.

Why: an engine's own load record is what a rebalance starts from, so `place` reads what the
engines write, not only autopar's profile. Formats (sniffed by name and keys;
docs/expert-load.md, "autopar place"):

- SGLang's expert distribution recorder (`--expert-distribution-recorder-mode stat`) dumps
  `torch.save({"rank", "logical_count": [passes, layers, experts], ...})`; a torch pickle is
  not read (it needs torch, and unpickling runs code). Read: the same content as JSON, the
  form SGLang's own `--init-expert-location` reads (`{"logical_count": ...}`, 2-D or 3-D), or
  logical_count saved as a `.npy` array. Its rows are all the model's layers (SGLang counts
  over num_hidden_layers); all-zero rows are the dense layers.
- vLLM's EPLB logs only sums over layers and experts ("EPLB step: avg_tokens=..,
  max_tokens=.., balancedness=.."), too little to place. Read: the EPLB state as vLLM's
  explore_eplb.py saves it (`per_layer_stats[i].logical_load`), or the state's
  `expert_load_window` [window, MoE layers, physical] with its `physical_to_logical_map`.
- autopar's profile (spec/loads.py): CSV `layer,expert,tokens` or JSON `{"layers": ...}`.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .datafile import MAX_PROFILE_BYTES, parse_json, read_bytes, read_text
from .loads import _check_count, _json_matrix, _read_csv, _read_json

MAX_LAYERS = 1024
MAX_EXPERTS = 4096
MAX_VALUES = 20_000_000  # numbers in one file (a 3-D record: passes x layers x experts)
SGLANG_KEYS = {"logical_count", "rank", "average_utilization_rate_over_window"}
VLLM_KEYS = {"per_layer_stats", "current_step", "step_interval", "steps_until_rearrange",
             "physical_to_logical_map", "logical_replica_count", "num_layers",
             "num_logical_experts", "num_physical_experts", "expert_load_window"}
VLLM_LAYER_KEYS = {"layer", "total_tokens", "mean_load", "max_load", "min_load", "balancedness",
                   "physical_load", "logical_load"}


@dataclass(frozen=True, eq=False)
class MeasuredLoads:
    """Tokens per (MoE layer, logical expert), summed over `steps` forward passes."""

    counts: np.ndarray  # (MoE layers, experts), float, >= 0, no all-zero row
    layer_ids: tuple[int, ...] | None  # the model layer of each row; None: rows are MoE layers
    total_layers: int | None  # rows of the engine's own per-layer table (SGLang: all layers)
    steps: int  # forward passes the counts cover (1 where the format does not say)
    fmt: str
    path: str

    @property
    def num_experts(self) -> int:
        return int(self.counts.shape[1])

    def per_step(self) -> np.ndarray:
        return self.counts / self.steps


def read_engine_loads(path: str) -> MeasuredLoads:
    """Read a load file in any of the formats above; one-line InputError on anything else."""
    if not os.path.exists(path):
        raise InputError(path, "", "no such file")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".pt", ".pth", ".pkl", ".pickle"):
        raise InputError(path, "", "a torch / pickle file is not read (unpickling runs code): "
                         "save SGLang's logical_count as JSON, e.g. json.dump({'logical_count': "
                         "torch.load(F)['logical_count'].tolist()}, open('load.json', 'w'))")
    if ext == ".npy":
        return _from_array(_read_npy(path), path, "sglang-npy", "logical_count")
    text = read_text(path, MAX_PROFILE_BYTES)
    if not text.strip():
        raise InputError(path, "", "file is empty")
    if ext == ".json" or (ext != ".csv" and text.lstrip().startswith("{")):
        return _from_json(parse_json(text, path), text, path)
    if ext not in (".csv", ".txt", ""):
        raise InputError(path, "", f"unknown format {ext!r}: expected a .json (SGLang, vLLM "
                         "EPLB or autopar), .npy (SGLang logical_count) or .csv (autopar) file")
    return _from_csv(text, path)


def _from_json(doc: object, text: str, path: str) -> MeasuredLoads:
    if not isinstance(doc, dict):
        raise InputError(path, "", "expected an object: logical_count (SGLang), per_layer_stats "
                         "or expert_load_window (vLLM EPLB) or layers (autopar)")
    if "layers" in doc:  # autopar's profile: its own reader, its own checks
        rows = doc["layers"]
        n = len(rows) if isinstance(rows, list) else 0
        e = len(rows[0]) if n and isinstance(rows[0], list) else 0
        _shape(path, "layers", n, e)
        w, _ = _read_json(text, path, n, e)
        return _finish(w, None, None, 1, "autopar-json", path)
    if "logical_count" in doc:
        _known(doc, SGLANG_KEYS, path, "")
        return _from_array(_nested(doc["logical_count"], path, "logical_count"), path,
                           "sglang-json", "logical_count")
    if "per_layer_stats" in doc or "expert_load_window" in doc:
        _known(doc, VLLM_KEYS, path, "")
        return _from_vllm(doc, path)
    keys = ", ".join(sorted(str(k) for k in doc)[:6])
    raise InputError(path, "", f"no load table (keys: {keys}); expected logical_count "
                     "(SGLang), per_layer_stats or expert_load_window (vLLM EPLB) or layers "
                     "(autopar)")


def _from_vllm(doc: dict, path: str) -> MeasuredLoads:
    if "per_layer_stats" in doc:
        stats = doc["per_layer_stats"]
        if not isinstance(stats, list) or not stats:
            raise InputError(path, "per_layer_stats", "expected a non-empty list of layers")
        rows = []
        for i, s in enumerate(stats):
            field = f"per_layer_stats[{i}]"
            if not isinstance(s, dict) or "logical_load" not in s:
                raise InputError(path, field, "expected an object with logical_load")
            _known(s, VLLM_LAYER_KEYS, path, field)
            if s.get("layer", i) != i:
                raise InputError(path, f"{field}.layer", f"layers out of order: {s['layer']!r}"
                                 f" at position {i}")
            rows.append(s["logical_load"])
        e = len(rows[0]) if isinstance(rows[0], list) else 0
        _shape(path, "per_layer_stats", len(rows), e)
        m = _json_matrix(rows, path, "per_layer_stats[].logical_load", len(rows), e, "layers")
        return _finish(m, None, None, 1, "vllm-eplb", path)
    window = _nested(doc["expert_load_window"], path, "expert_load_window")
    if window.ndim != 3:
        raise InputError(path, "expert_load_window", f"expected [window, MoE layers, physical "
                         f"experts], got {window.ndim} dimensions")
    if "physical_to_logical_map" not in doc:
        raise InputError(path, "physical_to_logical_map", "missing: needed to turn the "
                         "window's physical slots into logical experts")
    p2l = _nested(doc["physical_to_logical_map"], path, "physical_to_logical_map")
    _, n, p = window.shape
    if p2l.shape != (n, p) or np.any(p2l != np.round(p2l)):
        raise InputError(path, "physical_to_logical_map", f"expected {n} x {p} integers (the "
                         f"window's layers x slots), got shape {list(p2l.shape)}")
    e = int(p2l.max()) + 1
    _shape(path, "physical_to_logical_map", n, e)
    counts = np.zeros((n, e))
    summed = window.sum(axis=0)
    for layer in range(n):
        np.add.at(counts[layer], p2l[layer].astype(int), summed[layer])
    steps = max(1, int((window.sum(axis=(1, 2)) > 0).sum()))
    return _finish(counts, None, None, steps, "vllm-window", path)


def _from_array(a: np.ndarray, path: str, fmt: str, field: str) -> MeasuredLoads:
    """SGLang's logical_count: [layers, experts] or [passes, layers, experts]; zero rows are
    dense layers, and passes with no token (an unfilled ring buffer) are not counted."""
    if a.ndim not in (2, 3):
        raise InputError(path, field, f"expected [layers, experts] or [passes, layers, "
                         f"experts], got {a.ndim} dimensions")
    steps = 1
    if a.ndim == 3:
        steps = max(1, int((a.sum(axis=(1, 2)) > 0).sum()))
        a = a.sum(axis=0)
    _shape(path, field, *a.shape)
    live = [i for i in range(a.shape[0]) if a[i].sum() > 0]
    if not live:
        raise InputError(path, field, "no routed tokens in any layer")
    return _finish(a[live], tuple(live), int(a.shape[0]), steps, fmt, path)


def _from_csv(text: str, path: str) -> MeasuredLoads:
    """autopar's CSV; its shape is taken from the largest ids, bounded before any table is
    made (spec.loads then checks every row)."""
    n = e = 0
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if lineno == 1 or len(row) != 3:
            continue
        try:
            layer, expert = int(row[0]), int(row[1])
        except ValueError:
            continue
        if layer >= MAX_LAYERS or expert >= MAX_EXPERTS:
            raise InputError(path, f"line {lineno}", f"layer {layer} / expert {expert} above "
                             f"the limits ({MAX_LAYERS} layers, {MAX_EXPERTS} experts)")
        n, e = max(n, layer + 1), max(e, expert + 1)
    if not n or not e:
        raise InputError(path, "rows", "no (layer, expert, tokens) row")
    return _finish(_read_csv(text, path, n, e), None, None, 1, "autopar-csv", path)


def _read_npy(path: str) -> np.ndarray:
    raw = read_bytes(path, MAX_PROFILE_BYTES)
    try:
        a = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(path, "", f"not a .npy array: {exc}") from None
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "iuf":
        raise InputError(path, "", f"expected a numeric array, got {getattr(a, 'dtype', a)!r}")
    return _counts(a.astype(float), path, "logical_count")


def _nested(raw: object, path: str, field: str) -> np.ndarray:
    """A nested JSON list of numbers as an array: rectangular, numeric, bounded."""
    def walk(x: object, at: str, depth: int) -> None:
        if depth > 3:
            raise InputError(path, at, "nested deeper than [passes, layers, experts]")
        if isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, f"{at}[{i}]", depth + 1)
        elif type(x) not in (int, float):
            raise InputError(path, at, f"{x!r} is not a number")

    walk(raw, field, 0)
    try:
        a = np.asarray(raw, dtype=float)
    except ValueError:
        raise InputError(path, field, "ragged: rows of different lengths") from None
    if a.size > MAX_VALUES:
        raise InputError(path, field, f"{a.size} values, more than {MAX_VALUES}")
    return _counts(a, path, field)


def _counts(a: np.ndarray, path: str, field: str) -> np.ndarray:
    bad = np.argwhere(~np.isfinite(a) | (a < 0))
    if len(bad):
        idx = tuple(int(v) for v in bad[0])
        _check_count(float(a[idx]), path, field + "".join(f"[{i}]" for i in idx))
    return a


def _shape(path: str, field: str, layers: int, experts: int) -> None:
    if not 1 <= layers <= MAX_LAYERS:
        raise InputError(path, field, f"{layers} layers (1..{MAX_LAYERS})")
    if not 1 <= experts <= MAX_EXPERTS:
        raise InputError(path, field, f"{experts} experts (1..{MAX_EXPERTS})")


def _known(doc: dict, allowed: set[str], path: str, at: str) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        field = f"{at}.{unknown[0]}" if at else unknown[0]
        raise InputError(path, field, f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _finish(counts: np.ndarray, ids, total, steps: int, fmt: str, path: str) -> MeasuredLoads:
    for i, row in enumerate(counts):
        if row.sum() <= 0:
            raise InputError(path, f"layer {i}", "no routed tokens (all counts are 0)")
    return MeasuredLoads(np.asarray(counts, dtype=float), ids, total, steps, fmt, path)
