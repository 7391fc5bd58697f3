"""Spec files: a model file (its model, optional workload and notes) or an HF config.json, a
hardware file, a workload mapping. Files are data, never code: `spec.datafile` parses them
within fixed limits, and every field is range-checked by the reader of its section."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def parse_model(data: Any, source: str) -> ModelFile:
    """A model file (autopar YAML) or a Hugging Face config.json, told apart by its keys."""
    if isinstance(data, dict) and "num_hidden_layers" in data:
        from .hf import model_from_hf

        return ModelFile(model_from_hf(data, source), source=source)
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
    return parse_model(read_data(path), str(path))


def parse_hardware(data: Any, source: str) -> HardwareSpec:
    f = Fields(source, data)
    hw = _read_hardware_fields(f)
    f.text("notes")
    f.text("assumptions")
    f.finish()
    return hw


def load_hardware(path: str | Path) -> HardwareSpec:
    return parse_hardware(read_data(path), str(path))


def parse_workload(data: Any, source: str) -> Workload:
    return _read_workload_fields(Fields(source, data))
