"""ZeRO-3 / FSDP collectives of a plan, recomputed without the cost model [fsdp]: how many
calls per step each stage's parameter gathers and gradient reduce-scatters make, of what
size, and what of them the step must at least wait for.

Every layer, the embedding and the LM head is one unit. Per micro-batch each unit is
gathered before its forward and its backward (once more for the recomputed forward when
gathered on demand) and reduce-scattered after its backward; a call is the whole unit when
prefetched (coalesced), one parameter tensor on demand (`options.zero3_gather`)."""

from __future__ import annotations

from ..model.components import embedding_components, head_components, layer_components
from ..model.mtp import mtp_extra_components, mtp_layer_index
from ..spec import HardwareSpec, ModelSpec, Workload
from .finding import Findings
from .links import link_bw
from .mtp import mtp_count

MODES = ("prefetch", "on-demand")


def mode_of(plan: dict) -> str:
    """The plan's ZeRO-3 gather mode (stated in `inputs.options` of a ZeRO-3 plan)."""
    opts = plan.get("inputs", {}).get("options", {})
    mode = opts.get("zero3_gather", "prefetch") if isinstance(opts, dict) else "prefetch"
    return mode if mode in MODES else "prefetch"


def unit_calls(m: ModelSpec, lay, stage: int, mode: str, training: bool = False) -> int:
    """Collective calls of one pass over the stage's units: one a unit when prefetched; on
    demand one a parameter tensor (a component holding parameters, twice where the model
    has biases and LayerNorm shifts: an ungated MLP)."""
    first, last = lay.stage_layers[stage]
    units = [layer_components(m, x, 1.0) for x in range(first, last + 1)]
    if stage == 0:
        units.append(embedding_components(m))
    if stage == lay.pp - 1:
        units.append(head_components(m))
    for _ in range(mtp_count(m, training, stage, lay.pp)):  # [mtp] its layer, its parts
        units += [layer_components(m, mtp_layer_index(m), 1.0), mtp_extra_components(m)]
    if mode == "prefetch":
        return len(units)
    per = 1 if m.gated_mlp else 2
    return sum(max(1, per * sum(1 for c in u if c.params > 0)) for u in units)


def gathers_per_micro_batch(mode: str, recompute: str) -> int:
    return 3 if mode == "on-demand" and recompute == "full" else 2


def collectives(m: ModelSpec, hw: HardwareSpec, w: Workload, lay, stage: int, dense: float,
                expert: float, mode: str, make) -> dict:
    """The stage's ZeRO-3 entries keyed as `recompute.expected_collectives` keys them;
    `make` builds one (collective, group size, bytes per call, calls, minimum time)."""
    b, m_mb = m.dtype_bytes, lay.num_micro_batches
    calls = unit_calls(m, lay, stage, mode, w.kind == "training")
    n = gathers_per_micro_batch(mode, lay.recompute)
    out = {}
    for group, size, params in (("dp", lay.dp_cp, dense), ("edp", lay.edp, expert)):
        if size > 1 and (group == "dp" or m.is_moe):
            nbytes = params * b / calls
            out[(group, stage, "parameters")] = make(
                "all_gather", size, nbytes, n * m_mb * calls,
                (size - 1) / size * nbytes / link_bw(hw, lay.groups(group)))
    if lay.dp_cp > 1 or (m.is_moe and lay.edp > 1):
        nbytes = dense * w.grad_bytes / calls
        d = lay.dp_cp
        out[("dp", stage, "gradients")] = make(
            "reduce_scatter", d, nbytes, m_mb * calls,
            (d - 1) / d * nbytes / link_bw(hw, lay.groups("dp")) if d > 1 else 0.0)
    return out


def check_exposed(f: Findings, plan: dict) -> None:
    """What no overlap can hide: per stage, the exposed ZeRO-3 time over the step is at
    least its collectives' link time beyond everything else the stage does in the step
    (compute and other exposed communication), and on demand at least every gather."""
    t, comm = plan["timing"], plan["communication"]
    m = t.get("micro_batches", 1)
    mode = mode_of(plan)
    for k, st in enumerate(t["per_stage"]):
        mine = [c for c in comm if c.get("stage", 0) == k
                and c.get("part") in ("parameters", "gradients")]
        if not mine or "param_gather_s" not in st or "per_micro_batch_s" not in st:
            continue
        exposed = st["param_gather_s"] * m
        window = (st["per_micro_batch_s"] - st["param_gather_s"]) * m
        link = sum(c["time_per_step_s"] for c in mine)
        floor = max(0.0, link - window)
        if mode == "on-demand":
            floor = max(floor, sum(c["time_per_step_s"] for c in mine
                                   if c["part"] == "parameters"))
        if exposed < floor * (1 - 1e-6) - 1e-12:  # float noise only
            f.error("timing", f"timing.per_stage[{k}].param_gather_s", "ZeRO-3 collectives "
                    f"hidden beyond what the stage's other work can cover ({mode})",
                    exposed / m, f">= {floor / m:.6g} per micro-batch")
