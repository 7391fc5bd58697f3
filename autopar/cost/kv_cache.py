"""[kv-cache, attention-window] The KV cache of one layer on one GPU: bytes per token, and the
tokens a sequence keeps (and a decode token reads) in it, which an attention window caps
(`model.windows`: gpt-oss's sliding layers keep the last 128 tokens, as vLLM's hybrid KV
cache manager and SGLang's SWA pool allocate them)."""

from __future__ import annotations

from ..model.windows import attended, kv_tokens
from ..spec import ModelSpec

__all__ = ["attended", "kv_bytes_per_token_layer", "kv_tokens"]


def kv_bytes_per_token_layer(m: ModelSpec, tp: int) -> float:
    """KV cache bytes one GPU holds per token per layer [kv-cache]: GQA heads split over TP
    (replicated once TP exceeds them); MLA's compressed latent is replicated on every rank."""
    if m.mla is not None:
        return (m.mla.kv_lora_rank + m.mla.qk_rope_head_dim) * m.dtype_bytes
    heads = max(m.kv_heads / tp, 1.0)
    return 2 * heads * m.head_dim * m.dtype_bytes
