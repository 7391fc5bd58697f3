"""Module-level (selective) recompute as Megatron-Core names it: which parts of a layer's
forward each `--recompute-modules` entry runs again in the backward, and which saved
activations it stops keeping [recompute-modules].

Read from Megatron-LM's `megatron/core/transformer/transformer_config.py` (`recompute_modules`),
`transformer_layer.py` (layernorm, mlp), `attention.py` (core_attn),
`multi_latent_attention.py` (mla_up_proj), `moe/experts.py` (moe_act) and `moe/moe_layer.py`
(moe, shared_experts). "core_attn", "mlp", "moe" and "shared_experts" are ordinary
checkpoints: they keep their input and drop what lives inside; "layernorm", "moe_act" and
"mla_up_proj" discard their output (CheckpointWithoutOutput) after its consumer has saved it,
so the consumer's saved input is what goes. Both the cost model and `autopar check` read this
table; each sums the bytes and times its own way.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..spec import ModelSpec
from .components import Component

MODULES = ("core_attn", "moe_act", "layernorm", "mla_up_proj", "mlp", "moe", "shared_experts")
DEFAULT_MODULES = ("core_attn",)  # Megatron's default for --recompute-granularity selective


@dataclass(frozen=True)
class Rerun:
    """One component under a set of modules: the share of its kernel (GEMM, attention, norm)
    and of its memory-bound elementwise kernels that the backward runs again, and the saved
    bytes per token it no longer keeps, of its TP-split and of its replicated part."""

    gemm: float = 0.0
    ew: float = 0.0
    drop_sharded: float = 0.0
    drop_replicated: float = 0.0
    # of the dropped, values that are an fp8 GEMM's input (`Component.fp8_in_*`): under an
    # fp8 recipe those were kept in fp8, and a module that reruns keeps none of them (Megatron
    # has the consumer save the original input, which the checkpoint then discards)
    drop_fp8_sharded: float = 0.0
    drop_fp8_replicated: float = 0.0


def module_error(modules: tuple[str, ...], m: ModelSpec | None = None) -> str | None:
    """Why this module set is not one Megatron accepts (for this model), or None."""
    bad = [x for x in modules if x not in MODULES]
    if bad:
        return f"unknown recompute module {bad[0]!r}; known: {', '.join(MODULES)}"
    if len(set(modules)) != len(modules):
        return f"recompute module listed twice: {','.join(modules)}"
    if m is not None and "mla_up_proj" in modules and m.mla is None:
        return "mla_up_proj needs multi-latent attention (the model has none)"
    if m is not None and {"moe_act", "moe", "shared_experts"} & set(modules) and not m.is_moe:
        return "moe_act / moe / shared_experts need an MoE model"
    return None


def canonical(modules: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The modules in Megatron's help order (so equal sets are equal layouts)."""
    return tuple(x for x in MODULES if x in modules)


def _mla_up_share(m: ModelSpec) -> float:
    """Of the MLA projection GEMM's work, the up-projections' (q from its latent, k / v from
    theirs): what mla_up_proj runs again."""
    x, h, a = m.mla, m.hidden, m.heads
    qk = x.qk_nope_head_dim + x.qk_rope_head_dim
    q_up = x.q_lora_rank * a * qk if x.q_lora_rank else 0
    kv_up = x.kv_lora_rank * a * (x.qk_nope_head_dim + x.v_head_dim)
    q_all = (h * x.q_lora_rank + q_up) if x.q_lora_rank else h * a * qk
    total = q_all + h * (x.kv_lora_rank + x.qk_rope_head_dim) + kv_up
    return (q_up + kv_up) / total


def module_reruns(m: ModelSpec, comps: list[Component], modules: tuple[str, ...],
                  flash: bool, ctx: float) -> list[Rerun]:
    """Each component of one layer under `modules` (the component list of
    `layer_components` at context `ctx`). Shares combine by max (a kernel reruns once),
    dropped bytes add up to at most what the component keeps."""
    b, h, a = m.dtype_bytes, m.hidden, m.heads
    mods = set(modules)
    out = []
    for c in comps:
        g = e = ds = dr = fs = fr = 0.0
        n = c.name
        if "core_attn" in mods and n == "attn":  # checkpoint of the attention core: Q, K,
            g = e = 1.0  # V kept as its inputs, softmax / dropout outputs dropped
            ds += 0.0 if flash else 5 * a * ctx
        if "mla_up_proj" in mods and m.mla is not None:
            if n == "qkv":
                g = max(g, _mla_up_share(m))
            if n == "attn":  # the up-projected Q, K, V: core attention's saved inputs
                x = m.mla
                ds += b * a * (2 * (x.qk_nope_head_dim + x.qk_rope_head_dim) + x.v_head_dim)
        if "layernorm" in mods:
            if n in ("norm_attn", "norm_mlp"):
                g = e = 1.0
            if n in ("qkv", "fc1", "router", "shared_fc1"):  # the norm's output, their input
                dr += b * h
                fr += c.fp8_in_replicated
        if "moe_act" in mods and n == "expert_fc1":  # the activation's output (FC2's input)
            e = 1.0
            ds += b * m.expert_ffn_hidden
            fs += m.expert_ffn_hidden
        if "mlp" in mods and n in ("fc1", "fc2"):  # dense MLP: its input kept
            g = 1.0
            e = max(e, 1.0 if n == "fc1" else 0.0)  # fc2's residual add is outside it
            ds += c.act_bytes_sharded
            fs += c.fp8_in_sharded
        if "moe" in mods and (n in ("router", "expert_fc1", "expert_fc2")
                              or n.startswith("shared_")):
            g = 1.0  # the whole MoE layer: its input (the router's) kept once
            e = max(e, 0.0 if n == "shared_fc2" else 1.0)
            ds += c.act_bytes_sharded
            dr += c.act_bytes_replicated - (b * h if n == "router" else 0.0)
            fs += c.fp8_in_sharded
            fr += c.fp8_in_replicated
        if "shared_experts" in mods and n in ("shared_fc1", "shared_fc2"):
            g = 1.0
            e = max(e, 1.0 if n == "shared_fc1" else 0.0)
            ds += c.act_bytes_sharded
            fs += c.fp8_in_sharded
        out.append(Rerun(g, e, min(ds, c.act_bytes_sharded), min(dr, c.act_bytes_replicated),
                         min(fs, c.fp8_in_sharded), min(fr, c.fp8_in_replicated)))
    return out


def block_reruns(m: ModelSpec, layer: int, modules: tuple[str, ...]) -> tuple[int, int]:
    """(TP block collectives, expert all-to-alls) one recompute of `layer` runs again: a
    checkpointed dense MLP or MoE layer reruns its block's TP collective (the row-parallel
    output's all-reduce or reduce-scatter), the MoE layer also its dispatch and combine."""
    if m.is_moe_layer(layer):
        return (1, 2) if "moe" in modules else (0, 0)
    return (1, 0) if "mlp" in modules else (0, 0)


def searched_module_sets(m: ModelSpec, flash: bool) -> list[tuple[str, ...]]:
    """The selective sets the search tries: the attention core alone where it saves anything
    (unfused attention: the score matrices; with flash attention it only costs time), and the
    cheap set: the norms, the MoE activation and MLA's up-projections (elementwise kernels or
    a small GEMM for a layer input's worth of bytes each), with the attention core when
    unfused. The heavy modules (mlp, moe, shared_experts) rerun most of a layer: full
    recompute is searched for that end."""
    light = (() if flash else ("core_attn",)) + ("layernorm",) + (
        ("moe_act",) if m.is_moe else ()) + (("mla_up_proj",) if m.mla is not None else ())
    sets = [] if flash else [DEFAULT_MODULES]
    return sets + [canonical(light)]
