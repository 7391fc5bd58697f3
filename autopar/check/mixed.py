"""`autopar check` of a mixed-group plan (`"mixed_groups": 1`, `plan.mixed`), independently of
the search: every group's spec rebuilt from the echo; every stage on GPUs of one group and
type; every stage's memory recomputed term by term on its group (`recompute.expected_memory`
with that group's spec) and held to that group's capacity; every stage's busy time at least
its FLOPs at its group's peak; the step recomputed from the stage times; any uneven head
split a plan states checked for whole KV groups; the framework's mixed-group rules."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..spec import HardwareSpec, ModelSpec, Workload, load_model
from ..spec.files import load_any_hardware
from ..spec.groups import MIXED_SUPPORT, MixedHardware
from .echo import hardware_from_echo, model_from_echo, workload_from_echo
from .finding import Finding, Findings, close
from .flops import layer_flops
from .framework import check_framework
from .pipeline import pipeline_time
from .recompute import Layout, expected_memory, gemm_dtype, tokens_per_micro_batch

TOL = 1e-6
MEMORY_KEYS = ("weights_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes",
               "kv_cache_bytes", "workspace_bytes", "reserved_bytes", "total_bytes")


def check_rates(f: Findings, plan: dict, w: Workload, gpus: int) -> None:
    """The figures a mixed plan derives from its step (every form alike): tokens/s in all
    (the workload's tokens over the step) and per GPU, and an inference step's TTFT (a
    prefill) or TPOT (a decode step), which is the step itself."""
    mt = plan.get("metrics", {})
    step = mt.get("step_time_s")
    if not isinstance(step, (int, float)) or step <= 0:
        return
    want = {"throughput_tokens_per_s": w.batch * w.tokens_per_sample / step}
    want["tokens_per_s_per_gpu"] = want["throughput_tokens_per_s"] / gpus
    if w.kind != "training":
        key = "ttft_s" if w.phase == "prefill" else "tpot_s"
        want[key] = step
        if key not in mt:
            f.error("metrics", f"metrics.{key}", "an inference step states its latency",
                    None, step)
    for key, value in want.items():
        if key in mt and not close(mt[key], value, TOL):
            f.error("metrics", f"metrics.{key}", "from the workload and the step time",
                    mt[key], value)


def _groups(plan: dict, source: str, given: Any = None) -> list[tuple[dict, HardwareSpec]]:
    """Each group's echo and spec: rebuilt from the echo, or the given mixed file's group of
    that name (the file must hold the plan's groups, each of the same size)."""
    mixed = None
    if given is not None:
        mixed = given if isinstance(given, MixedHardware) else load_any_hardware(given)
        if not isinstance(mixed, MixedHardware):
            raise InputError(str(given), "groups", "a mixed plan is checked against a "
                             "hardware file of GPU groups")
    out = []
    for i, g in enumerate(plan["inputs"]["hardware"]["groups"]):
        try:
            if mixed is None:
                out.append((g, hardware_from_echo(g["hardware"], source)))
                continue
            own = {x.name: x for x in mixed.groups}.get(g["name"])
            if own is None or own.count != g["count"]:
                raise InputError(mixed.source or mixed.name, "groups", f"has no group "
                                 f"{g['name']!r} of {g['count']} GPUs (the plan's)")
            out.append((g, own.hw))
        except (KeyError, TypeError) as exc:
            raise InputError(source, f"inputs.hardware.groups[{i}]",
                             f"not a group echo (missing {exc})") from None
    return out


def stage_floor_s(m: ModelSpec, w: Workload, lay: Layout, stage: int, peak: float,
                  flash: bool = True, expert_scale: float = 1.0) -> float:
    """A stage's busy time per micro-batch can be no less than its layers' FLOPs on one
    GPU (forward, and twice that backward in training; TP and CP split them) at its GPU's
    peak: what a stage priced on a faster group than its own would break. `expert_scale`:
    a rank's experts over the even share (uneven expert slots route it that much more)."""
    first, last = lay.stage_layers[stage]
    T = tokens_per_micro_batch(w, lay)
    per_token = sum(fl * (m.top_k / lay.ep * expert_scale if c.is_expert else 1.0 / lay.tp)
                    for x in range(first, last + 1) for c, fl in layer_flops(m, w, x, flash))
    passes = 3 if w.kind == "training" else 1
    return per_token * T * passes / peak


def check_mixed(plan: dict, source: str = "plan", framework: str | None = None,
                model: Any = None, hw: Any = None, workload: Workload | None = None
                ) -> list[Finding]:
    """The findings of a mixed plan; `model` (a path, ModelFile or ModelSpec), `hw` (a
    mixed hardware file) and `workload` override the plan's echo."""
    f = Findings()
    inputs = plan.get("inputs", {})
    if isinstance(model, (str, Path)):
        model = load_model(model)
    m = getattr(model, "model", model) or model_from_echo(inputs.get("model"), source)
    w = workload or workload_from_echo(inputs.get("workload"), source)
    groups = _groups(plan, source, hw)
    s = plan["strategy"]
    lay = Layout.from_strategy(s)
    width = lay.width
    flash = bool(inputs.get("options", {}).get("flash_attention", True))
    total = sum(g["count"] for g, _ in groups)
    if total != lay.num_gpus or lay.pp * width != lay.num_gpus:
        f.error("degrees", "strategy.num_gpus", "the groups' GPUs, PP x stage width and the "
                "plan's GPU count differ", lay.num_gpus, total)
        return f.items
    spans = [(g["first_gpu"], g["first_gpu"] + g["count"]) for g, _ in groups]
    if sorted(spans) != [(a, b) for a, b in sorted(spans)] or sum(b - a for a, b in spans) \
            != total or min(a for a, _ in spans) != 0:
        f.error("gpus", "inputs.hardware.groups", "the groups do not tile GPUs 0..N-1")
    covered = [x for a, b in lay.stage_layers for x in range(a, b + 1)]
    if covered != list(range(m.layers)):
        f.error("stages", "strategy.stage_layers", "the stages do not hold every layer once, "
                "in order", s["stage_layers"], f"0..{m.layers - 1}")
        return f.items
    shares = plan.get("mode") == "dp_shares"
    runs: dict[str, list[tuple[int, dict]]] = {}  # one pipeline, or one per group (shares)
    worst = 0.0
    for idx, st in enumerate(plan["stages"]):
        path = f"stages[{idx}]"
        k = int(st.get("stage", idx))
        if shares:  # every replica of the group runs this stage: the group's GPUs
            a, b = int(st["gpus"][0]), int(st["gpus"][1]) + 1
        else:
            a, b = k * width, (k + 1) * width
        holders = [i for i, (x, y) in enumerate(spans) if x <= a and b <= y]
        if not holders:
            f.error("gpus", f"{path}.gpus", "the stage spans two GPU groups (a stage must "
                    "sit on one type)", [a, b - 1])
            continue
        g, hw = groups[holders[0]]
        if st.get("group") != g["name"] or st.get("gpu_type") != hw.gpu.name:
            f.error("gpus", f"{path}.group", "the stage's GPUs are another group's",
                    [st.get("group"), st.get("gpu_type")], [g["name"], hw.gpu.name])
        lk = replace(lay, num_micro_batches=int(st["micro_batches"])) if shares else lay
        worst = max(worst, _check_stage(f, st, m, w, lk, k, hw, flash, path))
        _check_heads(f, st, m, lay, path)
        runs.setdefault(g["name"] if shares else "", []).append((k, st))
    steps = []
    counts = [b - a + 1 for a, b in lay.stage_layers]
    for name, entries in runs.items():
        if [k for k, _ in entries] != list(range(lay.pp)):
            f.error("stages", "stages", f"{name or 'the pipeline'} does not run stages "
                    f"0..{lay.pp - 1} in order", [k for k, _ in entries])
            continue
        mb = int(entries[0][1]["micro_batches"]) if shares else lay.num_micro_batches
        step = pipeline_time([st["busy_s"] for _, st in entries], mb, lay.virtual_stages,
                             counts) + max(st["dp_exposed_s"] for _, st in entries) + \
            max(st["optimizer_s"] for _, st in entries)
        steps.append(step)
        if shares and not close(entries[0][1]["group_step_s"], step, TOL):
            f.error("timing", f"stages ({name}).group_step_s", "the group's pipeline + "
                    "sync + optimizer", entries[0][1]["group_step_s"], step)
    if shares:
        _check_shares(f, plan, groups, lay, w)
    if steps and len(steps) == len(runs):
        step = max(steps)
        claimed = plan["metrics"]["step_time_s"]
        if not close(claimed, step, TOL):
            f.error("timing", "metrics.step_time_s", "pipeline of the stage times + the "
                    "largest exposed sync + the largest optimizer step (the slowest group's "
                    "under shares)", claimed, step)
        if not close(plan["metrics"].get("memory_max_over_capacity", worst), worst, TOL):
            f.error("metrics", "metrics.memory_max_over_capacity", "the fullest stage over "
                    "its group's capacity", plan["metrics"]["memory_max_over_capacity"], worst)
    check_rates(f, plan, w, lay.num_gpus)
    name = framework or plan.get("framework")
    if name and name != "any":
        _check_mixed_rules(f, plan, name)
        check_framework(f, plan, name, m, w)
    return sorted(f.items, key=lambda x: x.severity != "error")


def _check_stage(f: Findings, st: dict, m: ModelSpec, w: Workload, lay: Layout, k: int,
                 hw: HardwareSpec, flash: bool, path: str) -> float:
    """One stage entry's memory (recomputed on its group, against its capacity) and busy
    time (forward + backward, no less than its FLOPs at the group's peak); its fullness."""
    want = expected_memory(m, hw, w, lay, k, _own(m, lay), {}, flash)
    mem = st["memory"]
    for key in MEMORY_KEYS:
        if key in mem and not close(mem[key], want[key], TOL):
            f.error("memory", f"{path}.memory.{key}", "recomputed on the stage's group "
                    "differs", mem[key], want[key])
    if not close(mem.get("capacity_bytes", 0.0), hw.gpu.memory_bytes, TOL):
        f.error("memory", f"{path}.memory.capacity_bytes", "not the group's GPU memory",
                mem.get("capacity_bytes"), hw.gpu.memory_bytes)
    if want["total_bytes"] > hw.gpu.memory_bytes * (1 + TOL):
        f.error("memory", f"{path}.memory.total_bytes", f"exceeds the {hw.gpu.name} "
                "capacity", want["total_bytes"], f"<= {hw.gpu.memory_bytes:.6g}")
    floor = stage_floor_s(m, w, lay, k, hw.gpu.flops(gemm_dtype(m, w)), flash)
    if st["busy_s"] < floor * (1 - TOL):
        f.error("timing", f"{path}.busy_s", f"faster than its FLOPs at the {hw.gpu.name} "
                "peak", st["busy_s"], f">= {floor:.6g}")
    if not close(st["busy_s"], st["fwd_s"] + st["bwd_s"], TOL):
        f.error("timing", f"{path}.busy_s", "not forward + backward", st["busy_s"],
                st["fwd_s"] + st["bwd_s"])
    return want["total_bytes"] / hw.gpu.memory_bytes


def _check_shares(f: Findings, plan: dict, groups: list, lay: Layout, w: Workload) -> None:
    """Data-parallel shares: each group a whole number of replicas, the replicas summing to
    DP, their samples covering the batch."""
    sh = plan.get("shares", {})
    size = lay.tp * lay.cp * lay.pp
    total_r = samples = 0
    for g, _ in groups:
        x = sh.get(g["name"])
        if not isinstance(x, dict):
            f.error("degrees", f"shares.{g['name']}", "no share for the group")
            return
        if x["replicas"] * size != g["count"]:
            f.error("degrees", f"shares.{g['name']}.replicas", "replicas x TP x CP x PP is "
                    "not the group's GPUs", x["replicas"], g["count"] // size)
        total_r += x["replicas"]
        samples += x["replicas"] * x["micro_batches"] * lay.micro_batch
    if total_r != lay.dp:
        f.error("degrees", "shares", "the groups' replicas do not sum to DP", total_r, lay.dp)
    if samples < w.batch:
        f.error("degrees", "shares", "the replicas' samples do not cover the batch", samples,
                f">= {w.batch}")


def _own(m: ModelSpec, lay: Layout) -> dict[int, int]:
    """Experts per EP rank in each MoE layer: an even split (the mixed pipeline's)."""
    return {x: m.experts // lay.ep for x in range(m.layers) if m.is_moe_layer(x)} \
        if m.is_moe else {}


def _check_heads(f: Findings, st: dict, m: ModelSpec, lay: Layout, path: str) -> None:
    """An uneven head split a stage states (`tp_heads`, per TP rank): every rank whole KV
    groups, all the heads once."""
    heads = st.get("tp_heads")
    if heads is None:
        return
    per = m.heads // m.kv_heads
    if len(heads) != lay.tp or sum(heads) != m.heads or any(h < per or h % per for h in heads):
        f.error("shards", f"{path}.tp_heads", f"{lay.tp} ranks of whole key-value groups "
                f"({per} heads each) summing to {m.heads}", heads)


def _check_mixed_rules(f: Findings, plan: dict, name: str) -> None:
    """What `spec.groups.MIXED_SUPPORT` says the framework cannot run."""
    rules = MIXED_SUPPORT.get(name)
    if rules is None:
        f.error("framework", "framework", f"{name} has no known support for mixed GPU groups")
        return
    uneven = any(len(set(st.get("tp_heads") or [0])) > 1 for st in plan["stages"])
    if uneven and not rules["uneven_tp"]:
        f.error("framework", "stages.tp_heads", f"{name} splits heads evenly over TP "
                f"({rules['why_tp']})")
    counts = {st.get("micro_batches") for st in plan["stages"]} - {None}
    if len(counts) > 1 and not rules.get("uneven_dp", False):
        f.error("framework", "shares", f"{name} gives every data-parallel rank the same "
                f"micro-batches ({rules['why_dp']})")
    types = {st.get("gpu_type") for st in plan["stages"]} if plan.get("mode") != \
        "dp_shares" else set()
    if len(types) > 1 and not rules["mixed_pipeline"]:
        f.error("framework", "stages.gpu_type", f"{name} cannot run stages on different GPU "
                f"types ({rules['why_pipeline']})")


def is_mixed(plan: Any) -> bool:
    return isinstance(plan, dict) and "mixed_groups" in plan
