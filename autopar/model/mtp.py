"""DeepSeek-V3's multi-token prediction (MTP) modules as components (DeepSeek-V3 sec. 2.2;
Megatron-Core `multi_token_prediction.py`, `--mtp-num-layers`).

Each module normalises the main model's hidden state and the next token's embedding (two
RMSNorms), projects their concatenation 2h -> h (`eh_proj`, column-parallel), runs one
transformer layer of the model's layer type (the last decoder layer's: MoE for DeepSeek-V3),
a final norm, and the shared output head with its loss. The embedding table and the head's
weight are the main model's (shared, not duplicated): the head here has FLOPs but no
parameters. Training only; serving engines' speculative use of the module is not modelled.
"""

from __future__ import annotations

from ..spec import ModelSpec
from .components import Component, layer_components, loss_bytes_per_logit


def plan_name(module: int, name: str) -> str:
    """A module's component as the plan names it (`mtp0.qkv`): apart from the decoder's."""
    return f"mtp{module}.{name}"


def base_name(name: str) -> str:
    """The component's own name (`qkv`) of a plan name, MTP or not."""
    return name.split(".", 1)[1] if name.startswith("mtp") and "." in name else name


def mtp_layer_index(m: ModelSpec) -> int:
    """The decoder layer whose type the MTP block repeats (Megatron builds it from the
    model's layer spec: the last layer's)."""
    return m.layers - 1


def mtp_extra_components(m: ModelSpec) -> list[Component]:
    """One module's parts outside its transformer layer: norms, projection, shared head."""
    h, b = m.hidden, m.dtype_bytes
    return [
        Component("enorm", "replicated", h, 5 * h, 0, b * h),
        Component("hnorm", "replicated", h, 5 * h, 0, b * h),
        Component("eh_proj", "column", 2 * h * h, 2 * 2 * h * h, 0, 2 * b * h, (2 * h, h)),
        Component("final_norm", "replicated", h, 5 * h, 0, b * h),
        Component("lm_head", "vocab", 0, 2 * h * m.vocab, 4 * m.vocab, b * h,
                  (h, m.vocab), ew_bytes=loss_bytes_per_logit(b) * m.vocab),
    ]


def mtp_components(m: ModelSpec, ctx: float, causal: bool = True,
                   flash: bool = True) -> list[Component]:
    """One MTP module: its transformer layer's components, then the extra parts."""
    return layer_components(m, mtp_layer_index(m), ctx, causal, flash) + mtp_extra_components(m)


def mtp_flops_per_token(m: ModelSpec, ctx: float, causal: bool = True) -> float:
    """Forward FLOPs per token of all MTP modules (top_k experts per token)."""
    one = sum(c.flops_per_token * (m.top_k if c.is_expert else 1)
              for c in mtp_components(m, ctx, causal))
    return m.mtp_layers * one


def mtp_params(m: ModelSpec) -> int:
    """Parameters the MTP modules add (the layer, norms and projection; embedding and head
    are shared)."""
    one = sum(c.params * (m.experts if c.is_expert else 1)
              for c in mtp_components(m, 1))
    return m.mtp_layers * one
