"""Spec files: a model file (its model, optional workload and notes) or an HF config.json, a
hardware file, a workload mapping. Files are data, never code: `spec.datafile` parses them
within fixed limits, and every field is range-checked by the reader of its section."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from .datafile import read_data
from .fields import Fields
from .hardware import HardwareSpec, _read_hardware_fields
from .model import ModelSpec, _read_model_fields
from .workload import Workload, _read_workload_fields


@dataclass(frozen=True)
class ModelFile:
    model: ModelSpec
    workload: Workload | None = None
    notes: str = ""
    source: str = ""
    extras: dict[str, Any] = field(default_factory=dict)


_HF_KEYS = ("num_hidden_layers", "model_type", "text_config", "architectures")


def is_hf_config(data: Any) -> bool:
    """An HF config.json, not autopar's YAML (whose model is under `model:`)."""
    return isinstance(data, dict) and "model" not in data and any(k in data for k in _HF_KEYS)


def parse_model(data: Any, source: str, hf_id: str | None = None) -> ModelFile:
    """A model file (autopar YAML) or a Hugging Face config.json, told apart by its keys."""
    if is_hf_config(data):
        from .hf import model_from_hf

        return ModelFile(model_from_hf(data, source, hf_id), source=source)
    f = Fields(source, data)
    notes = f.text("notes")
    f.text("assumptions")
    m = f.section("model")
    model = _read_model_fields(m)
    m.finish()
    workload = _read_workload_fields(f.section("workload")) if f.has("workload") else None
    f.used.add("workload")
    f.finish()
    return ModelFile(model, workload, notes, source)


def load_model(path: str | Path) -> ModelFile:
    """`--model`: autopar's YAML, an HF config.json, or an HF checkpoint folder, of which
    only `config.json` is read (weights, tokenizer and index are never opened)."""
    p = Path(path)
    if p.is_dir():
        config = p / "config.json"
        if not config.is_file():
            raise InputError(str(path), "", "a model directory must hold config.json (an HF "
                                            "checkpoint folder); give a model YAML otherwise")
        return parse_model(read_data(config), str(config), checkpoint_id(p))
    folder = checkpoint_id(p.parent) if p.name == "config.json" else None
    return parse_model(read_data(path), str(path), folder)


def checkpoint_id(folder: Path) -> str | None:
    """The HF id of a checkpoint folder: `org/name` in the hub cache's layout
    (`models--org--name/snapshots/REV`), else the folder's own name."""
    parts = folder.absolute().parts
    for part in reversed(parts):
        if part.startswith("models--") and part.count("--") >= 2:
            return "/".join(part[len("models--"):].split("--", 1))
    return folder.absolute().name or None


def parse_hardware(data: Any, source: str) -> HardwareSpec:
    """A one-type hardware file; a `groups:` file of one group is the same spec, one of
    several groups is refused in one line (`load_any_hardware` reads it)."""
    from .groups import is_grouped, one_type, parse_groups, refuse_mixed

    if is_grouped(data):
        mixed = parse_groups(data, source)
        hw = one_type(mixed)
        if hw is None:
            raise refuse_mixed(mixed, "this path")
        return hw
    f = Fields(source, data)
    hw = _read_hardware_fields(f)
    f.text("notes")
    f.text("assumptions")
    f.finish()
    return hw


def load_hardware(path: str | Path) -> HardwareSpec:
    return parse_hardware(read_data(path), str(path))


def load_any_hardware(path: str | Path):
    """A hardware file of one GPU type (`HardwareSpec`) or of several groups
    (`groups.MixedHardware`); a `groups:` file of one group is the one-type spec."""
    from .groups import is_grouped, one_type, parse_groups

    data = read_data(path)
    if not is_grouped(data):
        return parse_hardware(data, str(path))
    mixed = parse_groups(data, str(path))
    return one_type(mixed) or mixed


def parse_workload(data: Any, source: str) -> Workload:
    return _read_workload_fields(Fields(source, data))
