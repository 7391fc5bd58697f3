"""[attention-window] What a layer with an attention window attends to (docs/cost-model.md):
gpt-oss's sliding-window layers see the last `w` keys, Llama 4's chunked layers the keys of
the query's own `w`-token chunk. A full layer's causal query sees `position` keys, ctx / 2
on average over a ctx-token sequence; the window caps that.
"""

from __future__ import annotations

from ..spec import ModelSpec


def keys_per_query(ctx: float, window: int, kind: str) -> float:
    """Mean keys a causal query attends to over a `ctx`-token sequence (full: ctx / 2).
    sliding: min(position, w), whose mean is w - w^2 / (2 ctx) once ctx > w; chunked: the
    position inside its chunk, (n w^2 + r^2) / (2 ctx) for ctx = n w + r. Both are ctx / 2
    while the sequence fits one window."""
    if window <= 0 or ctx <= window:
        return ctx / 2
    if kind == "sliding":
        return window - window * window / (2 * ctx)
    n, r = divmod(ctx, window)
    return (n * window * window + r * r) / (2 * ctx)


def attended(ctx: float, window: int) -> float:
    """Keys one decode token attends to with `ctx` tokens before it (and the KV tokens a
    sequence of `ctx` tokens keeps in the layer): all of them, or at most the window (a
    chunked layer's chunk holds up to `w`)."""
    return min(ctx, window) if window > 0 else ctx


def kv_tokens(m: ModelSpec, layer: int, tokens: float) -> float:
    """[kv-cache] KV tokens a `tokens`-long sequence keeps in `layer`: a windowed layer only
    the window (vLLM's hybrid KV cache manager, SGLang's SWA pool)."""
    return attended(tokens, m.window(layer))
