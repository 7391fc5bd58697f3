"""`autopar check` of the `uniform` form of a mixed solve (`plan.mixed_uniform`): a one-type
plan priced on the mixed cluster paced by its slowest type. The one-type check verifies its
figures; here, that its `uniform_on` groups tile the plan's GPUs and, where the mixed file
is given, that the file holds those groups and that every group's GPUs and links do at
least what the plan's hardware was priced at (each GPU's peak in every precision, its
memory, its links), so every figure holds on the mixed cluster. The spec checked against
is the mixed file's paced spec (`spec.groups.paced_by_slowest`), not the echo."""

from __future__ import annotations

from typing import Any

from ..errors import InputError
from ..spec import HardwareSpec
from ..spec.files import load_any_hardware
from ..spec.groups import MixedHardware, paced_by_slowest
from .echo import hardware_from_echo, model_from_echo
from .finding import Findings

TOL = 1e-9


def _dominates(f: Findings, name: str, g: HardwareSpec, hw: HardwareSpec) -> None:
    """Group `name`'s spec does at least what `hw` (the plan's) promises."""
    at = f"uniform_on.groups.{name}"
    for dtype, peak in hw.gpu.peak_flops.items():
        if g.gpu.flops(dtype) < peak * (1 - TOL):
            f.error("hardware", at, f"its {g.gpu.name} is slower in {dtype} than the plan's "
                    "GPU was priced", g.gpu.flops(dtype), f">= {peak:.6g}")
    if g.gpu.memory_bytes < hw.gpu.memory_bytes * (1 - TOL):
        f.error("hardware", at, "its GPUs hold less than the plan's GPU was priced with",
                g.gpu.memory_bytes, f">= {hw.gpu.memory_bytes:.6g}")
    if g.gpu.hbm_bytes_per_s < hw.gpu.hbm_bytes_per_s * (1 - TOL):
        f.error("hardware", at, "its HBM is slower than priced", g.gpu.hbm_bytes_per_s,
                f">= {hw.gpu.hbm_bytes_per_s:.6g}")
    links = [("intra_node", g.intra, hw.intra)]
    if hw.nodes > 1:
        links.append(("inter_node", g.inter, hw.inter))
    for what, have, want in links:
        if have.bytes_per_s < want.bytes_per_s * (1 - TOL) or \
                have.latency_s > want.latency_s * (1 + TOL):
            f.error("hardware", f"{at}.{what}", "a link slower than priced",
                    [have.bytes_per_s, have.latency_s], [want.bytes_per_s, want.latency_s])


def check_uniform(f: Findings, plan: dict, given: Any, source: str) -> HardwareSpec | None:
    """The uniform form's own findings; returns the spec to check the plan's figures
    against (the mixed file's paced spec, where a mixed file is given), else None."""
    u = plan.get("uniform_on")
    if not isinstance(u, dict) or not isinstance(u.get("groups"), list):
        f.error("schema", "uniform_on", "a uniform plan states the mixed cluster it runs on")
        return None
    n = plan.get("strategy", {}).get("num_gpus")
    spans = sorted((int(g["first_gpu"]), int(g["count"])) for g in u["groups"])
    first = 0
    for a, c in spans:
        if a != first:
            f.error("gpus", "uniform_on.groups", "the groups do not tile GPUs 0..N-1")
            break
        first += c
    if first != n:
        f.error("degrees", "uniform_on.groups", "the groups' GPUs are not the plan's", first, n)
    if given is None or isinstance(given, HardwareSpec):
        return given
    mixed = given if isinstance(given, MixedHardware) else load_any_hardware(given)
    if not isinstance(mixed, MixedHardware):
        return mixed
    own = {g.name: g for g in mixed.groups}
    for g in u["groups"]:
        x = own.get(g["name"])
        if x is None or x.count != g["count"] or x.hw.gpu.name != g["gpu_type"]:
            raise InputError(mixed.source or mixed.name, "groups", f"has no group "
                             f"{g['name']!r} of {g['count']} x {g['gpu_type']} (the plan's)")
    try:
        echo = hardware_from_echo(plan["inputs"]["hardware"], source)
        dtype = model_from_echo(plan["inputs"]["model"], source).dtype
    except (InputError, KeyError, TypeError) as exc:
        f.error("inputs", "inputs", f"cannot rebuild the specs from the echo: {exc}")
        return None
    paced = paced_by_slowest(mixed, dtype)
    if paced is None:
        f.error("hardware", "uniform_on", f"{mixed.name}'s groups share no node size")
        return None
    for g in mixed.groups:
        _dominates(f, g.name, g.hw, echo)
    return paced
