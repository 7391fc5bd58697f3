"""Units shared by every spec: bytes per element of each dtype, and the decimal gigabyte
the input files state memory in; the fp8 training recipes and what each stores per element."""

DTYPE_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
GB = 1e9

# fp8 recipes, named as Megatron-LM's `--fp8-recipe` (Transformer Engine's recipes): delayed
# (DelayedScaling: per-tensor scale from the amax history), tensorwise (Float8CurrentScaling:
# per-tensor scale from this tensor's amax), blockwise (Float8BlockScaling, DeepSeek-V3's:
# 1x128 activation / gradient tiles, 128x128 weight blocks, fp32 scales), mxfp8 (MXFP8BlockScaling:
# 1x32 blocks, E8M0 scales; Blackwell tensor cores only).
FP8_RECIPES = ("delayed", "tensorwise", "blockwise", "mxfp8")
# The measured-GEMM table (calibration `gemm_table` dtype) each recipe's GEMMs are priced on.
FP8_GEMM_KEY = {"delayed": "fp8", "tensorwise": "fp8", "blockwise": "fp8_block",
                "mxfp8": "mxfp8"}
# Dtypes a calibration's GEMM table may hold: the storage dtypes and the block-scaled fp8 GEMMs.
GEMM_DTYPES = (*DTYPE_BYTES, "fp8_block", "mxfp8")
# Scale bytes stored per fp8 element: (activations and gradients, weights).
FP8_SCALE_BYTES = {"delayed": (0.0, 0.0), "tensorwise": (0.0, 0.0),
                   "blockwise": (4 / 128, 4 / 128**2), "mxfp8": (1 / 32, 1 / 32)}
# GPU types with block-scaled fp8 MMA (sm_100 tcgen05 kind::mxf8f6f4): MXFP8 runs only there.
MXFP8_GPUS = ("B200", "B300", "GB200", "GB300")
