"""The model spec: layers, widths, heads, experts and dtypes, read and range-checked from a
model file's `model:` section (an HF config.json has its own reader, `spec.hf`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .fields import Fields
from .units import DTYPE_BYTES, EXPERT_WEIGHT_DTYPES, WEIGHT_BYTES, WEIGHT_DTYPES


@dataclass(frozen=True)
class MLASpec:
    """Multi-head latent attention (DeepSeek-V2/V3): low-rank Q and a compressed KV cache."""

    q_lora_rank: int  # 0 means Q is a plain projection
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


@dataclass(frozen=True)
class ModelSpec:
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn_hidden: int
    gated_mlp: bool
    vocab: int
    experts: int = 0
    top_k: int = 0
    expert_ffn_hidden: int = 0
    shared_experts: int = 0
    shared_expert_ffn_hidden: int = 0
    dense_layers: tuple[int, ...] = ()
    tie_embeddings: bool = False
    dtype: str = "bf16"
    dropout: bool = False
    mla: MLASpec | None = None
    # Stored precision of the blocks' linear layers (QKV, out, MLP, experts) in a quantized
    # serving checkpoint (DeepSeek-V3's fp8, ModelOpt's nvfp4); None: `dtype`. Norms, router,
    # embedding and LM head, the KV cache and activations stay `dtype`.
    weight_dtype: str | None = None
    # How an fp8 checkpoint's weights are scaled: "tensor" (one scale per matrix) or "block"
    # (DeepSeek-V3's 128 x 128 blocks): which measured GEMM / fused-MoE kernels serve it.
    weight_scaling: str | None = None
    # DeepSeek-V3's multi-token prediction modules (`num_nextn_predict_layers`, Megatron-Core
    # `--mtp-num-layers`): training runs them on the last stage; serving ignores them.
    mtp_layers: int = 0
    # Group-limited routing (DeepSeek-V2/V3's n_group / topk_group, Megatron-Core
    # --moe-router-num-groups / --moe-router-group-topk): the experts form `router_groups`
    # contiguous groups and a token's top_k come from its best `router_group_topk` of them
    # (0: no groups) [deepep]
    router_groups: int = 0
    router_group_topk: int = 0
    # The Hugging Face id (or checkpoint path) the model came from: an HF config's
    # `_name_or_path` or its checkpoint folder; the serving exporters' model path (None:
    # the model's name)
    hf_id: str | None = None
    # The routed experts' stored format where it is not `weight_dtype`'s: gpt-oss's MXFP4
    # experts beside 16-bit attention (serving only, as weight_dtype); None: weight_dtype
    expert_weight_dtype: str | None = None
    # [attention-window] the layers in `window_layers` attend within `attention_window`
    # tokens, "sliding" (gpt-oss: the last w keys) or "chunked" (Llama 4: the query's own
    # w-token chunk); every other layer attends to the whole context
    attention_window: int = 0
    window_layers: tuple[int, ...] = ()
    window_kind: str = "sliding"

    def window(self, layer: int) -> int:
        """The attention window of `layer` in tokens (0: full attention)."""
        return self.attention_window if layer in self.window_layers else 0

    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    def is_moe_layer(self, layer: int) -> bool:
        return self.is_moe and layer not in self.dense_layers

    @property
    def moe_layer_count(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.layers))

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def linear_bytes(self) -> float:
        """Bytes per stored weight of the blocks' linear layers, scales included (nvfp4:
        0.5 + 1/16, not a whole byte count)."""
        return WEIGHT_BYTES[self.weight_dtype or self.dtype]

    @property
    def expert_bytes(self) -> float:
        """Bytes per stored routed-expert weight, scales included (mxfp4: 0.5 + 1/32)."""
        return WEIGHT_BYTES[self.expert_weight_dtype or self.weight_dtype or self.dtype]


def read_mla(f: Fields) -> MLASpec:
    """The MLA ranks and head sizes, under the same key names in autopar's `mla:` section
    and at the top level of an HF config (DeepSeek-V2/V3)."""
    return MLASpec(
        q_lora_rank=f.int("q_lora_rank", 0, 1_000_000, default=0),
        kv_lora_rank=f.int("kv_lora_rank", 1, 1_000_000),
        qk_nope_head_dim=f.int("qk_nope_head_dim", 1, 100_000),
        qk_rope_head_dim=f.int("qk_rope_head_dim", 0, 100_000),
        v_head_dim=f.int("v_head_dim", 1, 100_000),
    )


WEIGHT_SCALINGS = ("tensor", "block")
WINDOW_KINDS = ("sliding", "chunked")


def _check_model(m: ModelSpec, f: Fields) -> ModelSpec:
    if m.mla is None and m.heads % m.kv_heads:
        raise f.error("kv_heads",
                      f"heads ({m.heads}) must be a multiple of kv_heads ({m.kv_heads})")
    if m.is_moe:
        if not 1 <= m.top_k <= m.experts:
            raise f.error("top_k", f"must be in [1, experts={m.experts}], got {m.top_k}")
        if m.expert_ffn_hidden <= 0:
            raise f.error("expert_ffn_hidden", "required (> 0) for an MoE model")
        bad = [i for i in m.dense_layers if i >= m.layers]
        if bad:
            raise f.error("dense_layers", f"layer {bad[0]} does not exist (layers={m.layers})")
    elif m.top_k or m.shared_experts or m.dense_layers:
        raise f.error("experts", "top_k/shared_experts/dense_layers given but experts is 0")
    if (not m.is_moe or m.dense_layers) and m.ffn_hidden <= 0:
        raise f.error("ffn_hidden", "required (> 0) for dense layers")
    if m.weight_scaling is not None and m.weight_dtype != "fp8":
        raise f.error("weight_scaling", "describes an fp8 checkpoint: needs weight_dtype: fp8")
    if m.router_groups or m.router_group_topk:
        if not m.is_moe or not m.router_groups or m.experts % m.router_groups:
            raise f.error("router_groups", f"must divide the experts ({m.experts}) of an MoE "
                          f"model, got {m.router_groups}")
        if not 1 <= m.router_group_topk <= m.router_groups:
            raise f.error("router_group_topk", f"must be in [1, router_groups="
                          f"{m.router_groups}], got {m.router_group_topk}")
    if m.expert_weight_dtype is not None and not m.is_moe:
        raise f.error("expert_weight_dtype", "describes an MoE model's experts; experts is 0")
    _check_windows(m, f)
    if m.weight_dtype == "fp8" and m.weight_scaling is None:
        m = replace(m, weight_scaling="tensor")
    return m


def _check_windows(m: ModelSpec, f: Fields) -> None:
    """[attention-window] A window needs the layers that use it, and they must exist."""
    if m.window_layers and m.attention_window <= 0:
        raise f.error("attention_window", "required (> 0): window_layers attend within it")
    if m.attention_window and not m.window_layers:
        raise f.error("window_layers", "required: the layers that attend within "
                                       f"attention_window ({m.attention_window})")
    bad = [i for i in m.window_layers if i >= m.layers]
    if bad:
        raise f.error("window_layers", f"layer {bad[0]} does not exist (layers={m.layers})")


def _read_model_fields(f: Fields) -> ModelSpec:
    hidden = f.int("hidden", 1, 1_000_000)
    heads = f.int("heads", 1, 100_000)
    head_dim_default = hidden // heads if hidden % heads == 0 else None
    head_dim = f.int("head_dim", 1, 100_000, default=head_dim_default)
    if head_dim is None:
        raise f.error("head_dim",
                      f"required: hidden ({hidden}) is not a multiple of heads ({heads})")
    mla = None
    if f.has("mla"):
        g = f.section("mla")
        mla = read_mla(g)
        g.finish()
    experts = f.int("experts", 0, 100_000, default=0)
    m = ModelSpec(
        name=f.str("name"),
        layers=f.int("layers", 1, 10_000),
        hidden=hidden,
        heads=heads,
        kv_heads=f.int("kv_heads", 1, 100_000, default=heads),
        head_dim=head_dim,
        ffn_hidden=f.int("ffn_hidden", 0, 10_000_000, default=0),
        gated_mlp=f.bool("gated_mlp", default=True),
        vocab=f.int("vocab", 1, 100_000_000),
        experts=experts,
        top_k=f.int("top_k", 0, 100_000, default=0),
        expert_ffn_hidden=f.int("expert_ffn_hidden", 0, 10_000_000, default=0),
        shared_experts=f.int("shared_experts", 0, 1000, default=0),
        shared_expert_ffn_hidden=f.int("shared_expert_ffn_hidden", 0, 10_000_000, default=0),
        dense_layers=f.int_list("dense_layers", 0, 10_000, default=()),
        tie_embeddings=f.bool("tie_embeddings", default=False),
        dtype=f.str("dtype", tuple(DTYPE_BYTES), default="bf16"),
        dropout=f.bool("dropout", default=False),
        mla=mla,
        weight_dtype=f.str("weight_dtype", WEIGHT_DTYPES, default=None),
        weight_scaling=f.str("weight_scaling", WEIGHT_SCALINGS, default=None),
        mtp_layers=f.int("mtp_layers", 0, 100, default=0),
        router_groups=f.int("router_groups", 0, 100_000, default=0),
        router_group_topk=f.int("router_group_topk", 0, 100_000, default=0),
        hf_id=f.str("hf_id", default=None),
        expert_weight_dtype=f.str("expert_weight_dtype", EXPERT_WEIGHT_DTYPES, default=None),
        attention_window=f.int("attention_window", 0, 1 << 40, default=0),
        window_layers=f.int_list("window_layers", 0, 10_000, default=()),
        window_kind=f.str("window_kind", WINDOW_KINDS, default="sliding"),
    )
    if m.shared_experts and not m.shared_expert_ffn_hidden:
        m = replace(m, shared_expert_ffn_hidden=m.expert_ffn_hidden)
    return _check_model(m, f)

