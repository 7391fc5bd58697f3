"""Units shared by every spec: bytes per element of each dtype, and the decimal gigabyte
the input files state memory in; the fp8 training recipes and what each stores per element;
the stored weight formats of quantized serving checkpoints."""

DTYPE_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
GB = 1e9

# Bytes per stored weight of the blocks' linear layers (`model.weight_dtype`): the storage
# dtypes, and NVFP4 (NVIDIA's 4-bit float: E2M1 values, half a byte, with one fp8 E4M3 scale
# per 16 values; the one fp32 scale per tensor is negligible). Not a `dtype`: nothing else
# (norms, KV cache, activations) is stored in it.
# MXFP4 (OCP Microscaling: E2M1 values with one E8M0 power-of-two scale per 32, 4.25 bits a
# value) is gpt-oss's expert format (`model.expert_weight_dtype`).
WEIGHT_BYTES: dict[str, float] = {**DTYPE_BYTES, "nvfp4": 0.5 + 1 / 16, "mxfp4": 0.5 + 1 / 32}
WEIGHT_DTYPES = ("bf16", "fp16", "fp8", "nvfp4")
EXPERT_WEIGHT_DTYPES = (*WEIGHT_DTYPES, "mxfp4")
# Peak FLOP/s keys a GPU may state (`gpu.tflops`): the storage dtypes and the dense FP4
# tensor-core rate (Blackwell), at which NVFP4 (and MXFP4) GEMMs run (`GPUSpec.flops("nvfp4")`).
PEAK_DTYPES = (*DTYPE_BYTES, "fp4")
PEAK_KEY = {"nvfp4": "fp4", "mxfp4": "fp4"}  # GEMM dtype -> its peak, where the names differ

# fp8 recipes, named as Megatron-LM's `--fp8-recipe` (Transformer Engine's recipes): delayed
# (DelayedScaling: per-tensor scale from the amax history), tensorwise (Float8CurrentScaling:
# per-tensor scale from this tensor's amax), blockwise (Float8BlockScaling, DeepSeek-V3's:
# 1x128 activation / gradient tiles, 128x128 weight blocks, fp32 scales), mxfp8 (MXFP8BlockScaling:
# 1x32 blocks, E8M0 scales; Blackwell tensor cores only).
FP8_RECIPES = ("delayed", "tensorwise", "blockwise", "mxfp8")
# The measured-GEMM table (calibration `gemm_table` dtype) each recipe's GEMMs are priced on.
FP8_GEMM_KEY = {"delayed": "fp8", "tensorwise": "fp8", "blockwise": "fp8_block",
                "mxfp8": "mxfp8"}
# Dtypes a calibration's GEMM table may hold: the storage dtypes, the block-scaled fp8 GEMMs
# and NVFP4 (block-scaled FP4, 16-value blocks).
GEMM_DTYPES = (*DTYPE_BYTES, "fp8_block", "mxfp8", "nvfp4")
# Scale bytes stored per fp8 element: (activations and gradients, weights).
FP8_SCALE_BYTES = {"delayed": (0.0, 0.0), "tensorwise": (0.0, 0.0),
                   "blockwise": (4 / 128, 4 / 128**2), "mxfp8": (1 / 32, 1 / 32)}
# GPU types with block-scaled fp8 MMA (sm_100 tcgen05 kind::mxf8f6f4): MXFP8 runs only there.
MXFP8_GPUS = ("B200", "B300", "GB200", "GB300")
