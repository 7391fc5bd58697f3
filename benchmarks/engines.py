"""Plans each engine launches (issue 15): per case and framework, the best plan under that
framework's rules, how much slower it is than the unrestricted `any` optimum, the rule that
binds, and whether the framework's export expresses the plan exactly.

    python benchmarks/engines.py [--time-limit S]

Cases: Llama-3 70B training on 64 H100 (megatron, torchtitan), DeepSeek-V3 training on 256
H800 (megatron), DeepSeek-V3 serving on 16 H200 (vllm, sglang), Qwen3-30B-A3B serving on
8 H100 (vllm, sglang, trtllm), all on the bundled problems (serving: whole requests of the
model file's ISL / OSL under TTFT <= 2 s and TPOT <= 50 ms). Each is solved with
`framework="any"` and with each framework (one worker, the same time limit); the rule that
binds is every rule of the framework's table (autopar.spec.frameworks) that the `any` plan's
layout breaks, and SGLang's two-batch overlap where the `any` plan runs it and the framework
is not one that has it (`autopar.api.TBO_ENGINES`: `solve(framework=...)` turns it off
there). Nothing is held off by hand: each framework's run is `solve(framework=NAME)`, whose
rules already forbid what its export cannot write (torchtitan's `no-module-recompute`).
Writes results/engines.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from autopar.api import TBO_ENGINES, load_model, solve  # noqa: E402
from autopar.export import (  # noqa: E402
    launch_from_plan,
    megatron_entry,
    torchtitan_entry,
    trtllm_entry,  # noqa: E402
)
from autopar.spec.frameworks import layout_values, load_framework  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")
OUT = os.path.join(ROOT, "results", "engines.md")
SERVING = {"phase": "both", "ttft_ms": 2000.0, "tpot_ms": 50.0}
# (case, model file, hardware file, serving?, frameworks)
CASES = (
    ("Llama-3 70B training, 64 H100", "llama3-70b.yaml", "h100-8node.yaml", False,
     ("megatron", "torchtitan")),
    ("DeepSeek-V3 training, 256 H800", "deepseek-v3-train.yaml", "h800-32node.yaml", False,
     ("megatron",)),
    ("DeepSeek-V3 serving, 16 H200", "deepseek-v3.yaml", "h200-2node.yaml", True,
     ("vllm", "sglang")),
    ("Qwen3-30B-A3B serving, 8 H100", "qwen3-30b-a3b.yaml", "h100-8x.yaml", True,
     ("vllm", "sglang", "trtllm")),
)



def _tbo(plan: dict) -> bool:
    return bool(((plan.get("serving") or {}).get("point") or {}).get("iteration", {})
                .get("two_batch_overlap"))


def export_entry(plan: dict, framework: str) -> dict:
    """{exact, why} of the plan exported to the framework."""
    if framework == "megatron":
        return megatron_entry(plan)
    if framework == "torchtitan":
        return torchtitan_entry(plan)
    if framework == "trtllm":
        return trtllm_entry(plan)
    return launch_from_plan(plan)[framework]


def layout(plan: dict) -> str:
    s, moe = plan["strategy"], bool(plan["inputs"]["model"].get("experts"))
    parts = [f"{k.upper()}{s[k]}" for k in ("tp", "pp", "dp", "cp") if s.get(k, 1) > 1]
    if moe:
        parts += [f"EP{s.get('ep', 1)}", f"ETP{s.get('etp', 1)}"]
    if s.get("virtual_stages", 1) > 1:
        parts.append(f"v{s['virtual_stages']}")
    if plan["inputs"]["workload"]["kind"] == "training":
        parts.append(f"ZeRO-{s['zero']}")
        if s.get("recompute", "none") != "none":
            parts.append(s["recompute"])
        if s.get("pipeline_schedule", "1f1b") != "1f1b":
            parts.append(s["pipeline_schedule"])
        if s.get("a2a_overlap"):
            parts.append("a2a-overlap")
    return " ".join(parts) or "1 GPU"


def binding(any_plan: dict, framework: str) -> list[str]:
    """The framework's rules the `any` optimum breaks, and its two-batch overlap where the
    framework has none."""
    m, w, s = any_plan["inputs"]["model"], any_plan["inputs"]["workload"], any_plan["strategy"]
    batch = int(w.get("batch") or 0) if w.get("kind") == "training" else 0
    values = layout_values(s, int(m["layers"]), int(m.get("experts") or 0),
                           int(w.get("seq_len") or 0), int(m["heads"]), batch)
    out = [f"`{r.id}`" for r in load_framework(framework).broken(values)]
    tbo = _tbo(any_plan) and framework not in TBO_ENGINES
    return out + (["two-batch overlap (SGLang's; off under this framework)"] if tbo else [])


def framework_plan(mf, hw_path: str, fw: str, limit: float) -> dict:
    """The framework's best plan: the search under its rules, nothing held off by hand."""
    return solve(mf, hw_path, time_limit_s=limit, workers=1, seed=0, framework=fw).data


def figure(plan: dict, serving: bool) -> float:
    mt = plan["metrics"]
    return mt["tokens_per_s_per_gpu"] if serving else mt["step_time_s"]


def run_case(case: tuple, limit: float) -> list[dict]:
    label, model, hw, serving, frameworks = case
    mf = load_model(os.path.join(ROOT, "problems", "models", model))
    if serving:
        mf = replace(mf, workload=replace(mf.workload, **SERVING))
    hw_path = os.path.join(ROOT, "problems", "hw", hw)
    rows = []
    for fw in ("any", *frameworks):
        t0 = time.perf_counter()
        plan = framework_plan(mf, hw_path, fw, limit)
        rows.append({"case": label, "framework": fw, "plan": plan, "serving": serving,
                     "wall_s": time.perf_counter() - t0,
                     "status": plan["solver"]["status"]})
    best = rows[0]
    for r in rows[1:]:
        r["binds"] = binding(best["plan"], r["framework"])
        r["export"] = export_entry(r["plan"], r["framework"])
        a, f = figure(best["plan"], serving), figure(r["plan"], serving)
        r["slower"] = (a / f - 1) if serving else (f / a - 1)  # time per token / per step
    return rows


def table(rows: list[dict]) -> list[str]:
    out = ["| case | framework | layout | step s / tok/s/GPU | slower than any | rule that "
           "binds | export |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        fig = figure(r["plan"], r["serving"])
        value = f"{fig:,.0f} tok/s/GPU" if r["serving"] else f"{fig:.2f} s"
        if r["framework"] == "any":
            out.append(f"| {r['case']} | any | {layout(r['plan'])} | {value} | | | |")
            continue
        binds = ", ".join(r["binds"]) or "none (the any layout is allowed)"
        e = r["export"]
        exp = "exact" if e["exact"] else f"not exact: {e['why']}"
        out.append(f"| | {r['framework']} | {layout(r['plan'])} | {value} | "
                   f"{r['slower']:+.1%} | {binds} | {exp} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-limit", type=float, default=25.0)
    args = ap.parse_args()
    rows = []
    for case in CASES:
        rows += run_case(case, args.time_limit)
        r = rows[-1]
        print(f"{r['case']}: done ({sum(x['wall_s'] for x in rows if x['case'] == r['case']):.1f}"
              " s)", flush=True)
    lines = ["# Plans each engine launches", "",
             "`python benchmarks/engines.py` (issue 15): each case solved with `framework=any` "
             "and with each framework's rules (`docs/frameworks.md`), one worker, "
             f"`time_limit_s={args.time_limit:g}`, then exported to that framework "
             "(`autopar export --to NAME`). *slower than any*: the step time over the `any` "
             "optimum's (training), or its tokens/s/GPU over the framework plan's (serving, "
             "whole requests of the model file's ISL / OSL, TTFT <= 2 s, TPOT <= 50 ms), minus "
             "one. *rule that binds*: the rules of the framework's table that the `any` "
             "optimum's layout breaks (torchtitan's `no-module-recompute`: its selective AC is "
             "op-level, not the Megatron-Core modules autopar prices), and SGLang's two-batch "
             "overlap where the framework has none (`solve(framework=...)` turns it off). Each "
             "framework's run is the search under its rules alone: nothing is held off by "
             "hand. *export*: whether "
             "the framework's launch configuration expresses the plan as priced, and if not "
             "why.", "",
             *table(rows), "",
             "Solver status per run: " + "; ".join(
                 f"{r['case'].split(',')[0]} {r['framework']} {r['status']} "
                 f"({r['wall_s']:.1f} s)" for r in rows) + ".", "",
             f"Machine: {platform.machine()}, Python {platform.python_version()}.", ""]
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
