"""A study file: a base model / hardware / workload and the axes to vary, resolved into
points, each the fully stated inputs of one solve (docs/studies.md).

The axes are dotted keys into the base's data (`hardware.nodes`, `hardware.gpu.type`,
`model.experts`, `workload.global_batch`, `pins.tp`), `framework`, or `model` / `hardware`
(another file). Paths are data: relative to the study's folder and never outside its parent
(a study in problems/studies/ may read problems/models/ and problems/hw/).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..spec.datafile import read_data
from ..spec.fields import Fields
from .target import parse_prices

MAX_POINTS = 10_000  # a study is a grid of solves; more is a mistake, not a study
ROOTS = ("model", "hardware", "workload", "pins")  # what a dotted axis key starts with
KEYS = ("study", "model", "hardware", "workload", "pins", "framework", "time_limit_s",
        "grid", "points", "prices", "notes")


@dataclass(frozen=True)
class Point:
    """One solve's inputs, stated in full: the data the spec readers parse."""

    index: int
    overrides: dict[str, Any]  # the axis values that made it (for the table)
    model: dict[str, Any]
    hardware: dict[str, Any]
    workload: dict[str, Any] | None
    pins: dict[str, Any]
    framework: str
    time_limit_s: float
    sources: dict[str, str] = field(default_factory=dict)  # model / hardware file names

    @property
    def key(self) -> str:
        """The hash of the resolved inputs: a point's identity for --resume."""
        text = json.dumps({"model": self.model, "hardware": self.hardware,
                           "workload": self.workload, "pins": self.pins,
                           "framework": self.framework, "time_limit_s": self.time_limit_s},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Study:
    name: str
    source: str
    points: list[Point]
    prices: dict[str, float] = field(default_factory=dict)  # US$ per GPU-hour, as stated


def _path(base: Path, name: Any, src: str, key: str) -> Path:
    """A file the study names, inside the folder above the study's (no escaping it)."""
    if not isinstance(name, str) or not name:
        raise InputError(src, key, f"a file path, got {name!r}")
    root = base.parent.resolve()
    p = (base / name).resolve()
    if root not in p.parents:
        raise InputError(src, key, f"{name!r} resolves outside {root} (paths stay under the "
                         "study's parent folder)")
    if not p.is_file():
        raise InputError(src, key, f"no such file: {name!r}")
    return p


def _set(data: dict, path: list[str], value: Any, src: str, key: str) -> None:
    """Set data[a][b]... = value, creating the sections it needs."""
    for part in path[:-1]:
        nxt = data.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise InputError(src, key, f"{part!r} is not a section in the base")
        data = nxt
    data[path[-1]] = value


def _axes(f: Fields) -> list[dict[str, Any]]:
    """The points' overrides: the grid's product, then the listed points (each whole: an
    axis a listed point leaves out keeps the base's value, not the grid's)."""
    out: list[dict[str, Any]] = []
    if f.has("grid"):
        grid = f.section("grid")
        names = sorted(grid.data)
        values = []
        for n in names:
            v = grid.data[n]
            if not isinstance(v, list) or not v:
                raise InputError(f.source, f"grid.{n}", "a non-empty list of values")
            values.append(v)
            grid.used.add(n)
        count = 1
        for v in values:
            count *= len(v)
        if count > MAX_POINTS:
            raise InputError(f.source, "grid", f"{count} points: more than {MAX_POINTS}")
        out += [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]
    if f.has("points"):
        pts = f.data["points"]
        f.used.add("points")
        if not isinstance(pts, list) or not all(isinstance(x, dict) for x in pts):
            raise InputError(f.source, "points", "a list of mappings (axis: value)")
        out += [dict(x) for x in pts]
    if len(out) > MAX_POINTS:
        raise InputError(f.source, "points", f"{len(out)} points: more than {MAX_POINTS}")
    return out or [{}]


def load_study(path: str | Path) -> Study:
    """Read a study file and resolve every point (each read and range-checked when solved)."""
    path = Path(path)
    src = str(path)
    f = Fields(src, read_data(path))
    base = path.parent
    name = f.str("study", default=path.stem)
    model_file = _path(base, f.str("model"), src, "model")
    hw_file = _path(base, f.str("hardware"), src, "hardware")
    workload = f.data.get("workload")
    f.used.add("workload")
    if workload is not None and not isinstance(workload, dict):
        raise InputError(src, "workload", "a mapping (kind, global_batch, seq_len, ...)")
    pins = f.data.get("pins", {})
    f.used.add("pins")
    if not isinstance(pins, dict):
        raise InputError(src, "pins", "a mapping of pinned options")
    framework = f.str("framework", default="any")
    limit = f.float("time_limit_s", 0.01, 3600.0, default=10.0)
    prices = f.data.get("prices")
    f.used.add("prices")
    if prices is not None and not isinstance(prices, dict):
        raise InputError(src, "prices", "a mapping of GPU type: US$ per GPU-hour")
    prices = parse_prices(prices, f"{src}: prices")
    f.text("notes")
    axes = _axes(f)
    f.finish()
    cache: dict[Path, Any] = {}

    def data_of(p: Path) -> dict:
        if p not in cache:
            cache[p] = read_data(p)
        return copy.deepcopy(cache[p])

    points = []
    for i, over in enumerate(axes):
        mf, hf = model_file, hw_file
        if "model" in over:
            mf = _path(base, over["model"], src, f"points[{i}].model")
        if "hardware" in over:
            hf = _path(base, over["hardware"], src, f"points[{i}].hardware")
        model, hw = data_of(mf), data_of(hf)
        wl = copy.deepcopy(workload if workload is not None else
                           (model.get("workload") if isinstance(model, dict) else None))
        p_pins, fw, tl = dict(pins), framework, limit
        for key, value in over.items():
            if key in ("model", "hardware"):
                continue
            if key == "framework":
                fw = str(value)
                continue
            if key == "time_limit_s":
                tl = float(value)
                continue
            root, *rest = key.split(".")
            if root not in ROOTS or not rest:
                raise InputError(src, key, "an axis is model, hardware, framework, "
                                 "time_limit_s or a dotted key under model. / hardware. / "
                                 "workload. / pins.")
            if root == "pins":
                p_pins[".".join(rest)] = value
            elif root == "workload":
                wl = wl if isinstance(wl, dict) else {}
                _set(wl, rest, value, src, key)
            elif root == "model":
                target = model.get("model", model) if "num_hidden_layers" not in model \
                    else model
                _set(target, rest, value, src, key)
            else:
                _set(hw, rest, value, src, key)
        if isinstance(model, dict) and "workload" in model:
            del model["workload"]  # the point's workload is stated on its own
        points.append(Point(i, over, model, hw, wl, p_pins, fw, tl,
                            {"model": str(mf), "hardware": str(hf)}))
    return Study(name, src, points, prices)
