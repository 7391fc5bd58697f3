"""[mxfp4] MXFP4 experts (gpt-oss), recomputed for `autopar check` from the OCP Microscaling
(MX) format rather than the planner's tables: each block of 32 values is 32 four-bit E2M1
elements and one eight-bit E8M0 scale, 4.25 bits a value; only the routed experts are
stored so (attention, router, embedding and head are 16-bit). Their GEMMs run on FP4 tensor
cores where the GPU has them and at the 16-bit rate elsewhere (dequantized in the kernel),
so MFU is taken against the fp4 peak on the first and the plan's GEMM precision otherwise.
"""

from __future__ import annotations

from ..spec import HardwareSpec, ModelSpec

MXFP4_BYTES = (32 * 4 + 8) / 32 / 8  # bytes per value: 32 E2M1 nibbles + one E8M0 byte


def expert_weight_bytes(m: ModelSpec) -> float:
    """Bytes per stored routed-expert weight: MXFP4's, else the blocks' linear layers'."""
    return MXFP4_BYTES if m.expert_weight_dtype == "mxfp4" else m.linear_bytes


def peak_dtype(m: ModelSpec, hw: HardwareSpec, gemm: str) -> str:
    """The precision [metrics] names for the plan's MFU: mxfp4 (the fp4 peak) where MXFP4
    experts meet fp4 tensor cores, else `gemm`, the precision the linear layers run at."""
    if m.expert_weight_dtype == "mxfp4" and "fp4" in hw.gpu.peak_flops:
        return "mxfp4"
    return gemm
