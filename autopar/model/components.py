"""Expand a model into per-layer components with FLOPs, parameters and activation bytes.

Counts are per token and forward; backward is twice the forward GEMM work. Activation bytes
follow Korthikanti et al. 2022 (sec. 4), written per component so that the paper's
`s b h (34 + 5 a s / h)` comes out for a GPT layer with dropout, and gated MLPs, GQA/MLA and
MoE layers get their own terms instead of a silent GPT assumption.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..spec import ModelSpec
from .windows import attended, keys_per_query

# Tensor-parallel roles (Megatron): column-parallel splits output features, row-parallel the
# input features, "heads" the attention heads; "replicated" lives whole on every TP rank;
# "expert" belongs to an expert and is placed by EP; "vocab" is split over the vocabulary.
ROLES = ("column", "row", "heads", "replicated", "expert", "vocab")
# The blocks' linear layers: what a quantized checkpoint stores in `weight_dtype`.
LINEAR_ROLES = ("column", "row", "expert")
# Backward over forward bytes of a memory-bound elementwise kernel: its backward reads the
# saved input and the incoming gradient and writes one gradient, 3 tensor passes against the
# forward's 2 (softmax, GeLU, layer norm; dropout's is 1x, a residual add's ~2x).
EW_BWD = 1.5


@dataclass(frozen=True)
class Component:
    name: str
    role: str
    params: int  # expert components: parameters of ONE expert
    flops_per_token: float  # forward FLOPs per token this component processes
    act_bytes_sharded: float  # saved activations per token that TP splits
    act_bytes_replicated: float  # saved activations per token that only sequence parallel splits
    gemm: tuple[int, int] = (0, 0)  # (k, n) of the weight GEMM, for the efficiency curve
    tokens_per_token: float = 1.0  # expert: top_k / experts routed copies per input token
    # Forward bytes per token of the memory-bound kernels that follow this component (bias +
    # activation, bias + dropout + residual, softmax, dropout, loss): on the TP-split part, and
    # on the full hidden vector that only sequence parallelism splits [elementwise].
    ew_bytes: float = 0.0
    ew_bytes_repl: float = 0.0
    # [fp8-activations] of the saved activations, values per token that are an fp8 GEMM's
    # input, which Transformer Engine keeps quantized (1 byte + the recipe's scales) for the
    # weight gradient: of the TP-split part, and of the part only sequence parallelism splits
    fp8_in_sharded: float = 0.0
    fp8_in_replicated: float = 0.0

    @property
    def is_expert(self) -> bool:
        return self.role == "expert"


def _attention(m: ModelSpec, ctx: float, causal: bool, flash: bool, drop: int,
               decode: bool = False, window: int = 0) -> list[Component]:
    h, a, b = m.hidden, m.heads, m.dtype_bytes
    if m.mla is None:
        qk_dim, v_dim = m.head_dim, m.head_dim
        q_out, kv_out = a * m.head_dim, 2 * m.kv_heads * m.head_dim
        qkv_params = h * (q_out + kv_out)
        saved_qkv = b * (q_out + kv_out)  # Q, K, V kept for the attention backward
        qkv_gemm = (h, q_out + kv_out)
    else:
        x = m.mla
        qk_dim, v_dim = x.qk_nope_head_dim + x.qk_rope_head_dim, x.v_head_dim
        q_params = (h * x.q_lora_rank + x.q_lora_rank * a * qk_dim) if x.q_lora_rank \
            else h * a * qk_dim
        kv_params = h * (x.kv_lora_rank + x.qk_rope_head_dim) + x.kv_lora_rank * a * (
            x.qk_nope_head_dim + v_dim
        )
        qkv_params = q_params + kv_params
        saved_qkv = b * (a * qk_dim * 2 + a * v_dim + x.q_lora_rank + x.kv_lora_rank)
        qkv_gemm = (h, a * (qk_dim * 2 + v_dim))
    # a fused (flash) kernel skips the masked half of a causal score matrix; the unfused
    # batched GEMMs compute all of it and mask afterwards
    score_flops = 2 * a * (qk_dim + v_dim) * ctx * (0.5 if causal and flash else 1.0)
    if causal and flash and window:  # [attention-window] a fused kernel skips what the
        score_flops = 2 * a * (qk_dim + v_dim) * keys_per_query(ctx, window, m.window_kind)
        # window masks; the unfused GEMMs compute the whole matrix and mask it
    if decode:  # [decode-attention] one query over its whole context: no masked half, and
        # MLA attends in the latent space with its up-projections absorbed (DeepSeek-V2
        # sec. 2.1.3, as vLLM and SGLang decode): scores over kv_lora + rope, values kv_lora
        score_flops = 2 * a * attended(ctx, window) * (qk_dim + v_dim if m.mla is None else
                                     2 * m.mla.kv_lora_rank + m.mla.qk_rope_head_dim)
    scores_saved = 0.0 if flash else 5 * a * ctx  # softmax out 2as, dropout mask as, its out 2as
    # unfused: softmax reads and writes the scores; dropout reads them, writes them and a
    # one-byte mask; the context is copied back to [tokens, heads x d]
    attn_ew = 0.0 if flash else a * ctx * (2 * b + drop * (2 * b + 1)) + 2 * b * a * v_dim
    return [
        Component("norm_attn", "replicated", h, 5 * h, 0, b * h),
        # MLA's two down-projections each keep an fp8 copy of the same input: not modelled
        Component("qkv", "column", qkv_params, 2 * qkv_params, 0, b * h, qkv_gemm,
                  fp8_in_replicated=0.0 if m.mla is not None else h),
        Component("attn", "heads", 0, score_flops, saved_qkv + scores_saved, 0,
                  ew_bytes=attn_ew),
        Component("out", "row", a * v_dim * h, 2 * a * v_dim * h, b * a * v_dim, drop * h,
                  (a * v_dim, h), ew_bytes_repl=_residual_bytes(h, b, drop),
                  fp8_in_sharded=a * v_dim),
    ]


def _residual_bytes(h: int, b: int, drop: int) -> float:
    """Bias + dropout + residual add after a row-parallel GEMM: read the output and the
    residual, write the sum, and a one-byte dropout mask."""
    return 3 * b * h + drop * h


def _mlp(prefix: str, role_in: str, role_out: str, h: int, f: int, gated: bool, b: int,
         drop: int, tokens: float = 1.0) -> list[Component]:
    up = (2 if gated else 1) * f
    saved_mid = b * (up + f)  # FC1 output(s) and the activation's output (FC2 input)
    fc1_in_sharded = b * h if role_in == "expert" else 0  # dispatched copies live with the expert
    fc1_in_repl = 0 if role_in == "expert" else b * h
    residual = 0.0 if role_out == "expert" else _residual_bytes(h, b, drop)
    # [fp8-activations] FC2's input (the activation's output) is kept in fp8, FC1's output
    # (the activation's input) in 16 bits; FC1's input in fp8, but the shared experts' FC1
    # saves the 16-bit norm output the router keeps anyway (Megatron's save_original_input)
    fp8_fc1_in = 0.0 if prefix == "shared_" else h
    return [
        # bias + activation (GeLU, or SwiGLU's gate x up): read FC1's output(s), write f
        Component(f"{prefix}fc1", role_in, h * up, 2 * h * up, fc1_in_sharded + saved_mid,
                  fc1_in_repl, (h, up), tokens, ew_bytes=b * (up + f),
                  fp8_in_sharded=f + (fp8_fc1_in if role_in == "expert" else 0.0),
                  fp8_in_replicated=0.0 if role_in == "expert" else fp8_fc1_in),
        Component(f"{prefix}fc2", role_out, f * h, 2 * f * h, 0,
                  0 if role_out == "expert" else drop * h, (f, h), tokens,
                  ew_bytes_repl=residual),
    ]


def layer_components(m: ModelSpec, layer: int, ctx: float, causal: bool = True,
                     flash: bool = True, decode: bool = False) -> list[Component]:
    """The components of transformer layer `layer` (0-based) for a given attention context
    (`decode`: one new token per sequence attending to `ctx` cached ones)."""
    h, b = m.hidden, m.dtype_bytes
    drop = 1 if m.dropout else 0  # dropout masks are one byte per element
    comps = _attention(m, ctx, causal, flash, drop, decode, m.window(layer))
    comps.append(Component("norm_mlp", "replicated", h, 5 * h, 0, b * h))
    if not m.is_moe_layer(layer):
        comps += _mlp("", "column", "row", h, m.ffn_hidden, m.gated_mlp, b, drop)
        return comps
    # the router's output drives a permute (read h, write top_k copies) before the experts
    # and an unpermute + weighted sum (read top_k copies, write h) after them
    comps.append(Component("router", "replicated", h * m.experts, 2 * h * m.experts, 0,
                           b * h + 4 * m.experts, (h, m.experts),
                           ew_bytes_repl=2 * b * h * (1 + m.top_k)))
    share = m.top_k / m.experts
    comps += _mlp("expert_", "expert", "expert", h, m.expert_ffn_hidden, m.gated_mlp, b, 0, share)
    if m.shared_experts:
        f = m.shared_experts * m.shared_expert_ffn_hidden
        comps += _mlp("shared_", "column", "row", h, f, m.gated_mlp, b, 0)
    return comps


def fp8_saved_values(c: Component, recipe: str, flash: bool,
                     modules: tuple[str, ...] = ()) -> tuple[float, float, float]:
    """[fp8-activations] Under an fp8 training recipe, values per token of `c`'s saved
    activations that are kept in fp8 instead of 16 bits (TP-split part, replicated part),
    and TP-split values kept in fp8 besides their 16-bit tensor. The out-projection's input
    is the attention output: under current scaling Megatron-Core has the linear save it
    unquantized (`save_original_input`, TE >= 2.6), so nothing changes; under delayed
    scaling the linear keeps an fp8 copy, on top of the 16-bit output the fused attention
    kernel saves for its own backward (unless `core_attn` recomputes it), else instead."""
    if c.name != "out":
        return c.fp8_in_sharded, c.fp8_in_replicated, 0.0
    if recipe != "delayed":
        return 0.0, 0.0, 0.0
    if flash and "core_attn" not in modules:
        return 0.0, 0.0, c.fp8_in_sharded
    return c.fp8_in_sharded, 0.0, 0.0


def loss_bytes_per_logit(b: int) -> float:
    """Cross-entropy over vocab-parallel logits: cast to fp32 (read b, write 4), max (read 4),
    subtract and exponentiate in place (read 4, write 4, twice), sum (read 4)."""
    return b + 4 + 4 + 2 * 8 + 4


def embedding_components(m: ModelSpec) -> list[Component]:
    return [Component("embedding", "vocab", m.vocab * m.hidden, 0, 0,
                      (1 if m.dropout else 0) * m.hidden)]


def head_components(m: ModelSpec) -> list[Component]:
    """Final norm and LM head; the loss keeps fp32 logits (4 B per vocab entry) per token."""
    h = m.hidden
    return [
        Component("final_norm", "replicated", h, 5 * h, 0, m.dtype_bytes * h),
        Component("lm_head", "vocab", m.vocab * h, 2 * h * m.vocab, 4 * m.vocab,
                  m.dtype_bytes * h, (h, m.vocab), ew_bytes=loss_bytes_per_logit(m.dtype_bytes)
                  * m.vocab),
    ]


def expert_count(c: Component, m: ModelSpec) -> int:
    return m.experts if c.is_expert else 1


def param_bytes(m: ModelSpec, role: str) -> float:
    """Bytes per stored weight of a component with this role (the routed experts' own
    format where the checkpoint has one: gpt-oss's mxfp4)."""
    if role == "expert":
        return m.expert_bytes
    return m.linear_bytes if role in LINEAR_ROLES else m.dtype_bytes


def param_count(m: ModelSpec) -> dict[str, int]:
    """Total and active parameters (active: what one token touches), and the total in the
    blocks' linear layers (`linear`, stored in `weight_dtype`)."""
    total = active = linear = expert = 0
    for layer in range(m.layers):
        for c in layer_components(m, layer, 1):
            n = c.params * expert_count(c, m)
            total += n
            linear += n if c.role in LINEAR_ROLES else 0
            expert += n if c.is_expert else 0
            active += c.params * (m.top_k if c.is_expert else 1)
    emb = m.vocab * m.hidden
    head = sum(c.params for c in head_components(m))
    shared = emb if m.tie_embeddings else 0
    total += emb + head - shared
    active += emb + head - shared  # the usual convention: embeddings count as active
    return {"total": total, "active": active, "linear": linear, "expert": expert}


def weight_bytes(m: ModelSpec) -> float:
    """Bytes of the whole model's weights, each part in its stored precision."""
    n = param_count(m)
    return (n["total"] * m.dtype_bytes + n["linear"] * (m.linear_bytes - m.dtype_bytes)
            + n["expert"] * (m.expert_bytes - m.linear_bytes))


def model_flops_per_token(m: ModelSpec, ctx: float, causal: bool = True,
                          decode: bool = False) -> float:
    """Forward FLOPs per token with uniform routing (top_k experts per token)."""
    total = 0.0
    for layer in range(m.layers):
        for c in layer_components(m, layer, ctx, causal, decode=decode):
            total += c.flops_per_token * (m.top_k if c.is_expert else 1)
    total += sum(c.flops_per_token for c in head_components(m))
    return total
