"""The MTP modules on the last stage, recomputed for `autopar check` [mtp]: each module's
transformer layer is counted as the model's last decoder layer (same type, same experts
held), its norms, projection and shared head as the head (no weight of its own)."""

from __future__ import annotations

from ..model.components import layer_components
from ..model.mtp import mtp_extra_components, mtp_layer_index
from ..spec import ModelSpec


def mtp_count(m: ModelSpec, training: bool, stage: int, pp: int) -> int:
    """MTP modules stage `stage` runs: all of them on the last stage when training."""
    return m.mtp_layers if training and stage == pp - 1 else 0


def mtp_params(m: ModelSpec, tp: int, etp: int, own: int) -> tuple[float, float, float, float]:
    """(dense, replicated, expert, linear) parameters of ONE module on one GPU; `own`: the
    experts this GPU's EP rank holds in the layer the module repeats."""
    dense = repl = expert = linear = 0.0
    for c in layer_components(m, mtp_layer_index(m), 1.0):
        if c.is_expert:
            expert += own * c.params / etp
        elif c.role == "replicated":
            dense += c.params
            repl += c.params if tp > 1 else 0.0
        else:
            dense += c.params / tp
            linear += c.params / tp if c.role in ("column", "row") else 0.0
    for c in mtp_extra_components(m):
        dense += c.params if c.role == "replicated" else c.params / tp
        repl += c.params if c.role == "replicated" and tp > 1 else 0.0
    return dense, repl, expert, linear
