"""FLOPs a plan claims, recomputed from the model's components: per token, per step (model
FLOPs, no recompute) and as the GPUs run them (hardware FLOPs: recompute and TP-replicated
kernels counted) [metrics] [flops]."""

from __future__ import annotations

from dataclasses import replace

from ..model.components import Component, embedding_components, head_components, layer_components
from ..model.mtp import mtp_extra_components, mtp_flops_per_token, mtp_layer_index
from ..model.recompute import module_reruns
from ..spec import ModelSpec, Workload
from .windows import attention_scale


def decoding(w: Workload) -> bool:
    return w.kind != "training" and w.phase == "decode"


def layer_flops(m: ModelSpec, w: Workload, layer: int,
                flash: bool = True) -> list[tuple[Component, float]]:
    """Each component of a layer with its forward FLOPs per token it processes; a decode
    token attends to its whole context, MLA with its up-projections absorbed
    [decode-attention] (`components` holds the rule); a windowed layer's attention core is
    the full layer's scaled by the keys its window leaves (`windows`, restated here) so
    the window rule is not taken from the code under check [attention-window]."""
    full = replace(m, window_layers=(), attention_window=0) if m.window_layers else m
    scale = attention_scale(m, layer, w.context_len, w.causal, flash, decoding(w))
    return [(c, c.flops_per_token * (scale if c.role == "heads" else 1.0))
            for c in layer_components(full, layer, w.context_len, w.causal, flash,
                                      decode=decoding(w))]


def forward_flops_per_token(m: ModelSpec, w: Workload,
                            kept: dict[int, float] | None = None) -> float:
    """Model forward FLOPs per processed token (top_k experts per token); a prefill computes
    logits for the last position only. `kept[layer]`: the share of a layer's routed copies
    a capacity keeps [capacity] (dropped copies run no expert; absent: all)."""
    kept = kept or {}
    f = sum(fl * (m.top_k * kept.get(layer, 1.0) if c.is_expert else 1)
            for layer in range(m.layers) for c, fl in layer_flops(m, w, layer))
    head = sum(c.flops_per_token for c in head_components(m))
    if w.kind != "training" and w.phase == "prefill":
        head /= w.input_len
    if w.kind == "training":  # [mtp] the MTP modules, on the last stage
        f += mtp_flops_per_token(m, w.context_len, w.causal)
        last = mtp_layer_index(m)  # their layers drop as the last layer does
        f -= m.mtp_layers * sum(fl * m.top_k * (1.0 - kept.get(last, 1.0))
                                for c, fl in layer_flops(m, w, last) if c.is_expert)
    return f + head


def model_flops_per_step(m: ModelSpec, w: Workload,
                         kept: dict[int, float] | None = None) -> float:
    """Model FLOPs of one step, no recompute: forward x 3 when training [metrics]."""
    passes = 3 if w.kind == "training" else 1
    return forward_flops_per_token(m, w, kept) * w.batch * w.tokens_per_sample * passes


def hardware_flops_per_step(m: ModelSpec, w: Workload, recompute: str, tp: int,
                            sequence_parallel: bool, flash: bool = True,
                            modules: tuple[str, ...] = ("core_attn",),
                            computed: dict[int, float] | None = None) -> float:
    """FLOPs all GPUs run in one step [flops]: tokens x FLOPs/token x passes, plus one more
    forward under full recompute (the recomputed modules' kernels under selective), and the
    replicated components (norms, router) run on every TP rank unless sequence parallelism
    splits them. `computed[layer]`: expert rows a capacity leaves per routed copy (dropped
    copies run none, padding rows run too) [capacity]; absent: 1."""
    computed = computed or {}
    tokens = w.batch * w.tokens_per_sample
    passes = 3 if w.kind == "training" else 1
    total = 0.0
    mtp = [mtp_layer_index(m)] * m.mtp_layers if w.kind == "training" else []
    for layer in list(range(m.layers)) + mtp:  # [mtp] each module's layer runs as one
        pairs = layer_flops(m, w, layer, flash)
        reruns = module_reruns(m, [c for c, _ in pairs], modules if recompute == "selective"
                               else (), flash, w.context_len)
        for (c, fl), r in zip(pairs, reruns, strict=True):
            extra = 1 if recompute == "full" else r.gemm
            mult = m.top_k * computed.get(layer, 1.0) if c.is_expert else 1
            repl = tp if c.role == "replicated" and not sequence_parallel else 1
            total += tokens * fl * mult * repl * (passes + extra)
    head_tokens = w.batch if w.kind != "training" and w.phase == "prefill" else tokens
    extra = mtp_extra_components(m) * len(mtp)
    for c in head_components(m) + embedding_components(m) + extra:
        repl = tp if c.role == "replicated" and not sequence_parallel else 1
        total += head_tokens * c.flops_per_token * repl * passes
    return total
