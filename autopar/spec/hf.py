"""Read a Hugging Face `config.json`: the architectures in `ARCHITECTURES` (Llama 3 / 3.1,
Qwen2 / 2.5, Qwen3 dense and MoE, Mixtral, DeepSeek-V2 / V3 / R1, Kimi-K2, gpt-oss, Llama 4).

HF configs carry many keys autopar does not need, so unknown keys are ignored here (unlike
autopar's own YAML); every key that is read is type- and range-checked, and a config that
lacks keys autopar needs is refused in one line that names them all.
"""

from __future__ import annotations

from typing import Any

from ..errors import InputError
from .fields import Fields
from .model import ModelSpec, _check_model, read_mla

_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float8_e4m3fn": "fp8"}

# model_type -> (what it is, the keys read beyond the common ones); docs/models.md's table
ARCHITECTURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "llama": ("Llama 3 / 3.1", ()),
    "mistral": ("Mistral", ()),
    "qwen2": ("Qwen2 / 2.5", ()),
    "qwen3": ("Qwen3 dense", ("head_dim",)),
    "mixtral": ("Mixtral", ("num_local_experts", "num_experts_per_tok")),
    "qwen2_moe": ("Qwen2-MoE", ("num_experts", "moe_intermediate_size",
                                "shared_expert_intermediate_size", "decoder_sparse_step",
                                "mlp_only_layers")),
    "qwen3_moe": ("Qwen3-MoE", ("num_experts", "moe_intermediate_size", "decoder_sparse_step",
                                "mlp_only_layers")),
    "deepseek_v2": ("DeepSeek-V2 (MLA)", ("n_routed_experts", "n_shared_experts",
                                          "moe_intermediate_size", "first_k_dense_replace",
                                          "moe_layer_freq", "n_group", "topk_group",
                                          "topk_method", "kv_lora_rank", "q_lora_rank")),
    "deepseek_v3": ("DeepSeek-V3 / R1 (MLA, MTP)", ("n_routed_experts", "n_shared_experts",
                                                    "moe_intermediate_size",
                                                    "first_k_dense_replace", "n_group",
                                                    "topk_group", "kv_lora_rank",
                                                    "q_lora_rank", "num_nextn_predict_layers",
                                                    "quantization_config")),
    "kimi_k2": ("Kimi-K2 (DeepSeek-V3 shape)", ("n_routed_experts", "n_shared_experts",
                                                "moe_intermediate_size",
                                                "first_k_dense_replace", "kv_lora_rank",
                                                "q_lora_rank", "quantization_config")),
    "gpt_oss": ("gpt-oss", ("num_local_experts", "num_experts_per_tok", "head_dim",
                            "layer_types", "sliding_window", "quantization_config")),
    "llama4_text": ("Llama 4 (in `text_config`)", ("num_local_experts",
                                                   "num_experts_per_tok",
                                                   "intermediate_size_mlp",
                                                   "interleave_moe_layer_step", "moe_layers",
                                                   "head_dim", "attention_chunk_size",
                                                   "no_rope_layers")),
}
# read from every config: the widths, depth, vocabulary and (optional) dtype and tying
COMMON_KEYS = ("hidden_size", "num_attention_heads", "num_key_value_heads",
               "num_hidden_layers", "intermediate_size", "vocab_size", "hidden_act",
               "torch_dtype", "tie_word_embeddings")
_REQUIRED = ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size")
_EXPERT_KEYS = ("n_routed_experts", "num_local_experts", "num_experts")
_MLA_KEYS = ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
# a multimodal wrapper (Llama 4) keeps these at the top level, the language model below
_WRAPPER_KEYS = ("_name_or_path", "torch_dtype", "dtype", "tie_word_embeddings",
                 "quantization_config")


def text_model(data: dict[str, Any], source: str) -> tuple[Fields, str]:
    """The language model's keys (Llama 4's `text_config`, with the wrapper's dtype, tying
    and quantization where it alone states them) and its model_type ("" where unstated)."""
    if isinstance(data.get("text_config"), dict):
        inner = data["text_config"]
        merged = {**{k: data[k] for k in _WRAPPER_KEYS if k in data}, **inner}
        wrapper = {"llama4": "llama4_text"}.get(str(data.get("model_type", "")), "")
        return Fields(source, merged, "text_config"), str(inner.get("model_type") or wrapper)
    return Fields(source, data), str(data.get("model_type", ""))


def missing_keys(f: Fields) -> list[str]:
    """Keys autopar needs that the config lacks: the widths, and the MoE and MLA keys the
    config's own experts or latent attention imply."""
    need = list(_REQUIRED)
    moe = any(f.has(k) for k in _EXPERT_KEYS)
    if moe or f.has("moe_intermediate_size"):
        need.append("num_experts_per_tok" if not f.has("experts_per_token")
                    else "experts_per_token")
        if not moe:
            need.append("n_routed_experts")
    if not f.has("moe_intermediate_size") and not f.has("intermediate_size_mlp"):
        need.append("intermediate_size")
    if f.has("kv_lora_rank"):
        need += _MLA_KEYS
    return [k for k in need if not f.has(k)]


def _check_architecture(f: Fields, model_type: str) -> None:
    """One line for what cannot be read: an unknown model_type that lacks the keys of a
    plain decoder, MoE keys of an unknown architecture (read as dense they would plan the
    wrong model), or a known one missing keys."""
    lacking = missing_keys(f)
    known = model_type in ARCHITECTURES or not model_type
    where = f"{f.path}." if f.path else ""
    if not known:
        extra = sorted(k for k in f.data if "expert" in str(k) and k not in _EXPERT_KEYS
                       and k not in ("num_experts_per_tok", "n_shared_experts"))
        if lacking or extra:
            why = (f"lacks keys autopar needs: {', '.join(where + k for k in lacking)}"
                   if lacking else f"has MoE keys autopar does not read: {', '.join(extra)}")
            raise InputError(f.source, f"{where}model_type",
                             f"{model_type!r} is not an architecture autopar knows "
                             f"({', '.join(ARCHITECTURES)}) and {why}")
    elif lacking:
        name = ARCHITECTURES[model_type][0] if model_type else "an HF"
        raise InputError(f.source, "", f"{name} config lacks keys autopar needs: "
                                       f"{', '.join(where + k for k in lacking)}")


def model_from_hf(data: dict[str, Any], source: str, hf_id: str | None = None) -> ModelSpec:
    """The model a config.json describes; `hf_id` (the checkpoint folder's, where the config
    names none in `_name_or_path`) is kept for the exporters' model path."""
    f, model_type = text_model(data, source)
    _check_architecture(f, model_type)
    hidden = f.int("hidden_size", 1, 1_000_000)
    heads = f.int("num_attention_heads", 1, 100_000)
    experts = 0
    for key in _EXPERT_KEYS:
        if f.has(key):
            experts = f.int(key, 0, 100_000)
            break
    layers = f.int("num_hidden_layers", 1, 10_000)
    ffn = f.int("intermediate_size", 1, 10_000_000, default=0)
    expert_ffn = f.int("moe_intermediate_size", 1, 10_000_000, default=0)
    if experts and not expert_ffn:
        # Mixtral, gpt-oss, Llama 4: intermediate_size is the expert's width; Llama 4's
        # dense layers have their own (intermediate_size_mlp)
        expert_ffn, ffn = ffn, f.int("intermediate_size_mlp", 1, 10_000_000, default=0)
    dense = _dense_layers(f, layers) if experts else set()
    shared = f.int("n_shared_experts", 0, 1000, default=0)
    shared_ffn = expert_ffn
    if f.has("shared_expert_intermediate_size"):  # Qwen2-MoE: one wide shared expert
        shared_ffn = f.int("shared_expert_intermediate_size", 0, 10_000_000)
        shared = 1 if shared_ffn else 0
    if model_type == "llama4_text":  # every Llama 4 MoE layer adds one expert-wide shared MLP
        shared = 1
    mla = read_mla(f) if f.has("kv_lora_rank") else None
    if hidden % heads and not f.has("head_dim"):
        raise InputError(source, f.field("head_dim"),
                         "required: hidden_size is not a multiple of heads")
    windows = _attention_layers(f, layers)
    act = f.str("hidden_act", default="silu")
    # an unknown dtype is an error, not bf16: planning the wrong width misstates all memory
    # (transformers >= 4.56 writes `dtype`; older configs `torch_dtype`)
    dtype_key = "dtype" if f.has("dtype") and not f.has("torch_dtype") else "torch_dtype"
    dtype = _DTYPES[f.str(dtype_key, tuple(_DTYPES), default="bfloat16")]
    weight_dtype = weight_scaling = expert_dtype = None
    if f.has("quantization_config"):
        weight_dtype, weight_scaling = _quantization(f.section("quantization_config"))
    if weight_dtype == "mxfp4":  # gpt-oss: the experts alone (docs/models.md)
        weight_dtype, expert_dtype = None, "mxfp4"
    top_k = 0
    if experts:
        key = "num_experts_per_tok" if f.has("num_experts_per_tok") else "experts_per_token"
        top_k = f.int(key, 0, 100_000)
    named = f.str("_name_or_path", default="") or None
    hf_id = named or hf_id
    model = ModelSpec(
        name=hf_id or f.str("model_type", default="hf-model"),
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=f.int("num_key_value_heads", 1, 100_000, default=heads),
        # MLA has no single head size; its V head size is what the output projection sees
        head_dim=mla.v_head_dim if mla else f.int("head_dim", 1, 100_000,
                                                  default=hidden // heads),
        ffn_hidden=ffn if dense or not experts else 0,
        gated_mlp=act in ("silu", "swiglu", "gelu_pytorch_tanh") or "glu" in act,
        vocab=f.int("vocab_size", 1, 100_000_000),
        experts=experts,
        top_k=top_k,
        expert_ffn_hidden=expert_ffn if experts else 0,
        shared_experts=shared if experts else 0,
        shared_expert_ffn_hidden=shared_ffn if experts and shared else 0,
        dense_layers=tuple(sorted(dense)),
        tie_embeddings=f.bool("tie_word_embeddings", default=False),
        dtype=dtype,
        mla=mla,
        weight_dtype=weight_dtype,
        weight_scaling=weight_scaling,
        mtp_layers=f.int("num_nextn_predict_layers", 0, 100, default=0),
        hf_id=hf_id,
        expert_weight_dtype=expert_dtype if experts else None,
        **windows,
        **_router_groups(f, experts),
    )
    return _check_model(model, f)


def _dense_layers(f: Fields, layers: int) -> set[int]:
    """The layers of an MoE model that keep a dense MLP: DeepSeek's first k (and those off
    its `moe_layer_freq`), Qwen's `mlp_only_layers` and off its `decoder_sparse_step`, and
    Llama 4's off its `interleave_moe_layer_step` (its MoE layers are step-1, 2 step-1, ...,
    or the explicit `moe_layers`)."""
    first = f.int("first_k_dense_replace", 0, layers, default=0)
    dense = set(range(first))
    freq = f.int("moe_layer_freq", 1, layers, default=1)
    dense.update(i for i in range(layers) if i % freq)  # DeepSeek: MoE where i % freq == 0
    dense.update(f.int_list("mlp_only_layers", 0, layers - 1, default=()))
    for key in ("decoder_sparse_step", "interleave_moe_layer_step"):
        step = f.int(key, 1, layers, default=1)
        dense.update(i for i in range(layers) if (i + 1) % step)
    if f.has("moe_layers"):
        moe = set(f.int_list("moe_layers", 0, layers - 1))
        dense = set(range(layers)) - moe
    return dense


_LAYER_TYPES = ("full_attention", "sliding_attention", "chunked_attention")


def _attention_layers(f: Fields, layers: int) -> dict[str, Any]:
    """[attention-window] The layers that attend within a window, as ModelSpec fields:
    gpt-oss's `layer_types` (`sliding_attention` layers see the last `sliding_window`
    tokens), Llama 4's chunked layers (`chunked_attention` in `layer_types`, or the RoPE
    layers of `no_rope_layers`, as transformers derives them, attend within their
    `attention_chunk_size`-token chunk). No window keys: every layer is full attention
    (Qwen2's `sliding_window` is off unless `use_sliding_window`, which is not modelled)."""
    kinds: list[str] = []
    if f.has("layer_types"):
        kinds = f.data["layer_types"]
        f.used.add("layer_types")
        if not isinstance(kinds, list) or len(kinds) != layers or any(
                k not in _LAYER_TYPES for k in kinds):
            raise f.error("layer_types", f"expected a list of {layers} of "
                                         f"{', '.join(_LAYER_TYPES)}")
    elif f.has("attention_chunk_size") and f.has("no_rope_layers"):
        rope = f.int_list("no_rope_layers", 0, 1)
        if len(rope) != layers:
            raise f.error("no_rope_layers", f"expected a list of {layers} of 0 and 1")
        kinds = ["chunked_attention" if r else "full_attention" for r in rope]
    for kind, key, name in (("sliding_attention", "sliding_window", "sliding"),
                            ("chunked_attention", "attention_chunk_size", "chunked")):
        where = tuple(i for i, k in enumerate(kinds) if k == kind)
        if where:
            if not f.has(key):
                raise f.error(key, f"required: layer_types has {kind} layers")
            return {"attention_window": f.int(key, 1, 1 << 40), "window_layers": where,
                    "window_kind": name}
    if f.has("sliding_window") and f.data["sliding_window"] is not None:
        f.int("sliding_window", 1, 1 << 40)
    return {}


def _router_groups(f: Fields, experts: int) -> dict[str, int]:
    """DeepSeek's group-limited routing (`n_group`, `topk_group`; V3's `noaux_tc`, V2's
    `group_limited_greedy`); one group, or a greedy top-k, limits nothing."""
    if not experts or not f.has("n_group"):
        return {}
    groups = f.int("n_group", 1, 100_000)
    topk = f.int("topk_group", 1, groups, default=groups)
    method = f.str("topk_method", default="noaux_tc")
    if groups <= 1 or topk >= groups or method == "greedy":
        return {}
    return {"router_groups": groups, "router_group_topk": topk}


NVFP4_FORMAT = "nvfp4-pack-quantized"  # compressed-tensors' name for packed NVFP4 weights


def _quantization(q: Fields) -> tuple[str, str | None]:
    """(weight_dtype, weight_scaling) of a checkpoint's `quantization_config`: fp8
    (DeepSeek-V3's, block-scaled where it gives `weight_block_size`), or NVFP4 as NVIDIA
    ModelOpt writes it (`quant_method: modelopt`, `quant_algo: NVFP4`, flat or under
    `quantization`, as in its hf_quant_config.json) or as compressed-tensors does
    (`format: nvfp4-pack-quantized`, 4-bit float weights and activations in groups of 16).
    gpt-oss's MXFP4 experts (`quant_method: mxfp4`: 4-bit values with one E8M0 scale per 32;
    attention, router, embedding and head stay 16-bit, its `modules_to_not_convert`) come
    back as "mxfp4", which the caller makes the experts' format [mxfp4]. Anything else is
    refused: planning an unknown format at 16 bits could misstate its memory either way."""
    method = q.str("quant_method")
    if method == "mxfp4":  # gpt-oss: the experts only (model_from_hf)
        return "mxfp4", None
    if method == "fp8":
        block = q.int_list("weight_block_size", 1, 1 << 20, default=None)
        return "fp8", "block" if block else "tensor"
    if method == "modelopt":
        inner = q.section("quantization") if q.has("quantization") else q
        algo = inner.str("quant_algo", default="")
        if algo.upper() != "NVFP4":
            raise inner.error("quant_algo", f"{algo!r} ModelOpt checkpoints are not modelled "
                                            "(NVFP4 is)")
        return "nvfp4", None
    if method == "compressed-tensors":
        _compressed_nvfp4(q)
        return "nvfp4", None
    raise q.error("quant_method", f"{method!r} checkpoints are not modelled (fp8, modelopt "
                                  "NVFP4 and compressed-tensors NVFP4 are); drop "
                                  "quantization_config to plan the 16-bit model")


def _compressed_nvfp4(q: Fields) -> None:
    """A compressed-tensors config is NVFP4 W4A4 when every config group packs its weights
    as nvfp4 and quantizes weights and input activations to 4-bit floats in groups of 16;
    W4A16 (16-bit activations) runs dequantizing GEMMs, not FP4 tensor cores."""
    top = q.str("format", default=None)
    groups = q.section("config_groups")
    if not isinstance(groups.data, dict) or not groups.data:
        raise q.error("config_groups", "expected a mapping of quantization groups")
    for name in list(groups.data):
        g = groups.section(str(name))
        fmt = g.str("format", default=top)
        if fmt != NVFP4_FORMAT:
            raise g.error("format", f"{fmt!r} compressed-tensors checkpoints are not "
                                    f"modelled ({NVFP4_FORMAT} is)")
        for key in ("weights", "input_activations"):
            if not g.has(key):
                raise g.error(key, "missing: NVFP4 with 16-bit activations (W4A16) is not "
                                   "modelled (W4A4 is)")
            t = g.section(key)
            if (t.int("num_bits", 1, 64), t.str("type"), t.int("group_size", 1, 1 << 20,
                                                                default=16)) != (4, "float", 16):
                raise g.error(key, "expected 4-bit floats in groups of 16 (NVFP4)")
