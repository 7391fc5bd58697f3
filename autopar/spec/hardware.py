"""The hardware spec: a GPU (from the bundled catalogue or stated), nodes of GPUs, the NVLink
domains they form and the two links, read and range-checked from a hardware file.

A node (a server, or an NVL72 compute tray) is what has its own NICs, host and processes; an
NVLink domain is the set of GPUs one NVLink (or Infinity Fabric) fabric joins: one node on
an HGX / DGX server, 18 trays of 4 on a GB200 NVL72 rack. Groups inside a domain use the
intra link, groups across domains the inter (NIC) link."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

from .fields import MISSING, Fields
from .units import GB, PEAK_DTYPES, PEAK_KEY


@dataclass(frozen=True)
class GPUSpec:
    name: str
    memory_bytes: float
    peak_flops: dict[str, float]  # dtype -> FLOP/s, dense
    hbm_bytes_per_s: float
    sources: tuple[str, ...] = ()
    gemm_eff: float | None = None  # measured large-GEMM fraction of the 16-bit peak (catalogue)
    nvlink_eff: float | None = None  # measured NVLink all-reduce bus bandwidth / line rate
    sms: int | None = None  # streaming multiprocessors (what reserved communication SMs share)

    def flops(self, dtype: str) -> float:
        """Peak FLOP/s of a GEMM in `dtype` (nvfp4: the fp4 rate). The fp4 rate is only ever
        a 4-bit GEMM's: a dtype the GPU states no peak for falls back among the others."""
        key = PEAK_KEY.get(dtype, dtype)
        if key in self.peak_flops:
            return self.peak_flops[key]
        if dtype in ("fp8", "fp16"):  # fall back to the 16-bit tensor-core rate
            return self.peak_flops.get("bf16", self.max_flops())
        if dtype == "nvfp4":  # no fp4 tensor cores (refused for a checkpoint: cost.fp8)
            return self.flops("fp8")
        if dtype == "mxfp4":  # no fp4 tensor cores: dequantized to 16 bits (cost.fp8)
            return self.flops("bf16")
        return self.max_flops()

    def max_flops(self, fp4: bool = False) -> float:
        """The highest peak a GEMM can reach here; the fp4 one only where `fp4` (a model
        whose GEMMs run in 4 bits): what a compute bound (MFU <= 1) takes."""
        rates = [v for k, v in self.peak_flops.items() if fp4 or k != "fp4"]
        return max(rates or self.peak_flops.values())


@dataclass(frozen=True)
class LinkSpec:
    bytes_per_s: float  # per GPU, per direction
    latency_s: float


TOPOLOGIES = ("switch", "mesh")


@dataclass(frozen=True)
class HardwareSpec:
    name: str
    gpu: GPUSpec
    nodes: int
    gpus_per_node: int
    intra: LinkSpec
    inter: LinkSpec
    reserved_bytes: float = 1.0 * GB  # CUDA context, NCCL buffers, allocator slack
    # nodes per NVLink domain; kept in nodes (not GPUs) so that a cluster cut into fewer or
    # narrower nodes (serving pools, the fewest-GPUs advice) keeps its racks
    nodes_per_domain: int = 1
    # "switch": every GPU reaches every peer of its domain at `intra` (NVSwitch);
    # "mesh": one link of `intra` per peer (AMD Infinity Fabric), see `intra_rate`
    intra_topology: str = "switch"

    @property
    def num_gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def nvlink_domain(self) -> int:
        """GPUs per NVLink domain (the last one is partial when the nodes do not fill it)."""
        return min(self.nodes_per_domain, self.nodes) * self.gpus_per_node

    @property
    def domains(self) -> int:
        return -(-self.nodes // self.nodes_per_domain)

    def domain_of(self, gpu: int) -> int:
        return self.node_of(gpu) // self.nodes_per_domain

    def intra_rate(self, members: int) -> float:
        """Per-GPU rate of a collective among `members` GPUs of one domain. On a switch it is
        the GPU's link; on a full mesh each member has one link per peer, and the direct
        (all-pairs) algorithm, or members - 1 edge-disjoint rings, drives all members - 1 of
        them at once: (members - 1) x the per-peer link."""
        if self.intra_topology == "mesh":
            return max(members - 1, 0) * self.intra.bytes_per_s
        return self.intra.bytes_per_s

    @property
    def usable_bytes(self) -> float:
        return self.gpu.memory_bytes - self.reserved_bytes

    def node_of(self, gpu: int) -> int:
        return gpu // self.gpus_per_node


def default_nodes(gpu_type: str = "H100-SXM5-80GB") -> dict[str, Any]:
    """The cluster a command assumes where it is given no hardware file (`autopar place`'s
    rebalance price, `autopar recommend --gpu` alone): nodes of 8 GPUs of `gpu_type` on its
    catalogue NVLink, one 400 Gb/s NIC per GPU (the HGX / DGX layout of
    problems/hw/h100-4node.yaml), 8 us; its name says so wherever it is echoed."""
    return {"name": f"default nodes (8 x {gpu_type}, NVLink, 400 Gb/s NIC per GPU)",
            "gpu": {"type": gpu_type}, "gpus_per_node": 8,
            "inter_node": {"bandwidth_gbps": 50, "latency_us": 8}}


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
        bad = [k for k in tflops if k not in PEAK_DTYPES]
        if bad:
            raise t.error(bad[0], f"unknown dtype; known: {', '.join(PEAK_DTYPES)}")
    elif tflops_default is None:
        raise f.error("tflops", "missing required field (e.g. tflops: {bf16: 400})")
    else:
        f.used.add("tflops")
        tflops = dict(tflops_default)
    hbm = f.float("hbm_tbps", 0.001, 1000, default=base.get("hbm_tbps", need))
    nvlink = base.get("nvlink_gbps")
    sms = f.int("sms", 1, 100_000, default=base.get("sms"))
    # measured fractions: the catalogue's (its sources), or stated (a plan's echo states them)
    gemm_eff = f.float("gemm_eff", 0.01, 1.0, default=base["gemm_tflops"] / base["tflops"]["bf16"]
                       if "gemm_tflops" in base else None)
    nvlink_eff = f.float("nvlink_eff", 0.01, 1.0, default=base["allreduce_busbw_gbps"] / nvlink
                         if "allreduce_busbw_gbps" in base and nvlink else None)
    gpu = GPUSpec(
        name=name,
        memory_bytes=memory_gb * GB,
        peak_flops={k: v * 1e12 for k, v in tflops.items()},
        hbm_bytes_per_s=hbm * 1e12,
        sources=tuple(base.get("sources", ())),
        gemm_eff=gemm_eff,
        nvlink_eff=nvlink_eff,
        sms=sms,
    )
    return gpu, nvlink


def _read_link(f: Fields, key: str, default_gbps: float | None, default_us: float,
               topology: str | None = None) -> tuple[LinkSpec, str]:
    """The link and, for the intra link (`topology` not None), its topology."""
    if not f.has(key):
        f.used.add(key)
        if default_gbps is None:
            raise f.error(key, "missing required field (bandwidth_gbps, latency_us)")
        return LinkSpec(default_gbps * GB, default_us * 1e-6), topology or "switch"
    g = f.section(key)
    bw = g.float("bandwidth_gbps", 0.001, 100_000, default=default_gbps)
    if bw is None:
        raise g.error("bandwidth_gbps", "missing required field")
    lat = g.float("latency_us", 0.0, 1e6, default=default_us)
    if topology is not None:
        topology = g.str("topology", TOPOLOGIES, default=topology)
    g.finish()
    return LinkSpec(bw * GB, lat * 1e-6), topology or "switch"


def _read_domain(f: Fields, nodes: int, gpn: int, default: int | None) -> int:
    """Nodes per NVLink domain from `nvlink_domain` (GPUs): a whole number of nodes that
    divides the cluster. Without the field: the catalogue's domain (GB200 / GB300: 72),
    capped at the cluster (a cluster under a rack is one domain), else one node."""
    total = nodes * gpn
    stated = f.has("nvlink_domain")
    domain = f.int("nvlink_domain", 1, 10_000_000, default=min(default or gpn, total))
    why = "" if stated else f" (the GPU's catalogue default {default}; state nvlink_domain)"
    if domain % gpn:
        raise f.error("nvlink_domain", f"{domain} GPUs is not a whole number of nodes of "
                      f"{gpn} GPUs{why}")
    if total % domain:
        raise f.error("nvlink_domain", f"{domain} GPUs does not divide the {total} GPUs "
                      f"({nodes} nodes of {gpn}){why}")
    return domain // gpn


def _read_hardware_fields(f: Fields) -> HardwareSpec:
    name = f.str("name")
    g = f.section("gpu")
    gpu, nvlink = _read_gpu(g)
    g.finish()
    nodes = f.int("nodes", 1, 100_000, default=1)
    gpn = f.int("gpus_per_node", 1, 1024)
    part = gpu_catalogue().get(gpu.name, {}) if g.has("type") else {}
    per_domain = _read_domain(f, nodes, gpn, part.get("nvlink_domain"))
    wide = gpn * per_domain > 1  # a domain of one GPU has no intra link to describe
    # a link no group can use (one GPU per domain, or one domain) needs no figures
    intra, topology = _read_link(f, "intra_node", nvlink if wide and nvlink else (
        None if wide else 1000.0), 3.0, part.get("nvlink_topology", "switch"))
    inter, _ = _read_link(f, "inter_node", None if nodes > per_domain else 25.0, 10.0)
    reserved = f.float("reserved_gb", 0.0, 10_000, default=1.0)
    if reserved * GB >= gpu.memory_bytes:
        raise f.error("reserved_gb",
                      f"{reserved} GB leaves no memory on a {gpu.memory_bytes / GB:g} GB GPU")
    return HardwareSpec(name, gpu, nodes, gpn, intra, inter, reserved * GB, per_domain,
                        topology)

