"""Units shared by every spec: bytes per element of each dtype, and the decimal gigabyte
the input files state memory in."""

DTYPE_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
GB = 1e9
