"""The hardware spec: a GPU (from the bundled catalogue or stated), nodes of GPUs and the two
links between them, read and range-checked from a hardware file."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

from .fields import MISSING, Fields
from .units import DTYPE_BYTES, GB


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

