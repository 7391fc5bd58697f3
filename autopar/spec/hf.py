"""Read a Hugging Face `config.json` (Llama, Mixtral, Qwen-MoE, DeepSeek-V3 key names).

HF configs carry many keys autopar does not need, so unknown keys are ignored here (unlike
autopar's own YAML); every key that is read is type- and range-checked.
"""

from __future__ import annotations

from typing import Any

from ..errors import InputError
from .fields import Fields
from .model import ModelSpec, _check_model, read_mla

_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float8_e4m3fn": "fp8"}


def model_from_hf(data: dict[str, Any], source: str) -> ModelSpec:
    f = Fields(source, data)
    hidden = f.int("hidden_size", 1, 1_000_000)
    heads = f.int("num_attention_heads", 1, 100_000)
    experts = 0
    for key in ("n_routed_experts", "num_local_experts", "num_experts"):
        if f.has(key):
            experts = f.int(key, 0, 100_000)
            break
    layers = f.int("num_hidden_layers", 1, 10_000)
    ffn = f.int("intermediate_size", 1, 10_000_000, default=0)
    expert_ffn = f.int("moe_intermediate_size", 1, 10_000_000, default=0)
    if experts and not expert_ffn:
        expert_ffn, ffn = ffn, 0  # Mixtral: intermediate_size is the expert's width
    dense: set[int] = set()
    if experts:
        dense.update(range(f.int("first_k_dense_replace", 0, layers, default=0)))
        dense.update(f.int_list("mlp_only_layers", 0, layers - 1, default=()))
        step = f.int("decoder_sparse_step", 1, layers, default=1)
        dense.update(i for i in range(layers) if (i + 1) % step)
    shared = f.int("n_shared_experts", 0, 1000, default=0)
    shared_ffn = expert_ffn
    if f.has("shared_expert_intermediate_size"):  # Qwen2-MoE: one wide shared expert
        shared_ffn = f.int("shared_expert_intermediate_size", 0, 10_000_000)
        shared = 1 if shared_ffn else 0
    mla = read_mla(f) if f.has("kv_lora_rank") else None
    if hidden % heads and not f.has("head_dim"):
        raise InputError(source, "head_dim", "required: hidden_size is not a multiple of heads")
    act = f.str("hidden_act", default="silu")
    # an unknown dtype is an error, not bf16: planning the wrong width misstates all memory
    # (transformers >= 4.56 writes `dtype`; older configs `torch_dtype`)
    dtype_key = "dtype" if f.has("dtype") and not f.has("torch_dtype") else "torch_dtype"
    dtype = _DTYPES[f.str(dtype_key, tuple(_DTYPES), default="bfloat16")]
    weight_dtype = weight_scaling = None
    if f.has("quantization_config"):
        weight_dtype, weight_scaling = _quantization(f.section("quantization_config"))
    model = ModelSpec(
        name=f.str("_name_or_path", default="") or f.str("model_type", default="hf-model"),
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
        top_k=f.int("num_experts_per_tok", 0, 100_000, default=0) if experts else 0,
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
        **_router_groups(f, experts),
    )
    return _check_model(model, f)


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
    Anything else is refused: planning it at 16 bits would misstate its memory."""
    method = q.str("quant_method")
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
