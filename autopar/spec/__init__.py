"""spec"""

from .core import (  # noqa: F401
    DTYPE_BYTES,
    GB,
    GPUSpec,
    HardwareSpec,
    LinkSpec,
    MLASpec,
    ModelFile,
    ModelSpec,
    Workload,
    gpu_catalogue,
    load_hardware,
    load_model,
    parse_hardware,
    parse_model,
    parse_workload,
)
