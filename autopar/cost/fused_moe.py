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


def moe_roofline(m: ModelSpec, hw: HardwareSpec, calib: Calibration, dtype: str,
                 shape: MoEShape, tp: int, ep: int, tokens: float,
                 slots: float | None = None) -> float:
    """Roofline of one gated MoE layer on one EP rank: `tokens` enter over the EP group,
    tokens x top-k / ep expert-token pairs land on the rank's `slots` expert copies (experts
    / ep without replicas), each holding 3 x hidden x inter / tp weights, of which the
    touched ones are read."""
    h, i, k, e = shape
    routed, il = tokens * k / ep, i / tp
    local = e / ep if slots is None else slots
    touched = 1.0 - (1.0 - k / e) ** (routed * e / (k * local)) if k < e else 1.0
    flops = 6 * h * il * routed
    nbytes = (local * touched * 3 * h * il * MOE_DTYPES[dtype]
              + routed * 2 * h * m.dtype_bytes)
    gpu = hw.gpu
    peak = gpu.flops("fp8" if dtype == "fp8_block" else dtype)  # nvfp4: the fp4 peak
    return max(flops / peak, nbytes / (gpu.hbm_bytes_per_s * calib.hbm_eff))


def fused_moe_applies(m: ModelSpec, calib: Calibration, dtype: str) -> bool:
    """Whether a served layer's routed experts run as the measured fused op (then the op
    also does the router's permute of the token copies and their weighted sum)."""
    return moe_shape(m) is not None and dtype in calib.kernels.moe


def fused_moe_time(m: ModelSpec, hw: HardwareSpec, calib: Calibration, etp: int, ep: int,
                   routed: float, dtype: str, slots: int | None = None) -> float | None:
    """Time of a served MoE layer's experts on the EP rank that sees `routed` token copies
    over `slots` expert copies: the fused-MoE table of `dtype`, read at the tokens that would
    put `routed` on a rank of a balanced layer (routed x ep / top-k); hot-expert replicas
    (more slots than experts / ep) scale it by the roofline ratio, as they add weights to
    read. None where no table applies (a non-gated MLP, no table of the dtype): the experts
    then run as GEMMs."""
    shape = moe_shape(m)
    if shape is None or dtype not in calib.kernels.moe:
        return None
    tokens = routed * ep / m.top_k
    t = calib.moe_time(dtype, shape, etp, ep, tokens,
                       lambda sh, tp, e, n: moe_roofline(m, hw, calib, dtype, sh, tp, e, n))
    if slots is not None and slots * ep != m.experts:
        t *= moe_roofline(m, hw, calib, dtype, shape, etp, ep, tokens, slots) / moe_roofline(
            m, hw, calib, dtype, shape, etp, ep, tokens)
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
