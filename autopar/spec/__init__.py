"""Inputs: the model, hardware and workload specs (frozen dataclasses), their readers with
field-by-field validation, the bounded file reader, HF config.json, expert-load profiles and
the GPU catalogue. Every later stage takes these objects; nothing here imports another stage."""

from .datafile import MAX_FILE_BYTES, read_data
from .files import (
    ModelFile,
    load_hardware,
    load_model,
    parse_hardware,
    parse_model,
    parse_workload,
)
from .hardware import GPUSpec, HardwareSpec, LinkSpec, gpu_catalogue
from .model import MLASpec, ModelSpec
from .units import DTYPE_BYTES, GB
from .workload import Workload

__all__ = [
    "ModelSpec", "MLASpec", "HardwareSpec", "GPUSpec", "LinkSpec", "Workload", "ModelFile",
    "load_model", "load_hardware", "parse_model", "parse_hardware", "parse_workload",
    "read_data", "gpu_catalogue", "DTYPE_BYTES", "GB", "MAX_FILE_BYTES",
]
