"""[fused-moe] A served MoE layer's routed experts as one measured fused-MoE op, the kernel
vLLM and SGLang run (routing, both expert GEMMs and the activation at once), instead of
separate per-expert GEMMs: read from the calibration's `moe_table` (autopar.cost.kernels).
Training keeps grouped GEMMs on the GEMM tables (Megatron's path, large m per expert).
"""

from __future__ import annotations

from functools import lru_cache

from ..model.components import layer_components
from ..spec import HardwareSpec, ModelSpec
from .calibration import Calibration
from .kernels import MOE_DTYPES, MoEShape


def moe_shape(m: ModelSpec) -> MoEShape | None:
    """The (hidden, inter, top-k, experts) a fused-MoE table is keyed by; None for a dense
    model or a non-gated MLP (the tables measure gated SwiGLU experts)."""
    if not m.is_moe or not m.gated_mlp:
        return None
    return m.hidden, m.expert_ffn_hidden, m.top_k, m.experts


# [mxfp4] The measured fused op an MXFP4 MoE is transferred from, by GEMM precision: on FP4
# tensor cores NVFP4's (the same E2M1 values, scales per 16 instead of 32); dequantized to
# 16 bits (Hopper), the 16-bit op's, which reads 16-bit weights where MXFP4 reads 4.25 bits.
MXFP4_TABLE = {"mxfp4": "nvfp4"}


def moe_roofline(m: ModelSpec, hw: HardwareSpec, calib: Calibration, dtype: str,
                 shape: MoEShape, tp: int, ep: int, tokens: float,
                 slots: float | None = None, wbytes: float | None = None) -> float:
    """Roofline of one gated MoE layer on one EP rank: `tokens` enter over the EP group,
    tokens x top-k / ep expert-token pairs land on the rank's `slots` expert copies (experts
    / ep without replicas), each holding 3 x hidden x inter / tp weights (of `wbytes` each;
    None: `dtype`'s), of which the touched ones are read."""
    h, i, k, e = shape
    routed, il = tokens * k / ep, i / tp
    local = e / ep if slots is None else slots
    touched = 1.0 - (1.0 - k / e) ** (routed * e / (k * local)) if k < e else 1.0
    flops = 6 * h * il * routed
    nbytes = (local * touched * 3 * h * il * (wbytes or MOE_DTYPES.get(dtype, 2.0))
              + routed * 2 * h * m.dtype_bytes)
    gpu = hw.gpu
    peak = gpu.flops("fp8" if dtype == "fp8_block" else dtype)  # nvfp4: the fp4 peak
    return max(flops / peak, nbytes / (gpu.hbm_bytes_per_s * calib.hbm_eff))


def fused_moe_applies(m: ModelSpec, calib: Calibration, dtype: str) -> bool:
    """Whether a served layer's routed experts run as the measured fused op (then the op
    also does the router's permute of the token copies and their weighted sum)."""
    return moe_shape(m) is not None and MXFP4_TABLE.get(dtype, dtype) in calib.kernels.moe


def fused_moe_time(m: ModelSpec, hw: HardwareSpec, calib: Calibration, etp: int, ep: int,
                   routed: float, dtype: str, slots: int | None = None) -> float | None:
    """Time of a served MoE layer's experts on the EP rank that sees `routed` token copies
    over `slots` expert copies: the fused-MoE table of `dtype`, read at the tokens that would
    put `routed` on a rank of a balanced layer (routed x ep / top-k); hot-expert replicas
    (more slots than experts / ep) scale it by the roofline ratio, as they add weights to
    read. MXFP4 experts read the table their GEMMs run like (`MXFP4_TABLE`) scaled by the
    ratio of the rooflines at MXFP4's width and rate to the table's [mxfp4]. None where no
    table applies (a non-gated MLP, no table of the dtype): the experts then run as GEMMs."""
    shape, table = moe_shape(m), MXFP4_TABLE.get(dtype, dtype)
    if shape is None or table not in calib.kernels.moe:
        return None
    tokens = routed * ep / m.top_k
    t = calib.moe_time(table, shape, etp, ep, tokens,
                       lambda sh, tp, e, n: moe_roofline(m, hw, calib, table, sh, tp, e, n))
    if m.expert_weight_dtype == "mxfp4":
        t *= moe_roofline(m, hw, calib, dtype, shape, etp, ep, tokens, None, m.expert_bytes
                          ) / moe_roofline(m, hw, calib, table, shape, etp, ep, tokens)
    if slots is not None and slots * ep != m.experts:
        t *= moe_roofline(m, hw, calib, table, shape, etp, ep, tokens, slots) / moe_roofline(
            m, hw, calib, table, shape, etp, ep, tokens)
    return t


def expert_flops_share(m: ModelSpec, name: str) -> float:
    """Share of a routed expert's FLOPs in component `name` (fc1 / fc2): how the fused op's
    time is split over the two in the plan."""
    parts = _expert_parts(m)
    return parts[name] / sum(parts.values())


@lru_cache(maxsize=64)
def _expert_parts(m: ModelSpec) -> dict[str, float]:
    layer = next(x for x in range(m.layers) if m.is_moe_layer(x))
    return {c.name: c.flops_per_token for c in layer_components(m, layer, 1, True, True, False)
            if c.is_expert}
