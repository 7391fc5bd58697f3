"""`autopar check`: verify a deployment plan against its inputs, independently of the search.

Recomputes what it can from the model, hardware and workload (given, or rebuilt from the
plan's `inputs` echo) with `autopar.check.recompute`, and tests the plan's own identities. Each
inconsistency is a `Finding` with the JSON path, what the plan says and what it should say.
A check whose inputs are broken (a degree mismatch, a missing section) is skipped rather
than reported again in other words, so each defect shows up once, under its own class.
Older coarse plans (`parallel_strategy`, `tensor_parallel_distribution`) go to
`autopar.check.coarse`, which checks what they state and lists the detail they lack.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..schema.gpus import pattern_path, read_gpus
from ..schema.rules import mixed_schema, plan_schema, schema_problems
from ..spec import HardwareSpec, ModelFile, ModelSpec, Workload, load_hardware, load_model
from . import capacity
from .a2a import check_a2a
from .echo import Inputs, inputs_from_echo
from .figures import (
    _fullest,
    _imbalance,
    check_capacity,
    check_communication,
    check_exposed,
    check_flops,
    check_flops_sums,
    check_memory,
    check_metrics,
    check_throughput,
    check_timing,
)
from .finding import Finding, Findings, fmt
from .flops import model_flops_per_step
from .fp8 import check_fp8_timing
from .framework import check_framework, plan_framework
from .layout import check_degrees, check_divisibility, check_ranks, check_stages
from .links import check_links
from .mxfp4 import peak_dtype
from .pipeline import check_layout as check_schedule
from .placement import check_experts, check_shards
from .recompute import gemm_dtype

__all__ = ["Finding", "check_plan", "resolve_inputs", "format_findings", "exit_code"]

COARSE_KEYS = ("parallel_strategy", "tensor_parallel_distribution", "memory_per_gpu_gb",
               "required_tflops", "throughput")


def is_coarse(plan: dict) -> bool:
    """An older hand-written plan: no schema version, some of the coarse keys."""
    return "schema_version" not in plan and any(k in plan for k in COARSE_KEYS)


# --------------------------------------------------------------------------- inputs
def resolve_inputs(plan: dict, f: Findings, model_file: Any = None, hw: Any = None,
                   workload: Workload | None = None, base_dir: str | Path | None = None,
                   source: str = "plan") -> Inputs:
    """Model, hardware and workload to check against: the arguments first, then the plan's
    `inputs` (an echo, or file paths relative to the plan). A broken echo is a finding; a
    broken file given here is an InputError (unusable input)."""
    echo = Inputs(None, None, None)
    raw = plan.get("inputs")
    ref_workload = None
    if isinstance(raw, dict):
        try:
            echo = inputs_from_echo(raw, source)
        except InputError as exc:
            f.error("inputs", "inputs", f"cannot rebuild the specs from the echo: {exc}")
        base = Path(base_dir) if base_dir is not None else Path(".")
        try:  # file references, relative to the plan
            if isinstance(raw.get("model"), str) and model_file is None:
                mf = load_model(_named_file(base, raw["model"], source, "inputs.model"))
                echo = Inputs(mf.model, echo.hardware, echo.workload, echo.flash_attention)
                ref_workload = mf.workload
            if isinstance(raw.get("hardware"), str) and hw is None:
                hw = load_hardware(_named_file(base, raw["hardware"], source, "inputs.hardware"))
        except (InputError, ValueError) as exc:
            f.error("inputs", "inputs", f"cannot read a file the plan names: {exc}")
    model, file_workload = None, None
    if isinstance(model_file, ModelFile):
        model, file_workload = model_file.model, model_file.workload
    elif isinstance(model_file, ModelSpec):
        model = model_file
    elif model_file is not None:
        mf = load_model(model_file)
        model, file_workload = mf.model, mf.workload
    if hw is not None and not isinstance(hw, HardwareSpec):
        hw = load_hardware(hw)
    if model is not None and echo.model is not None and model != echo.model:
        f.warn("inputs", "inputs.model", "the model given differs from the plan's echo; "
               "checking against the model given", echo.model.name, model.name)
    if hw is not None and echo.hardware is not None and _hw_key(hw) != _hw_key(echo.hardware):
        f.warn("inputs", "inputs.hardware", "the hardware given differs from the plan's echo; "
               "checking against the hardware given", echo.hardware.name, hw.name)
    wl = workload or echo.workload or ref_workload or file_workload
    return Inputs(model or echo.model, hw or echo.hardware, wl, echo.flash_attention)


def _named_file(base: Path, name: str, source: str, field: str) -> Path:
    """A spec file a plan names: a .yaml / .yml / .json path inside the plan's directory
    (symlinks resolved), so that a plan from elsewhere cannot make `check` read, or learn
    whether there is, any other file; pass --model / --hw for anything else."""
    def refuse(why: str) -> InputError:
        shown = repr(name if len(name) <= 80 else name[:77] + "...")
        return InputError(source, field, f"{shown} {why}: a plan may name only relative "
                                         ".yaml / .yml / .json files inside its own "
                                         "directory; pass --model / --hw instead")
    path = Path(name.replace("\0", ""))
    if "\0" in name or path.is_absolute() or path.suffix.lower() not in (".yaml", ".yml",
                                                                            ".json"):
        raise refuse("is refused")
    inside = _inside(base, path)
    if inside is None:
        raise refuse("leads outside the plan's directory")
    return inside


def _inside(base: Path, path: Path, max_links: int = 40) -> Path | None:
    """`path` (relative) resolved under `base` one component at a time, or None as soon as
    a `..` or a symlink would leave it: only names inside `base` are ever looked at (lstat,
    readlink), so nothing outside is opened or stat-ed, unlike os.path.realpath."""
    try:
        root = Path(os.path.realpath(base))
        cur, todo, links = root, list(reversed(path.parts)), 0
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if cur == root:
                    return None
                cur = cur.parent
                continue
            step = cur / part
            if not os.path.islink(step):
                cur = step
                continue
            links += 1
            target = Path(os.readlink(step))
            if links > max_links:
                return None
            if target.is_absolute():  # allowed only if it names root itself as a prefix
                if target.parts[:len(root.parts)] != root.parts:
                    return None
                cur, rest = root, target.parts[len(root.parts):]
            else:
                rest = target.parts
            todo.extend(reversed(rest))
        return cur
    except (OSError, ValueError):
        return None


def _hw_key(hw: HardwareSpec) -> tuple:
    r = lambda x: round(x, 3)  # noqa: E731  (the echo stores GB and TB/s as bytes)
    return (hw.num_gpus, hw.gpus_per_node, hw.nvlink_domain, hw.intra_topology,
            r(hw.gpu.memory_bytes / 1e9),
            tuple(sorted((k, r(v / 1e12)) for k, v in hw.gpu.peak_flops.items())),
            r(hw.reserved_bytes / 1e9))


# --------------------------------------------------------------------------- driver
def check_plan(plan: Any, model_file: Any = None, hw: Any = None,
               workload: Workload | None = None, base_dir: str | Path | None = None,
               source: str = "plan", framework: str | None = None) -> list[Finding]:
    """Every inconsistency of `plan` (a parsed plan JSON) with its inputs and itself.

    `model_file` (a path, ModelFile or ModelSpec) and `hw` (a path or HardwareSpec) override
    the plan's `inputs`; `base_dir` resolves file paths the plan's `inputs` names.
    `framework`: also report the rules of that framework the layout breaks (default: the
    framework the plan records, if any)."""
    if not isinstance(plan, dict):
        raise InputError(source, "", "a plan must be a JSON object")
    if "mixed_groups" in plan:  # a plan over mixed GPU groups: its own format and check
        return _check_mixed_doc(plan, source, framework, model_file, hw, workload)
    fw_name = plan_framework(plan, framework)
    f = Findings()
    if plan.get("mode") == "uniform":  # one layout on a mixed cluster, paced by its slowest
        from .uniform import check_uniform

        given = hw
        hw = _guarded(f, "uniform_on", lambda: check_uniform(f, plan, given, source))
        if "groups_apart" in plan:  # a serving plan on a mixed file: its other answers
            from .mixed_serving import check_mixed_serving

            _guarded(f, "groups_apart", lambda: check_mixed_serving(f, plan))
    inputs = resolve_inputs(plan, f, model_file, hw, workload, base_dir, source)
    if is_coarse(plan):
        from .coarse import check_coarse

        _guarded(f, "(plan)", lambda: check_coarse(f, plan, inputs))
    else:
        where = _check_full(f, plan, inputs)
        if fw_name is not None and isinstance(plan.get("strategy"), dict):
            _guarded(f, "strategy", lambda: check_framework(f, plan, fw_name, inputs.model,
                                                            inputs.workload))
        if where is not None:
            f.items = at_patterns(f.items, where)
    return sorted(collapse(f.items), key=lambda x: x.severity != "error")  # stable


def at_patterns(items: list[Finding], where: dict[int, dict[str, int]]) -> list[Finding]:
    """Findings about expanded per-GPU records re-addressed to the patterns of a compact
    plan that state them (`gpus[17].memory...` -> `gpus.memory[2].memory...`); the same
    finding reached through many GPUs of one pattern is kept once."""
    out, seen = [], set()
    for x in items:
        y = replace(x, path=pattern_path(x.path, where))
        key = (y.severity, y.check, y.path, y.message, repr(y.claimed), repr(y.expected))
        if key not in seen:
            seen.add(key)
            out.append(y)
    return out


def _check_full(f: Findings, plan: dict, inp: Inputs) -> dict[int, dict[str, int]] | None:
    """All checks of a full plan; returns where a compact plan's GPUs come from (GPU id ->
    part -> pattern index), None for one record per GPU."""
    broken = _schema(f, plan)
    ok = lambda *sections: not any(s in broken for s in sections)  # noqa: E731
    where = None
    if ok("gpus"):  # either form of gpus[] as one record per GPU (autopar.schema.gpus)
        table = read_gpus(plan)
        for path, problem in table.problems:
            f.error("gpus", path, problem)
        if table.problems:
            broken.add("gpus")
        else:
            plan = {**plan, "gpus": table.records}
            where = table.where
    m, hw, w = inp.model, inp.hardware, inp.workload
    if m is None or hw is None or w is None:
        lacking = [n for n, v in (("model", m), ("hardware", hw), ("workload", w)) if v is None]
        f.warn("inputs", "inputs", f"no {', '.join(lacking)}: figures are checked against "
               "each other only, not recomputed (pass --model / --hw)")
    lay = None
    if ok("strategy"):
        n = hw.num_gpus if hw else plan["strategy"]["num_gpus"]
        lay = _guarded(f, "strategy", lambda: check_degrees(f, plan["strategy"], n, w))
    if lay is not None and m is not None and not _guarded(
            f, "strategy.stage_layers", lambda: check_stages(f, lay, m.layers)):
        lay = None
    if lay is not None and ok("gpus"):
        _guarded(f, "gpus", lambda: check_ranks(f, plan["gpus"], lay, hw))
        if f.has_errors("degrees") or f.has_errors("stages"):
            lay = None
    if lay is not None and m is not None:
        _guarded(f, "strategy", lambda: check_divisibility(f, plan, m, lay))
        if ok("gpus"):
            _guarded(f, "gpus", lambda: check_shards(f, plan, m, lay))
            _guarded(f, "experts", lambda: check_experts(f, plan, m, lay))
            if hw and w:
                _guarded(f, "gpus", lambda: check_memory(f, plan, m, hw, w, lay,
                                                         inp.flash_attention))
            else:
                _guarded(f, "gpus", lambda: check_capacity(
                    f, plan["gpus"], hw.gpu.memory_bytes if hw else None))
        if ok("communication") and hw and w:
            _guarded(f, "communication",
                     lambda: check_communication(f, plan, m, hw, w, lay))
            _guarded(f, "communication", lambda: check_links(f, plan, hw, lay))
            _guarded(f, "communication", lambda: check_a2a(f, plan, m, hw, lay))
        if w:  # [capacity] the options and each MoE layer's record
            _guarded(f, "experts", lambda: capacity.check_capacity(f, plan, m, w, lay))
            _guarded(f, "strategy", lambda: check_schedule(f, lay))  # [dualpipe]
    elif ok("gpus"):
        _guarded(f, "gpus", lambda: check_capacity(
            f, plan["gpus"], hw.gpu.memory_bytes if hw else None))
    if ok("flops", "gpus"):
        if lay is not None and m is not None and w is not None:
            _guarded(f, "flops", lambda: check_flops(f, plan, m, w, lay, inp.flash_attention))
        else:
            _guarded(f, "flops", lambda: check_flops_sums(f, plan))
    if ok("timing"):
        _guarded(f, "timing", lambda: check_timing(f, plan, lay))
        if lay is not None and m is not None and hw and w and ok("experts"):
            _guarded(f, "timing", lambda: check_fp8_timing(
                f, plan, m, hw, w, lay, capacity.busiest(capacity.plan_terms(plan, m, w, lay),
                                                         _imbalance(plan)),
                _fullest(plan), inp.flash_attention))
        if ok("communication"):
            _guarded(f, "communication", lambda: check_exposed(f, plan))
    if ok("metrics"):
        n = hw.num_gpus if hw else int(plan["strategy"]["num_gpus"]) if ok("strategy") \
            else len(plan["gpus"]) if isinstance(plan.get("gpus"), list) else 1
        peak = None
        if hw and m:
            # [metrics] MFU is taken against this precision's peak (fp4 experts: fp4's)
            dtype = peak_dtype(m, hw, gemm_dtype(m, w))
            peaks = [hw.gpu.flops(dtype)]
            kept = capacity.kept(capacity.plan_terms(plan, m, w, lay)) if w and lay else {}
            mf = model_flops_per_step(m, w, kept) if w else \
                plan["metrics"]["model_flops_per_step"]
            tokens = w.batch * w.tokens_per_sample if w else None
            peak = _guarded(f, "metrics", lambda: check_throughput(f, plan, peaks, n, mf,
                                                                   tokens, dtype))
        _guarded(f, "metrics", lambda: check_metrics(f, plan, w, peak, n))
    if ok("validation"):
        for i, v in enumerate(plan["validation"]):
            if not v["passed"]:
                f.warn("validation", f"validation[{i}]", f"the plan's own check {v['name']} "
                       f"failed: {v['detail']}", False, True)
    return where


def _schema(f: Findings, plan: dict) -> set[str]:
    """Schema problems as findings; returns the top-level sections too broken to read."""
    broken = set()
    for path, problem in schema_problems(plan, plan_schema()):
        f.error("schema", path or "(plan)", problem)
        broken.add(re.split(r"[.\[]", path)[0])
    return broken


def _check_mixed_doc(plan: dict, source: str, framework: str | None, model_file: Any,
                     hw: Any, workload: Workload | None) -> list[Finding]:
    """A mixed-group plan: its schema (`mixed.schema.json`) first, one finding per problem,
    then `check.mixed` (pipeline, dp_shares) or `check.mixed_slots` (ep_slots); a plan too
    malformed for them is a schema finding rather than a crash."""
    f = Findings()
    for path, problem in schema_problems(plan, mixed_schema()):
        f.error("schema", path or "(plan)", problem)
    if f.items:
        return f.items
    if plan["mode"] == "ep_slots":
        from .mixed_slots import check_slots_plan as run
    else:
        from .mixed import check_mixed as run
    got = _guarded(f, "(plan)", lambda: run(plan, source, framework, model_file, hw, workload))
    return f.items if got is None else got


def _guarded(f: Findings, path: str, fn: Callable[[], Any]) -> Any:
    """Run one check; a plan too malformed for it (a key missing that the schema does not
    require, a wrong type) is a schema finding rather than a crash."""
    try:
        return fn()
    except (KeyError, TypeError, IndexError, ValueError, AttributeError, ZeroDivisionError,
            StopIteration, OverflowError) as exc:
        f.error("schema", path, f"malformed, cannot be checked: {type(exc).__name__} {exc}")
        return None


def collapse(items: list[Finding], keep: int = 3) -> list[Finding]:
    """The same finding over many array items (every GPU, say) is kept `keep` times and
    summarized once, so a systematic defect does not bury the others."""
    groups: dict[tuple, list[Finding]] = {}
    for x in items:
        groups.setdefault((x.severity, x.check, re.sub(r"\[\d+\]", "[*]", x.path), x.message),
                          []).append(x)
    out = []
    for (sev, check, pattern, message), xs in groups.items():
        out.extend(xs[:keep])
        if len(xs) > keep + 1:
            out.append(Finding(sev, check, pattern, f"{message} (and {len(xs) - keep} more "
                               "like this)", None, None))
        elif len(xs) == keep + 1:
            out.append(xs[keep])
    return out


# --------------------------------------------------------------------------- output
def exit_code(findings: list[Finding]) -> int:
    return 1 if any(x.severity == "error" for x in findings) else 0


def format_findings(findings: list[Finding]) -> str:
    """A table: severity, class, JSON path, what the plan says, what it should be, why."""
    from tabulate import tabulate

    errors = sum(x.severity == "error" for x in findings)
    warnings = len(findings) - errors
    if not findings:
        return "plan is consistent: 0 errors, 0 warnings"
    rows = [[x.severity, x.check, x.path, fmt(x.claimed), fmt(x.expected), x.message]
            for x in findings]
    table = tabulate(rows, headers=["severity", "check", "path", "plan says", "should be",
                                    "why"], tablefmt="simple", maxcolwidths=[None, None, 30,
                                                                             22, 24, 56])
    return f"{table}\n{errors} error(s), {warnings} warning(s)"
