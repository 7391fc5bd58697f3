"""Validated input specs: model, hardware and workload, loaded from YAML or HF config.json.

Files are data, never code: `autopar.spec.datafile` parses them within fixed limits, and every
field is range-checked here, so a broken or hostile file gets a one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .datafile import MAX_FILE_BYTES, read_data  # noqa: F401  (limits live in datafile)
from .fields import MISSING, Fields

DTYPE_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
GB = 1e9


# --------------------------------------------------------------------------- model
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
    # serving checkpoint (DeepSeek-V3's fp8); None: `dtype`. Norms, router, embedding and LM
    # head, the KV cache and activations stay `dtype`.
    weight_dtype: str | None = None

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
    def linear_bytes(self) -> int:
        """Bytes per stored weight of the blocks' linear layers."""
        return DTYPE_BYTES[self.weight_dtype or self.dtype]


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
    return m


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
        mla = MLASpec(
            q_lora_rank=g.int("q_lora_rank", 0, 1_000_000, default=0),
            kv_lora_rank=g.int("kv_lora_rank", 1, 1_000_000),
            qk_nope_head_dim=g.int("qk_nope_head_dim", 1, 100_000),
            qk_rope_head_dim=g.int("qk_rope_head_dim", 0, 100_000),
            v_head_dim=g.int("v_head_dim", 1, 100_000),
        )
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
        weight_dtype=f.str("weight_dtype", ("bf16", "fp16", "fp8"), default=None),
    )
    if m.shared_experts and not m.shared_expert_ffn_hidden:
        m = replace(m, shared_expert_ffn_hidden=m.expert_ffn_hidden)
    return _check_model(m, f)


# --------------------------------------------------------------------------- hardware
@dataclass(frozen=True)
class GPUSpec:
    name: str
    memory_bytes: float
    peak_flops: dict[str, float]  # dtype -> FLOP/s, dense
    hbm_bytes_per_s: float
    sources: tuple[str, ...] = ()
    gemm_eff: float | None = None  # measured large-GEMM fraction of the 16-bit peak (catalogue)
    nvlink_eff: float | None = None  # measured NVLink all-reduce bus bandwidth / line rate

    def flops(self, dtype: str) -> float:
        if dtype in self.peak_flops:
            return self.peak_flops[dtype]
        if dtype == "fp8" or dtype == "fp16":  # fall back to the 16-bit tensor-core rate
            return self.peak_flops.get("bf16", max(self.peak_flops.values()))
        return max(self.peak_flops.values())


@dataclass(frozen=True)
class LinkSpec:
    bytes_per_s: float  # per GPU, per direction
    latency_s: float


@dataclass(frozen=True)
class HardwareSpec:
    name: str
    gpu: GPUSpec
    nodes: int
    gpus_per_node: int
    intra: LinkSpec
    inter: LinkSpec
    reserved_bytes: float = 1.0 * GB  # CUDA context, NCCL buffers, allocator slack

    @property
    def num_gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def usable_bytes(self) -> float:
        return self.gpu.memory_bytes - self.reserved_bytes

    def node_of(self, gpu: int) -> int:
        return gpu // self.gpus_per_node


@cache
def gpu_catalogue() -> dict[str, dict[str, Any]]:
    text = resources.files("autopar").joinpath("data/gpus.yaml").read_text()
    return yaml.safe_load(text)


def _read_gpu(f: Fields) -> tuple[GPUSpec, float | None]:
    catalogue = gpu_catalogue()
    base: dict[str, Any] = {}
    name = "custom"
    if f.has("type"):
        name = f.str("type")
        if name not in catalogue:
            raise f.error("type", f"unknown GPU {name!r}; known: {', '.join(catalogue)}")
        base = catalogue[name]
    else:
        f.str("type", default=None)
        name = f.str("name", default="custom")
    need = MISSING
    memory_gb = f.float("memory_gb", 0.1, 100_000, default=base.get("memory_gb", need))
    tflops_default = base.get("tflops")
    if f.has("tflops"):
        t = f.section("tflops")
        tflops = {k: t.float(k, 0.001, 1e7) for k in list(t.data)}
        bad = [k for k in tflops if k not in DTYPE_BYTES]
        if bad:
            raise t.error(bad[0], f"unknown dtype; known: {', '.join(DTYPE_BYTES)}")
    elif tflops_default is None:
        raise f.error("tflops", "missing required field (e.g. tflops: {bf16: 400})")
    else:
        f.used.add("tflops")
        tflops = dict(tflops_default)
    hbm = f.float("hbm_tbps", 0.001, 1000, default=base.get("hbm_tbps", need))
    nvlink = base.get("nvlink_gbps")
    gpu = GPUSpec(
        name=name,
        memory_bytes=memory_gb * GB,
        peak_flops={k: v * 1e12 for k, v in tflops.items()},
        hbm_bytes_per_s=hbm * 1e12,
        sources=tuple(base.get("sources", ())),
        gemm_eff=base["gemm_tflops"] / base["tflops"]["bf16"] if "gemm_tflops" in base else None,
        nvlink_eff=base["allreduce_busbw_gbps"] / nvlink
        if "allreduce_busbw_gbps" in base and nvlink else None,
    )
    return gpu, nvlink


def _read_link(f: Fields, key: str, default_gbps: float | None, default_us: float) -> LinkSpec:
    if not f.has(key):
        f.used.add(key)
        if default_gbps is None:
            raise f.error(key, "missing required field (bandwidth_gbps, latency_us)")
        return LinkSpec(default_gbps * GB, default_us * 1e-6)
    g = f.section(key)
    bw = g.float("bandwidth_gbps", 0.001, 100_000, default=default_gbps)
    if bw is None:
        raise g.error("bandwidth_gbps", "missing required field")
    lat = g.float("latency_us", 0.0, 1e6, default=default_us)
    g.finish()
    return LinkSpec(bw * GB, lat * 1e-6)


def _read_hardware_fields(f: Fields) -> HardwareSpec:
    name = f.str("name")
    g = f.section("gpu")
    gpu, nvlink = _read_gpu(g)
    g.finish()
    nodes = f.int("nodes", 1, 100_000, default=1)
    gpn = f.int("gpus_per_node", 1, 1024)
    # a link no group can use (one GPU per node, or one node) needs no figures
    intra = _read_link(f, "intra_node", nvlink if gpn > 1 and nvlink else (
        None if gpn > 1 else 1000.0), 3.0)
    inter = _read_link(f, "inter_node", None if nodes > 1 else 25.0, 10.0)
    reserved = f.float("reserved_gb", 0.0, 10_000, default=1.0)
    if reserved * GB >= gpu.memory_bytes:
        raise f.error("reserved_gb",
                      f"{reserved} GB leaves no memory on a {gpu.memory_bytes / GB:g} GB GPU")
    return HardwareSpec(name, gpu, nodes, gpn, intra, inter, reserved * GB)


# --------------------------------------------------------------------------- workload
@dataclass(frozen=True)
class Workload:
    """What one step is: a training iteration, a prefill batch or one decode step."""

    kind: str  # "training" | "inference"
    batch: int  # global batch (training) or concurrent sequences (inference)
    seq_len: int = 0  # training sequence length
    phase: str = "prefill"  # inference only: "prefill" | "decode" | "both" (whole requests)
    input_len: int = 0
    output_len: int = 0
    ttft_ms: float | None = None  # serving latency targets (inference); None: no limit
    tpot_ms: float | None = None
    expert_load: str = "uniform"
    spare_slots: int | None = None
    causal: bool = True
    grad_dtype: str = "fp32"  # main gradients (Megatron keeps fp32 for bf16 training)
    master_dtype: str = "fp32"  # optimizer's master copy of the weights ("none": no copy)
    state_dtype: str = "fp32"  # Adam m and v
    precision: str | None = None  # GEMM compute precision ("fp8": fp8 tensor cores); None: dtype

    @property
    def grad_bytes(self) -> int:
        return DTYPE_BYTES[self.grad_dtype]

    @property
    def optimizer_bytes(self) -> int:
        """Optimizer-state bytes per parameter: master copy plus Adam's two moments."""
        master = 0 if self.master_dtype == "none" else DTYPE_BYTES[self.master_dtype]
        return master + 2 * DTYPE_BYTES[self.state_dtype]

    @property
    def tokens_per_sample(self) -> int:
        if self.kind == "training":
            return self.seq_len
        return self.input_len if self.phase == "prefill" else 1

    @property
    def context_len(self) -> float:
        """Attention context a token sees, on average (causal halving applied in FLOPs)."""
        if self.kind == "training":
            return self.seq_len
        if self.phase == "prefill":
            return self.input_len
        return self.input_len + self.output_len / 2

    @property
    def decoding(self) -> bool:
        """A decode step: one new token per sequence over its cached context."""
        return self.kind == "inference" and self.phase == "decode"

    @property
    def kv_len(self) -> int:
        """Tokens whose KV cache each sequence must hold (inference)."""
        return self.input_len + self.output_len


def _read_workload_fields(f: Fields) -> Workload:
    kind = f.str("kind", ("training", "inference"))
    load = f.str("expert_load", default="uniform")
    spare = f.int("spare_slots", 0, 1024, default=None)
    causal = f.bool("causal", default=True)
    precision = f.str("precision", ("bf16", "fp16", "fp8"), default=None)
    if kind == "training":
        opt = {}
        if f.has("optimizer"):
            g = f.section("optimizer")
            opt = {
                "grad_dtype": g.str("grad_dtype", ("fp32", "bf16", "fp16"), default="fp32"),
                "master_dtype": g.str("master_dtype", ("fp32", "bf16", "fp16", "none"),
                                      default="fp32"),
                "state_dtype": g.str("state_dtype", ("fp32", "bf16", "fp16", "fp8"),
                                     default="fp32"),
            }
            g.finish()
        else:
            f.used.add("optimizer")
        w = Workload(
            kind,
            batch=f.int("global_batch", 1, 10_000_000),
            seq_len=f.int("seq_len", 1, 10_000_000),
            expert_load=load,
            spare_slots=spare,
            causal=causal,
            precision=precision,
            **opt,
        )
    else:
        ttft = f.float("ttft_ms", 1e-3, 1e9, default=None)
        tpot = f.float("tpot_ms", 1e-3, 1e9, default=None)
        targeted = ttft is not None or tpot is not None
        w = Workload(
            kind,
            # with a latency target the concurrency is searched, so the batch may be left out
            batch=f.int("batch", 1, 10_000_000, default=1 if targeted else MISSING),
            phase=f.str("phase", ("prefill", "decode", "both")),
            input_len=f.int("input_len", 1, 10_000_000),
            output_len=f.int("output_len", 0, 10_000_000, default=0),
            ttft_ms=ttft,
            tpot_ms=tpot,
            expert_load=load,
            spare_slots=spare,
            causal=causal,
            precision=precision,
        )
        if ttft is not None and w.phase == "decode":
            raise f.error("ttft_ms", "a TTFT target needs a prefill: use phase prefill or both")
        if tpot is not None and w.phase == "prefill":
            raise f.error("tpot_ms", "a TPOT target needs decoding: use phase decode or both")
    f.finish()
    return w


# --------------------------------------------------------------------------- files
@dataclass(frozen=True)
class ModelFile:
    model: ModelSpec
    workload: Workload | None = None
    notes: str = ""
    source: str = ""
    extras: dict[str, Any] = field(default_factory=dict)


def parse_model(data: Any, source: str) -> ModelFile:
    """A model file (autopar YAML) or a Hugging Face config.json, told apart by its keys."""
    if isinstance(data, dict) and "num_hidden_layers" in data:
        from .hf import model_from_hf

        return ModelFile(model_from_hf(data, source), source=source)
    f = Fields(source, data)
    notes = f.text("notes")
    f.text("assumptions")
    m = f.section("model")
    model = _read_model_fields(m)
    m.finish()
    workload = _read_workload_fields(f.section("workload")) if f.has("workload") else None
    f.used.add("workload")
    f.finish()
    return ModelFile(model, workload, notes, source)


def load_model(path: str | Path) -> ModelFile:
    return parse_model(read_data(path), str(path))


def parse_hardware(data: Any, source: str) -> HardwareSpec:
    f = Fields(source, data)
    hw = _read_hardware_fields(f)
    f.text("notes")
    f.text("assumptions")
    f.finish()
    return hw


def load_hardware(path: str | Path) -> HardwareSpec:
    return parse_hardware(read_data(path), str(path))


def parse_workload(data: Any, source: str) -> Workload:
    return _read_workload_fields(Fields(source, data))
