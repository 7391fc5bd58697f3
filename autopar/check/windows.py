"""[attention-window] A plan's figures of windowed attention layers, recomputed for `autopar
check` from docs/cost-model.md without the model's or the cost model's window code: the KV
tokens a sequence keeps per layer and the score / context FLOPs of a windowed layer.

A sliding layer (gpt-oss, window w) lets query i see keys max(0, i - w) .. i; a chunked
layer (Llama 4, chunk c) keys c * floor(i / c) .. i. The KV cache of either holds at most
w (c) tokens per sequence; a full layer holds the whole sequence.
"""

from __future__ import annotations

from ..spec import ModelSpec


def kv_tokens(m: ModelSpec, first: int, last: int, tokens: float) -> float:
    """KV tokens one sequence of `tokens` keeps over layers first..last (inclusive)."""
    total = 0.0
    for layer in range(first, last + 1):
        w = m.attention_window if layer in m.window_layers else 0
        total += tokens if not w or tokens < w else w
    return total


def mean_keys(s: float, w: int, chunked: bool) -> float:
    """Mean keys per query of a causal sequence of s tokens under window w: the integral of
    min(x, w) over [0, s] (sliding) or of x mod w (chunked), over s."""
    if s <= w:
        return s / 2
    if not chunked:
        return (w * w / 2 + (s - w) * w) / s
    full, rest = s // w, s - (s // w) * w
    return (full * w * w / 2 + rest * rest / 2) / s


def attention_scale(m: ModelSpec, layer: int, ctx: float, causal: bool, flash: bool,
                    decode: bool) -> float:
    """A windowed layer's attention-core FLOPs over the same layer's at full attention: the
    keys a query sees under the window over those it sees without (ctx / 2 causal and
    fused, ctx decoding). An unfused (non-flash) prefill computes the whole score matrix
    and masks it afterwards, so its FLOPs do not change; nor does anything off a window."""
    w = m.attention_window if layer in m.window_layers else 0
    if not w or ctx <= 0:
        return 1.0
    if decode:
        return min(ctx, w) / ctx
    if not (causal and flash):
        return 1.0
    return mean_keys(ctx, w, m.window_kind == "chunked") / (ctx / 2)
