"""fp8 recipes as Transformer Engine runs them (docs/cost-model.md [fp8-gemm, fp8-cast,
fp8-weights]) and quantized serving checkpoints (fp8, nvfp4, mxfp4 experts [mxfp4]: where
they can run, at which rate and which table prices them): which measured GEMM table a
recipe's GEMMs are priced on, the quantize kernels around every fp8 linear layer, and the
fp8 copy of the weights made once per optimizer step (cached across micro-batches) with the
memory it holds. Everything here is a memory-bound kernel at HBM speed with one kernel
floor each, like `layer._elementwise`."""

from __future__ import annotations

from typing import Any

from ..errors import InputError
from ..model.components import Component, fp8_saved_values
from ..model.recompute import Rerun
from ..spec import HardwareSpec, ModelSpec, Workload, gpu_catalogue
from ..spec.units import FP8_GEMM_KEY, FP8_SCALE_BYTES, MXFP8_GPUS

Problem = Any  # a `layer.Problem` (layer imports this module, so it is not imported here)


def check_recipe(w: Workload, hw: HardwareSpec, source: str) -> None:
    """MXFP8 needs block-scaled tensor cores (Blackwell); on anything else it cannot run."""
    if w.fp8_recipe == "mxfp8" and hw.gpu.name not in MXFP8_GPUS:
        raise InputError(source, "workload.fp8_recipe",
                         f"mxfp8 runs on Blackwell block-scaled tensor cores "
                         f"({', '.join(MXFP8_GPUS)}), not on {hw.gpu.name}: use tensorwise, "
                         "delayed or blockwise")


def check_weights(m: ModelSpec, hw: HardwareSpec, source: str) -> None:
    """An nvfp4 checkpoint's GEMMs run on FP4 tensor cores (Blackwell); a GPU that states no
    fp4 peak has none (Hopper and older cannot run NVFP4 GEMMs), so it cannot serve one."""
    if m.weight_dtype == "nvfp4" and "fp4" not in hw.gpu.peak_flops:
        fp4 = [name for name, g in gpu_catalogue().items() if "fp4" in g.get("tflops", {})]
        raise InputError(source, "model.weight_dtype",
                         f"nvfp4 weights need FP4 tensor cores ({', '.join(fp4)}); "
                         f"{hw.gpu.name} has no fp4 peak (Hopper and older cannot run NVFP4 "
                         "GEMMs): serve the bf16 or fp8 checkpoint there")


def linear_dtype(p: Problem, role: str) -> str:
    """[mxfp4] The precision a linear layer's GEMM runs at: the problem's GEMM precision,
    but MXFP4 experts (gpt-oss) run on FP4 tensor cores where the GPU has them (Blackwell:
    FlashInfer's MXFP4 MoE kernel) and elsewhere are dequantized to 16 bits inside the GEMM
    (Hopper: Triton's matmul_ogs, W4A16), so they run at the 16-bit rate."""
    if role == "expert" and p.model.expert_weight_dtype == "mxfp4":
        return "mxfp4" if "fp4" in p.hw.gpu.peak_flops else p.model.dtype
    return p.gemm_dtype


def peak_dtype(p: Problem) -> str:
    """[metrics] The precision whose peak MFU is taken against: the fastest any GEMM of the
    model runs at (MXFP4 experts on FP4 tensor cores: the fp4 peak), so MFU cannot pass 1."""
    return "mxfp4" if linear_dtype(p, "expert") == "mxfp4" else p.gemm_dtype


def fp4_gemms(m: ModelSpec) -> bool:
    """Whether some GEMM may run at the fp4 peak (an nvfp4 checkpoint, MXFP4 experts): what
    a compute bound (MFU <= 1) must allow for."""
    return m.weight_dtype == "nvfp4" or m.expert_weight_dtype == "mxfp4"


def active(p: Problem) -> str | None:
    """The recipe that runs: the workload's, where the GPU has fp8 tensor cores (without
    them the GEMMs fall back to 16-bit, and nothing is cast)."""
    w = p.workload
    if w.precision == "fp8" and w.fp8_recipe and "fp8" in p.hw.gpu.peak_flops:
        return w.fp8_recipe
    return None


def gemm_key(p: Problem, dtype: str) -> str:
    """[fp8-gemm] The calibration GEMM table an fp8 GEMM of the running recipe is priced on
    (fp8, fp8_block, mxfp8), or without a recipe, of the fp8 checkpoint's weight scaling
    (block-scaled: fp8_block); other dtypes (nvfp4 among them) are their own key."""
    recipe = active(p)
    if dtype != "fp8":
        return dtype
    if recipe:
        return FP8_GEMM_KEY[recipe]
    m = p.model  # an fp8 checkpoint served as stored: its scaling picks the kernels
    return "fp8_block" if m.weight_dtype == "fp8" and m.weight_scaling == "block" else "fp8"


def kernel_bytes(elems: float, b: float, recipe: str, copies: int,
                 weights: bool = False) -> list[float]:
    """[fp8-cast] Bytes each kernel of one quantization moves: read the 16-bit tensor, write
    `copies` fp8 copies (training: row-wise and transposed / column-wise) with their scales;
    current per-tensor scaling (tensorwise) first reads the tensor once more for its amax."""
    scale = FP8_SCALE_BYTES[recipe][1 if weights else 0]
    out = [elems * (b + copies * (1.0 + scale))]
    if recipe == "tensorwise":
        out.insert(0, elems * b)
    return out


def kernels_time(kernels: list[float], p: Problem) -> float:
    bw = p.hw.gpu.hbm_bytes_per_s * p.calib.hbm_eff
    return sum(max(x / bw, p.calib.kernel_floor_s) for x in kernels if x > 0)


def linear_casts(p: Problem, rows: float, k: float, n: float) -> tuple[float, float]:
    """[fp8-cast] (forward, backward) quantize time of one fp8 linear layer whose GEMM on
    this GPU is `rows` x `k` by `k` x `n`: its input in the forward, its output gradient in
    the backward. Zero when no recipe runs."""
    recipe = active(p)
    if recipe is None or not k:
        return 0.0, 0.0
    b, copies = p.model.dtype_bytes, 2 if p.training else 1
    fwd = kernels_time(kernel_bytes(rows * k, b, recipe, copies), p)
    bwd = kernels_time(kernel_bytes(rows * n, b, recipe, copies), p) if p.training else 0.0
    return fwd, bwd


def weight_copy_bytes(p: Problem) -> float:
    """[fp8-weights] Bytes per fp8 linear-layer parameter of its cached fp8 copies: row-wise
    and transposed (Hopper tensorwise / blockwise) or row-wise and column-wise (MXFP8), with
    their scales. Zero for serving (checkpoints are quantized offline) and without a recipe."""
    recipe = active(p)
    if recipe is None or not p.training:
        return 0.0
    return 2 * (1.0 + FP8_SCALE_BYTES[recipe][1])


def weight_cast_time(p: Problem, tensors: list[tuple[float, int]]) -> float:
    """[fp8-weights] Once per optimizer step every fp8 weight matrix on this GPU is quantized
    into its fp8 copies, one kernel each; `tensors`: (parameters of one matrix, how many)."""
    recipe = active(p)
    if recipe is None or not p.training:
        return 0.0
    b = p.model.dtype_bytes
    return sum(count * kernels_time(kernel_bytes(params, b, recipe, 2, weights=True), p)
               for params, count in tensors if params and count)


def saved_per_token(c: Component, p: Problem, rerun: Rerun | None = None,
                    modules: tuple[str, ...] = ()) -> tuple[float, float]:
    """[fp8-activations] Saved bytes per token of `c` (TP-split part, replicated part), less
    what selective recompute's `rerun` drops. In fp8 training Transformer Engine keeps each
    fp8 GEMM's input for the weight gradient quantized, in one orientation: 1 byte + the
    recipe's activation scales per value instead of 16 bits; what a module reruns it keeps
    none of, fp8 or not. 16-bit runs (and serving) are the components' bytes unchanged."""
    r = rerun or Rerun()
    sh, rep = c.act_bytes_sharded - r.drop_sharded, c.act_bytes_replicated - r.drop_replicated
    recipe = active(p)
    if recipe is None or not p.training:
        return sh, rep
    width, b = 1.0 + FP8_SCALE_BYTES[recipe][0], p.model.dtype_bytes
    fs, fr, extra = fp8_saved_values(c, recipe, p.flash_attention, modules)
    return (sh + (width - b) * max(fs - r.drop_fp8_sharded, 0.0) + width * extra,
            rep + (width - b) * max(fr - r.drop_fp8_replicated, 0.0))
