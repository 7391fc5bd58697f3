"""Rebuild the specs a plan was made for from its `inputs` echo (autopar.plan.inputs_echo).

The echo stores sizes in bytes and rates in bytes/s or FLOP/s; the loaders read GB, TB/s and
TFLOP/s. Going back through the loaders (rather than building the dataclasses directly) means
an edited or hostile echo gets the same range checks and one-line errors as an input file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..spec import (
    HardwareSpec,
    ModelSpec,
    Workload,
    parse_hardware,
    parse_model,
    parse_workload,
)

GB = 1e9


@dataclass(frozen=True)
class Inputs:
    model: ModelSpec | None
    hardware: HardwareSpec | None
    workload: Workload | None
    flash_attention: bool = True


def _mapping(value: Any, source: str, field: str) -> dict:
    if not isinstance(value, dict):
        raise InputError(source, field, "expected a mapping")
    return value


def model_from_echo(data: Any, source: str) -> ModelSpec:
    d = {k: v for k, v in _mapping(data, source, "inputs.model").items() if v is not None}
    return parse_model({"model": d}, f"{source}: inputs").model


def hardware_from_echo(data: Any, source: str) -> HardwareSpec:
    d = _mapping(data, source, "inputs.hardware")
    try:
        gpu = d["gpu"]
        if not gpu["peak_flops"]:
            raise KeyError("peak_flops")
        yaml_form = {
            "name": d["name"],
            "gpu": {"name": gpu["name"], "memory_gb": gpu["memory_bytes"] / GB,
                    "tflops": {k: v / 1e12 for k, v in gpu["peak_flops"].items()},
                    "hbm_tbps": gpu["hbm_bytes_per_s"] / 1e12,
                    **{k: gpu[k] for k in ("sms", "gemm_eff", "nvlink_eff")
                       if gpu.get(k) is not None}},
            "nodes": d["nodes"], "gpus_per_node": d["gpus_per_node"],
            "nvlink_domain": d.get("nvlink_domain"),  # absent before it existed: one node
            "intra_node": {**_link(d["intra_node"]),
                           "topology": d["intra_node"].get("topology", "switch")},
            "inter_node": _link(d["inter_node"]),
            "reserved_gb": d.get("reserved_bytes", GB) / GB,
        }
    except (KeyError, TypeError, AttributeError) as exc:
        raise InputError(source, "inputs.hardware",
                         f"not an autopar hardware echo (missing or bad {exc})") from None
    return parse_hardware(yaml_form, f"{source}: inputs.hardware")


def _link(d: dict) -> dict[str, float]:
    return {"bandwidth_gbps": d["bytes_per_s"] / GB, "latency_us": d["latency_s"] * 1e6}


def workload_from_echo(data: Any, source: str) -> Workload:
    """The echo holds every Workload field under its YAML name, except that training names
    the batch `global_batch` and nests the optimizer dtypes; fields of the other kind are
    defaults there and dropped here."""
    d = {k: v for k, v in _mapping(data, source, "inputs.workload").items() if v is not None}
    opt_keys = ("grad_dtype", "master_dtype", "state_dtype")
    if d.get("kind") == "training":
        for k in ("phase", "input_len", "output_len", "ttft_ms", "tpot_ms"):
            d.pop(k, None)
        if "batch" in d:
            d["global_batch"] = d.pop("batch")
        opt = {k: d.pop(k) for k in opt_keys if k in d}
        if opt:
            d["optimizer"] = opt
    else:
        for k in ("seq_len", *opt_keys):
            d.pop(k, None)
    return parse_workload(d, f"{source}: inputs.workload")


def inputs_from_echo(inputs: Any, source: str) -> Inputs:
    """Whatever of model / hardware / workload the echo holds (None for what it lacks)."""
    if not isinstance(inputs, dict):
        return Inputs(None, None, None)
    model = model_from_echo(inputs["model"], source) if isinstance(
        inputs.get("model"), dict) else None
    hw = hardware_from_echo(inputs["hardware"], source) if isinstance(
        inputs.get("hardware"), dict) else None
    wl = workload_from_echo(inputs["workload"], source) if isinstance(
        inputs.get("workload"), dict) else None
    opts = inputs.get("options") if isinstance(inputs.get("options"), dict) else {}
    return Inputs(model, hw, wl, bool(opts.get("flash_attention", True)))
