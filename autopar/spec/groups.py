"""Hardware of several GPU groups (`groups:` in a hardware file): an H100 node beside an A100
node, a node with one failed GPU, PCIe cards beside NVLink boards.

Each group is read exactly as a one-type hardware file (`hardware._read_hardware_fields`),
so it is validated field by field and stands alone as a `HardwareSpec`: what the cost model
prices a stage on that group with. Groups are whole nodes, numbered in file order (group 0's
GPUs first); a link between groups is the NIC (`inter_node`), since two groups never share a
node. A file with one group is exactly the one-type spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from math import gcd
from typing import Any

from ..errors import InputError
from .fields import Fields
from .hardware import HardwareSpec, LinkSpec, _read_hardware_fields
from .units import GB

MAX_GROUPS = 16
# what a group may state; the file's `inter_node` and `reserved_gb` are every group's default
GROUP_KEYS = ("name", "gpu", "nodes", "gpus_per_node", "nvlink_domain", "intra_node",
              "inter_node", "reserved_gb")


@dataclass(frozen=True)
class GPUGroup:
    """One group: its own homogeneous cluster (`hw`), and where its GPUs sit in the whole."""

    name: str
    hw: HardwareSpec
    first_gpu: int

    @property
    def count(self) -> int:
        return self.hw.num_gpus

    @property
    def gpus(self) -> range:
        return range(self.first_gpu, self.first_gpu + self.count)


@dataclass(frozen=True)
class MixedHardware:
    """GPU groups of different types, counts and links, with the NIC link between them."""

    name: str
    groups: tuple[GPUGroup, ...]
    inter: LinkSpec
    source: str = ""

    @property
    def num_gpus(self) -> int:
        return sum(g.count for g in self.groups)

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(g.hw.gpu.name for g in self.groups))

    def group_of(self, gpu: int) -> GPUGroup:
        for g in self.groups:
            if gpu in g.gpus:
                return g
        raise IndexError(f"GPU {gpu} is not in {self.name} ({self.num_gpus} GPUs)")

    def reordered(self, order: tuple[int, ...]) -> MixedHardware:
        """The same groups numbered in another order (which group holds the first stage)."""
        out, first = [], 0
        for i in order:
            g = self.groups[i]
            out.append(replace(g, first_gpu=first))
            first += g.count
        return replace(self, groups=tuple(out))

    def uniform(self, group: GPUGroup) -> HardwareSpec | None:
        """Every GPU of the cluster treated as `group`'s type, on nodes of the size every
        group's node is a whole number of (what a one-type planner given this cluster would
        assume); None when the groups share no node size above one GPU."""
        gpn = 0
        for g in self.groups:
            gpn = gcd(gpn, g.hw.gpus_per_node)
        n = self.num_gpus
        if n % gpn:
            return None
        one_node = n == gpn
        return replace(group.hw, name=f"{self.name} as {group.hw.gpu.name}", nodes=n // gpn,
                       gpus_per_node=gpn, nodes_per_domain=1,
                       inter=group.hw.inter if one_node else self.inter)


def speed(hw: HardwareSpec, dtype: str) -> float:
    """A GPU's GEMM peak in `dtype`, times its measured GEMM fraction where the catalogue has
    one: what orders the groups from slowest to fastest."""
    return hw.gpu.flops(dtype) * (hw.gpu.gemm_eff or 1.0)


def slowest(mixed: MixedHardware, dtype: str) -> GPUGroup:
    return min(mixed.groups, key=lambda g: (speed(g.hw, dtype), g.hw.gpu.memory_bytes))


def fastest(mixed: MixedHardware, dtype: str) -> GPUGroup:
    return max(mixed.groups, key=lambda g: (speed(g.hw, dtype), g.hw.gpu.memory_bytes))


def paced_by_slowest(mixed: MixedHardware, dtype: str) -> HardwareSpec | None:
    """The whole cluster as one type that every GPU and link of it does at least as well as:
    the slowest type (its name and calibration), each field the least of any group's (peak
    in each precision, memory, HBM, measured efficiencies), the most reserved, the slowest
    link inside a node and between nodes. A one-type plan on it is a plan on the mixed cluster
    (each GPU does equal work, the slowest paces it): the `uniform` form of a mixed solve,
    and what `check` rebuilds from the mixed file. None when the groups share no node size."""
    slow = slowest(mixed, dtype)
    hw = mixed.uniform(slow)
    if hw is None:
        return None
    gs = [g.hw for g in mixed.groups]
    link = lambda xs: LinkSpec(min(x.bytes_per_s for x in xs),  # noqa: E731
                               max(x.latency_s for x in xs))
    inters = [g.inter for g in gs] + [mixed.inter]
    topo = {g.intra_topology for g in gs}
    eff = lambda xs: None if None in xs else min(xs)  # noqa: E731
    gpu = replace(hw.gpu, memory_bytes=min(g.gpu.memory_bytes for g in gs),
                  peak_flops={k: min(g.gpu.flops(k) for g in gs) for k in hw.gpu.peak_flops},
                  hbm_bytes_per_s=min(g.gpu.hbm_bytes_per_s for g in gs),
                  gemm_eff=eff([g.gpu.gemm_eff for g in gs]),
                  nvlink_eff=eff([g.gpu.nvlink_eff for g in gs]))
    return replace(hw, gpu=gpu,
                   intra=link([g.intra for g in gs]),
                   inter=link(inters) if hw.nodes > 1 else hw.inter,
                   reserved_bytes=max(g.reserved_bytes for g in gs),
                   intra_topology=topo.pop() if len(topo) == 1 else "switch",
                   name=f"{mixed.name} paced by {slow.hw.gpu.name}")


def is_grouped(data: Any) -> bool:
    return isinstance(data, Mapping) and "groups" in data


def parse_groups(data: Any, source: str) -> MixedHardware:
    """A hardware file with a `groups:` list. Each group is validated as a one-type file
    (errors name `groups[i].field`); its `inter_node` and `reserved_gb` default to the
    file's. More than one group needs the file's `inter_node` (the NICs between groups)."""
    f = Fields(source, data)
    name = f.str("name")
    raw = data.get("groups")
    if not isinstance(raw, list) or not raw:
        raise f.error("groups", "expected a non-empty list of GPU groups")
    if len(raw) > MAX_GROUPS:
        raise f.error("groups", f"{len(raw)} groups; at most {MAX_GROUPS}")
    f.used.add("groups")
    top_inter = f.section("inter_node", default=None)
    if top_inter is not None:
        f.used.add("inter_node")
    reserved = f.float("reserved_gb", 0.0, 10_000, default=None)
    f.text("notes")
    f.text("assumptions")
    f.finish()
    if len(raw) > 1 and top_inter is None:
        raise f.error("inter_node", "missing required field: the link between GPU groups "
                                    "(bandwidth_gbps, latency_us)")
    groups, names, first = [], set(), 0
    for i, item in enumerate(raw):
        path = f"groups[{i}]"
        if not isinstance(item, Mapping):
            raise InputError(source, path, "expected a mapping (gpu, nodes, gpus_per_node, ...)")
        bad = [k for k in item if k not in GROUP_KEYS]
        if bad:
            raise InputError(source, f"{path}.{bad[0]}",
                             f"unknown field; known: {', '.join(GROUP_KEYS)}")
        gname = item.get("name", f"group{i}")
        if not isinstance(gname, str) or not gname:
            raise InputError(source, f"{path}.name", "expected a non-empty string")
        if gname in names:
            raise InputError(source, f"{path}.name", f"{gname!r} names two groups")
        names.add(gname)
        merged = dict(item)
        merged["name"] = name if len(raw) == 1 else f"{name}/{gname}"
        if "inter_node" not in merged and top_inter is not None:
            merged["inter_node"] = top_inter.data
        if "reserved_gb" not in merged and reserved is not None:
            merged["reserved_gb"] = reserved
        g = Fields(source, merged, path)
        hw = _read_hardware_fields(g)
        g.finish()
        groups.append(GPUGroup(gname, hw, first))
        first += hw.num_gpus
    inter = groups[0].hw.inter
    if top_inter is not None:
        t = Fields(source, top_inter.data, "inter_node")
        bw = t.float("bandwidth_gbps", 0.001, 100_000)
        lat = t.float("latency_us", 0.0, 1e6, default=10.0)
        t.finish()
        inter = LinkSpec(bw * GB, lat * 1e-6)
    return MixedHardware(name, tuple(groups), inter, source)


def one_type(mixed: MixedHardware) -> HardwareSpec | None:
    """The one-type spec of a file with one group (exactly what the flat file reads)."""
    return mixed.groups[0].hw if len(mixed.groups) == 1 else None


def refuse_mixed(mixed: MixedHardware, what: str) -> InputError:
    """The one line a path that plans one GPU type gives for a mixed file."""
    kinds = ", ".join(f"{g.count} x {g.hw.gpu.name}" for g in mixed.groups)
    return InputError(mixed.source or mixed.name, "groups",
                      f"{len(mixed.groups)} GPU groups ({kinds}): {what} plans one GPU type; "
                      "`autopar solve` / autopar.solve plan mixed groups (a training step, one "
                      "prefill / decode step, or the serving search; docs/hardware.md, mixed "
                      "GPU groups)")


# What each training framework runs of a mixed plan, with where it says so: a pipeline whose
# stages sit on different GPU types (each stage its own type) with per-stage layer counts,
# and uneven tensor-parallel shards. Read by the mixed solve (a framework not listed, or
# without mixed_pipeline, is refused in one line) and by `check.mixed`.
MIXED_SUPPORT: dict[str, dict[str, Any]] = {
    "megatron": {
        "mixed_pipeline": True, "uneven_tp": False, "uneven_dp": False,
        "why_dp": "every data-parallel rank takes global-batch-size / (micro-batch-size x "
                  "DP) micro-batches (megatron/core/num_microbatches_calculator.py)",
        "why_pipeline": "each rank is its own process on its own GPU; per-stage layer "
                        "counts by --pipeline-model-parallel-layout",
        "why_tp": "TransformerConfig asserts num_attention_heads % tensor_model_parallel_size "
                  "== 0 and ColumnParallelLinear divides the output size evenly "
                  "(megatron/core/tensor_parallel/layers.py, divide())",
    },
    "torchtitan": {
        "mixed_pipeline": True, "uneven_tp": False, "uneven_dp": False,
        "why_dp": "the dataloader gives every data-parallel rank local_batch_size samples",
        "why_pipeline": "pipeline stages cut at --parallelism.pipeline_parallel_split_points",
        "why_tp": "DTensor Shard(dim) placements split a dimension evenly over the TP mesh",
    },
}
