"""Expert load profiles: how many tokens the router sends to each expert, per MoE layer.

Why: an MoE layer waits for its most loaded GPU, so placement and the cost model need the
per-expert load, not the mean. Real routers are skewed and the hot experts differ per layer.
Sources: `uniform`, `zipf:S[:SEED]` (synthetic skew) or a measured CSV / JSON file
(formats in docs/expert-load.md). Bad input raises InputError naming file, field and problem.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass

import numpy as np

from autopar.errors import InputError
from autopar.spec.datafile import MAX_INT_DIGITS, MAX_PROFILE_BYTES, parse_json, read_text

MAX_FILE_BYTES = MAX_PROFILE_BYTES
MAX_ROWS = 2_000_000
MAX_ZIPF_S = 10.0
CSV_HEADER = ("layer", "expert", "tokens")
JSON_KEYS = ("layers", "coactivation")


@dataclass(frozen=True, eq=False)
class LoadProfile:
    """Relative expert loads per MoE layer; each row of `weights` sums to 1.

    `coactivation[l, i, j]` is the share of layer l's routed tokens that go to both i and j
    (same normalisation as `weights`, so both scale with `per_layer(total)`).
    """

    kind: str  # "uniform" | "zipf" | "measured"
    weights: np.ndarray  # (layers, experts)
    coactivation: np.ndarray | None = None  # (layers, experts, experts), symmetric
    skew: float | None = None
    seed: int | None = None
    path: str | None = None

    @property
    def num_layers(self) -> int:
        return int(self.weights.shape[0])

    @property
    def num_experts(self) -> int:
        return int(self.weights.shape[1])

    def per_layer(self, total_tokens: float) -> np.ndarray:
        """Tokens per (layer, expert), each row scaled to `total_tokens` routed tokens."""
        return self.weights * float(total_tokens)

    def coactivation_per_layer(self, total_tokens: float) -> np.ndarray | None:
        """Tokens routed to both experts of a pair, on the same scale as `per_layer`."""
        return None if self.coactivation is None else self.coactivation * float(total_tokens)

    def describe(self) -> str:
        if self.kind == "zipf":
            return f"zipf:{self.skew:g}:{self.seed}"
        return self.path if self.kind == "measured" and self.path else self.kind


def parse_expert_load(
    spec: str, num_layers: int, num_experts: int, source: str = "--expert-load"
) -> LoadProfile:
    """Parse `uniform`, `zipf:S[:SEED]` or a file path into a profile for the model.

    `num_layers` is the number of MoE layers (one row each); `source` names where the spec came
    from, for error messages about the spec itself (file errors name the file).
    """
    if num_layers < 1 or num_experts < 1:
        raise ValueError("num_layers and num_experts must be >= 1")
    text = spec.strip()
    low = text.lower()
    if low == "uniform":
        w = np.full((num_layers, num_experts), 1.0 / num_experts)
        return LoadProfile("uniform", w)
    if low == "zipf" or low.startswith("zipf:"):
        skew, seed = _parse_zipf(text, source)
        return zipf_profile(num_layers, num_experts, skew, seed)
    if not text:
        raise InputError(source, "expert_load", "empty (expected uniform, zipf:S[:SEED] or a file)")
    return load_file(text, num_layers, num_experts, source)


def zipf_profile(num_layers: int, num_experts: int, skew: float, seed: int = 0) -> LoadProfile:
    """Zipf weights 1/rank^S, permuted per layer so that the hot experts differ per layer."""
    rng = np.random.default_rng(seed)
    base = 1.0 / np.arange(1, num_experts + 1, dtype=float) ** skew
    base /= base.sum()
    w = np.stack([rng.permutation(base) for _ in range(num_layers)])
    return LoadProfile("zipf", w, skew=float(skew), seed=int(seed))


def _parse_zipf(text: str, source: str) -> tuple[float, int]:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[1].strip():
        raise InputError(source, text, "expected zipf:S or zipf:S:SEED (e.g. zipf:1.0:7)")
    try:
        skew = float(parts[1])
    except ValueError:
        raise InputError(source, text, f"zipf skew {parts[1]!r} is not a number") from None
    if not math.isfinite(skew) or not 0.0 <= skew <= MAX_ZIPF_S:
        raise InputError(source, text, f"zipf skew must be in [0, {MAX_ZIPF_S:g}], got {skew:g}")
    seed = 0
    if len(parts) == 3:
        try:
            seed = int(parts[2])
        except ValueError:
            raise InputError(source, text, f"zipf seed {parts[2]!r} is not an integer") from None
        if seed < 0:
            raise InputError(source, text, f"zipf seed must be >= 0, got {seed}")
    return skew, seed


def load_file(path: str, num_layers: int, num_experts: int, source: str) -> LoadProfile:
    """Read a measured CSV or JSON profile; the format is chosen by extension, else sniffed."""
    if not os.path.exists(path):
        raise InputError(
            source, path, "no such file (expected uniform, zipf:S[:SEED] or a CSV/JSON file)"
        )
    text = read_text(path, MAX_FILE_BYTES)  # the limits every input file gets
    if not text.strip():
        raise InputError(path, "", "file is empty")
    ext = os.path.splitext(path)[1].lower()
    is_json = ext == ".json" or (ext != ".csv" and text.lstrip().startswith("{"))
    if is_json:
        weights, coact = _read_json(text, path, num_layers, num_experts)
    else:
        weights, coact = _read_csv(text, path, num_layers, num_experts), None
    sums = weights.sum(axis=1)
    for layer, total in enumerate(sums):
        if total <= 0:
            raise InputError(path, f"layer {layer}", "no routed tokens (all counts are 0)")
    weights = weights / sums[:, None]
    if coact is not None:
        coact = coact / sums[:, None, None]
    return LoadProfile("measured", weights, coact, path=path)


def _read_csv(text: str, path: str, num_layers: int, num_experts: int) -> np.ndarray:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(h.strip().lower() for h in header) != CSV_HEADER:
        raise InputError(path, "header", f"expected 'layer,expert,tokens', got {header!r}")
    out = np.full((num_layers, num_experts), np.nan)
    rows = 0
    for lineno, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        rows += 1
        if rows > min(MAX_ROWS, num_layers * num_experts):
            raise InputError(
                path,
                f"line {lineno}",
                f"too many rows: expected {num_layers} x {num_experts} = "
                f"{num_layers * num_experts} (one per layer and expert, max {MAX_ROWS})",
            )
        if len(row) != 3:
            raise InputError(path, f"line {lineno}", f"expected 3 columns, got {len(row)}")
        layer = _csv_int(row[0], path, lineno, "layer")
        expert = _csv_int(row[1], path, lineno, "expert")
        if not 0 <= layer < num_layers:
            raise InputError(
                path,
                f"line {lineno}: layer",
                f"layer {layer} out of range: the model has {num_layers} MoE layers "
                f"(0..{num_layers - 1})",
            )
        if not 0 <= expert < num_experts:
            raise InputError(
                path,
                f"line {lineno}: expert",
                f"expert {expert} out of range: the model has {num_experts} experts "
                f"(0..{num_experts - 1})",
            )
        try:
            tokens = float(row[2])
        except ValueError:
            raise InputError(
                path, f"line {lineno}: tokens", f"{row[2]!r} is not a number"
            ) from None
        _check_count(tokens, path, f"line {lineno}: tokens")
        if not np.isnan(out[layer, expert]):
            raise InputError(
                path, f"line {lineno}", f"duplicate row for layer {layer}, expert {expert}"
            )
        out[layer, expert] = tokens
    missing = np.argwhere(np.isnan(out))
    if len(missing):
        layer, expert = (int(v) for v in missing[0])
        raise InputError(
            path,
            "rows",
            f"wrong shape: {len(missing)} of {num_layers} x {num_experts} (layer, expert) rows "
            f"missing, first: layer {layer}, expert {expert}",
        )
    return out


def _csv_int(cell: str, path: str, lineno: int, name: str) -> int:
    if len(cell.strip()) > MAX_INT_DIGITS:  # int() would refuse it with a 4300-digit line
        raise InputError(path, f"line {lineno}: {name}",
                         f"an integer of {len(cell.strip())} characters (at most "
                         f"{MAX_INT_DIGITS} digits)")
    try:
        return int(cell.strip())
    except ValueError:
        raise InputError(path, f"line {lineno}: {name}", f"{cell!r} is not an integer") from None


def _check_count(value: float, path: str, field: str) -> None:
    if not math.isfinite(value):
        raise InputError(path, field, f"count must be finite, got {value}")
    if value < 0:
        raise InputError(path, field, f"count must be >= 0, got {value:g}")


def _read_json(
    text: str, path: str, num_layers: int, num_experts: int
) -> tuple[np.ndarray, np.ndarray | None]:
    doc = parse_json(text, path)
    if not isinstance(doc, dict):
        raise InputError(path, "", "expected an object with key 'layers'")
    unknown = sorted(set(doc) - set(JSON_KEYS))
    if unknown:
        raise InputError(path, unknown[0], f"unknown key (allowed: {', '.join(JSON_KEYS)})")
    if "layers" not in doc:
        raise InputError(path, "layers", "missing (list of per-expert token counts per layer)")
    weights = _json_matrix(doc["layers"], path, "layers", num_layers, num_experts, "MoE layers")
    coact = None
    if doc.get("coactivation") is not None:
        raw = doc["coactivation"]
        if not isinstance(raw, list) or len(raw) != num_layers:
            got = len(raw) if isinstance(raw, list) else type(raw).__name__
            raise InputError(
                path, "coactivation", f"wrong shape: expected {num_layers} layers, got {got}"
            )
        mats = []
        for layer, mat in enumerate(raw):
            field = f"coactivation[{layer}]"
            m = _json_matrix(mat, path, field, num_experts, num_experts, "experts")
            bad = np.argwhere(~np.isclose(m, m.T, rtol=1e-9, atol=1e-9))
            if len(bad):
                i, j = (int(v) for v in bad[0])
                raise InputError(path, f"{field}[{i}][{j}]", "matrix is not symmetric")
            mats.append(m)
        coact = np.stack(mats)
    return weights, coact


def _json_matrix(raw: object, path: str, field: str, rows: int, cols: int, what: str) -> np.ndarray:
    if not isinstance(raw, list):
        raise InputError(path, field, f"expected a list, got {type(raw).__name__}")
    if len(raw) != rows:
        raise InputError(path, field, f"wrong shape: {len(raw)} rows, the model has {rows} {what}")
    for i, row in enumerate(raw):
        if not isinstance(row, list):
            raise InputError(path, f"{field}[{i}]", f"expected a list, got {type(row).__name__}")
        if len(row) != cols:
            raise InputError(
                path,
                f"{field}[{i}]",
                f"wrong shape: {len(row)} values, the model has {cols} experts",
            )
        for j, v in enumerate(row):
            if type(v) not in (int, float):
                raise InputError(path, f"{field}[{i}][{j}]", f"{v!r} is not a number")
    m = np.asarray(raw, dtype=float)
    bad = np.argwhere(~np.isfinite(m) | (m < 0))
    if len(bad):
        i, j = (int(v) for v in bad[0])
        _check_count(float(m[i, j]), path, f"{field}[{i}][{j}]")
    return m
