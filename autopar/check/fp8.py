"""The fp8 recipe's figures recomputed for `autopar check`, from docs/cost-model.md
[fp8-cast, fp8-weights] and the model's components alone (never the cost model): the fp8
weight copies in each GPU's memory, each stage's quantize kernels per micro-batch and its
weight casts per optimizer step."""

from __future__ import annotations

from typing import Any

from ..model.components import Component, fp8_saved_values, layer_components
from ..model.recompute import Rerun, module_reruns
from ..spec import HardwareSpec, ModelSpec, Workload
from ..spec.units import FP8_SCALE_BYTES
from .finding import Findings, close

TOL = 1e-4
# `lay` below is a `recompute.Layout` (not imported: recompute imports this module)
LINEAR = ("column", "row", "expert")


def recipe(hw: HardwareSpec, w: Workload) -> str | None:
    """The recipe that runs: fp8 precision on a GPU with fp8 tensor cores (else 16-bit)."""
    if w.precision == "fp8" and w.fp8_recipe and "fp8" in hw.gpu.peak_flops:
        return w.fp8_recipe
    return None


def copy_bytes_per_param(hw: HardwareSpec, w: Workload) -> float:
    """Two fp8 copies of every linear weight (row-wise and transposed / column-wise) with
    their scales; training only."""
    r = recipe(hw, w)
    return 2 * (1 + FP8_SCALE_BYTES[r][1]) if r and w.kind == "training" else 0.0


def fp8_kept(c: Component, b: float, sh: float, rep: float, r: Rerun, fp8: tuple[str, bool],
             modules: tuple[str, ...]) -> tuple[float, float]:
    """[fp8-activations] Per-token kept bytes (TP-split, replicated) of `c`, given its
    16-bit figures `sh`, `rep` after the rerun `r`'s drops, with its fp8 GEMM inputs at
    1 + scale bytes: the values kept in fp8 instead of 16 bits re-priced (none of those a
    rerun module dropped), the fp8 copies kept besides a 16-bit tensor added.
    `fp8`: (recipe, flash attention)."""
    recipe, flash = fp8
    width = 1.0 + FP8_SCALE_BYTES[recipe][0]
    fs, fr, extra = fp8_saved_values(c, recipe, flash, modules)
    fs, fr = max(fs - r.drop_fp8_sharded, 0.0), max(fr - r.drop_fp8_replicated, 0.0)
    return sh - (b - width) * fs + width * extra, rep - (b - width) * fr


def _cast_s(elems: float, b: float, r: str, copies: int, weights: bool, bw: float,
            floor: float) -> float:
    """One quantization: a read-b-write-copies kernel, after an amax read under current
    per-tensor scaling; each at HBM speed and at least one kernel floor."""
    scale = FP8_SCALE_BYTES[r][1 if weights else 0]
    kernels = [elems * (b + copies * (1 + scale))] + ([elems * b] if r == "tensorwise" else [])
    return sum(max(x / bw, floor) for x in kernels if x > 0)


def _rerun_shares(m: ModelSpec, w: Workload, lay: Any, layer: int,
                  flash: bool) -> dict[str, float]:
    """Each component's recomputed GEMM share: 1 under full recompute, its modules' under
    selective [recompute-modules]."""
    comps = layer_components(m, layer, w.context_len, w.causal, flash)
    if lay.recompute == "full":
        return {c.name: 1.0 for c in comps}
    mods = lay.recompute_modules if lay.recompute == "selective" else ()
    return {c.name: r.gemm for c, r in zip(comps, module_reruns(m, comps, mods, flash,
                                                               w.context_len), strict=True)}


def _linears(m: ModelSpec, w: Workload, lay: Any, layer: int, flash: bool):
    """Each fp8 linear layer of `layer`: (component, rows, k, n) of its GEMM on one GPU."""
    T = lay.micro_batch * w.tokens_per_sample // getattr(lay, "cp", 1)  # a CP rank's share
    for c in layer_components(m, layer, w.context_len, w.causal, flash):
        k, n = c.gemm
        if c.role not in LINEAR or not k:
            continue
        if c.is_expert:  # fc1 splits its outputs over ETP, fc2 its inputs
            rows = T * m.top_k * lay.etp / lay.tp
            yield c, rows, *((k, n / lay.etp) if c.name.endswith("fc1") else (k / lay.etp, n))
        else:
            yield c, T, *((k, n / lay.tp) if c.role == "column" else (k / lay.tp, n))


def stage_casts(m: ModelSpec, hw: HardwareSpec, w: Workload, lay: Any, stage: int,
                calib: dict, imbalance: dict[int, float], fullest: dict[int, int],
                flash: bool) -> tuple[float, float]:
    """(quantize kernels per micro-batch: input forward, again under full recompute, output
    gradient backward; weight casts per optimizer step) of one stage."""
    r = recipe(hw, w)
    if r is None or w.kind != "training":
        return 0.0, 0.0
    bw = hw.gpu.hbm_bytes_per_s * float(calib["hbm_eff"])
    floor, b = float(calib["kernel_floor_s"]), m.dtype_bytes
    first, last = lay.stage_layers[stage]
    casts = weights = 0.0
    for layer in range(first, last + 1):
        again = _rerun_shares(m, w, lay, layer, flash)
        for c, rows, k, n in _linears(m, w, lay, layer, flash):
            rows *= imbalance.get(layer, 1.0) if c.is_expert else 1.0
            fwd = _cast_s(rows * k, b, r, 2, False, bw, floor)
            casts += fwd * (1 + again[c.name])  # the recomputed GEMM quantizes again
            casts += _cast_s(rows * n, b, r, 2, False, bw, floor)
            count = fullest.get(layer, m.experts) if c.is_expert else 1
            z3 = (lay.edp if c.is_expert else lay.dp_cp) if lay.zero >= 3 else 1
            per = c.params / (lay.etp if c.is_expert else lay.tp) / z3  # the stored shard
            weights += count * _cast_s(per, b, r, 2, True, bw, floor)
    return casts, weights


def check_fp8_timing(f: Findings, plan: dict, m: ModelSpec, hw: HardwareSpec, w: Workload,
                     lay: Any, imbalance: dict[int, float], fullest: dict[int, int],
                     flash: bool) -> None:
    """Each stage's `fp8_cast_s` and `fp8_weight_cast_s` recomputed, present exactly when a
    recipe runs in training, and inside the compute / optimizer time that contains them."""
    calib = plan.get("inputs", {}).get("calibration", {})
    if not isinstance(calib, dict) or "hbm_eff" not in calib or "kernel_floor_s" not in calib:
        return
    running = recipe(hw, w) is not None and w.kind == "training"
    for k, st in enumerate(plan["timing"]["per_stage"][:lay.pp]):
        p = f"timing.per_stage[{k}]"
        if not running:
            for key in ("fp8_cast_s", "fp8_weight_cast_s"):
                if key in st:
                    f.error("timing", f"{p}.{key}", "no fp8 recipe runs", st[key], None)
            continue
        casts, weights = stage_casts(m, hw, w, lay, k, calib, imbalance, fullest, flash)
        for key, want, within in (
                ("fp8_cast_s", casts, ("forward_compute_s", "backward_compute_s",
                                       "recompute_s")),
                ("fp8_weight_cast_s", weights, ("optimizer_s",))):
            if key not in st:
                f.error("timing", f"{p}.{key}", f"the {w.fp8_recipe} recipe's kernels are "
                        "not listed", None, want)
                continue
            if not close(st[key], want, TOL):
                f.error("timing", f"{p}.{key}", "recomputed from the recipe's quantize "
                        "kernels differs", st[key], want)
            room = sum(st.get(x, 0.0) for x in within)
            if st[key] > room * (1 + TOL) + 1e-12:
                f.error("timing", f"{p}.{key}", f"more than the {' + '.join(within)} that "
                        "contains it", st[key], f"<= {room:.6g}")
