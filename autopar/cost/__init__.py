"""cost"""

from .layer import (  # noqa: F401
    ComponentCost,
    LayerCost,
    MoEState,
    Problem,
    async_tp_hidden,
    edge_cost,
    experts_in_tp_group,
    experts_touched,
    grad_accumulation,
    kv_bytes_per_token_layer,
    layer_cost,
    micro_batch_tokens,
    strategy_groups,
)
