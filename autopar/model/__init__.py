"""The model as components: each layer expanded into QKV, attention, output projection,
router, FC1 / FC2, shared and routed experts, plus embedding and LM head, with FLOPs,
parameters and activation bytes per token; and which slice of each tensor a TP rank holds
(Megatron's column / row split). Pure functions of the spec."""

from .components import (
    Component,
    embedding_components,
    head_components,
    layer_components,
    model_flops_per_token,
    param_count,
    weight_bytes,
)
from .shards import split, tp_shard

__all__ = ["Component", "layer_components", "embedding_components", "head_components",
           "model_flops_per_token", "param_count", "weight_bytes", "split", "tp_shard"]
