"""Solver speed and scale (issue 7): one command, one table.

    python benchmarks/solver_scale.py [--quick] [--repeats N] [--time-limit S] [--replot]

For each case of a fixed matrix it runs `autopar.search` in a fresh subprocess (so peak
memory is the case's own), `--repeats` times, and records candidates enumerated / pruned /
over memory, CP-SAT stage models and their size, wall time (median), status, objective,
bound, gap and peak RSS. It also scores the Megatron-style default layout (TP = GPUs per
node, even stages, round-robin experts) under the same cost model, and runs the exhaustive
enumerator where it can finish within its budget. Writes results/solver-scale.md (and
results/solver-scale.png with the `plot` extra).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
M, H = ROOT / "problems" / "models", ROOT / "problems" / "hw"

SYNTH = {
    "model": {"name": "synthetic-moe-96x512", "layers": 96, "hidden": 8192, "heads": 64,
              "kv_heads": 8, "head_dim": 128, "gated_mlp": True, "experts": 512, "top_k": 8,
              "expert_ffn_hidden": 2048, "vocab": 128000},
    "workload": {"kind": "training", "global_batch": 8192, "seq_len": 4096},
}


def hw(name: str, gpu: str, nodes: int, gpn: int = 8, intra: float = 450,
       inter: float = 50) -> dict:
    return {"name": name, "gpu": {"type": gpu}, "nodes": nodes, "gpus_per_node": gpn,
            "intra_node": {"bandwidth_gbps": intra, "latency_us": 3},
            "inter_node": {"bandwidth_gbps": inter, "latency_us": 8}}


CASES = [
    ("seed (24 L, 63 E) on 3 GPUs", str(M / "seed-moe.yaml"), str(H / "seed-3gpu.yaml")),
    ("Mixtral-8x7B on 8 H100", str(M / "mixtral-8x7b.yaml"), str(H / "h100-8x.yaml")),
    ("Mixtral-8x7B on 64 H100", str(M / "mixtral-8x7b.yaml"),
     hw("h100-64", "H100-SXM5-80GB", 8)),
    ("DeepSeek-V3 train on 256 H800", str(M / "deepseek-v3-train.yaml"),
     str(H / "h800-32node.yaml")),
    ("DeepSeek-V3 train on 1024 H800", str(M / "deepseek-v3-train.yaml"),
     str(H / "h800-128node.yaml")),
    ("DeepSeek-V3 train on 2048 H800", str(M / "deepseek-v3-train.yaml"),
     str(H / "h800-256node.yaml")),
    ("synthetic MoE 96 L x 512 E on 4096 H100", SYNTH, hw("h100-4096", "H100-SXM5-80GB", 512)),
    ("GPT-3 175B on 1024 A100", str(M / "gpt3-175b.yaml"),
     hw("a100-1024", "A100-SXM4-80GB", 128, intra=300, inter=25)),
    ("Llama-3 405B at 128k tokens on 16384 H100", str(M / "llama3-405b-128k.yaml"),
     str(H / "h100-2048node.yaml")),  # context parallelism in the space (issue 14)
]
QUICK = {0, 1, 3}
EXHAUSTIVE_BUDGET_S = 600.0

CHILD = r"""
import json, resource, sys, time
from autopar.api import make_problem
from autopar.search.baseline import megatron_default
from autopar.search import SearchOptions, search
from autopar.spec import parse_hardware, parse_model
model, hw, limit, exhaustive_budget = json.loads(sys.argv[1])
mf = parse_model(model, "model") if isinstance(model, dict) else model
hw = parse_hardware(hw, "hw") if isinstance(hw, dict) else hw
p = make_problem(mf, hw)
t0 = time.perf_counter()
r = search(p, SearchOptions(time_limit_s=limit, seed=0, workers=1))
wall = time.perf_counter() - t0
out = {"wall_s": wall, "status": r.status, "objective": r.objective, "bound": r.best_bound,
       "candidates": r.candidates, "pruned": r.pruned_by_bound, "over_memory": r.infeasible,
       "cpsat_models": r.cpsat_models, "cpsat_vars": r.cpsat_vars,
       "cpsat_constraints": r.cpsat_constraints,
       "layout": r.best.strategy.describe() if r.best else None}
base = megatron_default(p)
out["megatron"] = None if base is None else {"step": base.step_time,
                                             "layout": base.strategy.describe()}
if exhaustive_budget > 0:
    from autopar.search.oracle import exhaustive
    t1 = time.perf_counter()
    try:
        o = exhaustive(p, SearchOptions(), budget_s=exhaustive_budget)
        out["exhaustive"] = {"step": o.step_time, "wall_s": time.perf_counter() - t1}
    except (TimeoutError, ValueError) as exc:  # over budget, or too many cuts to list
        out["exhaustive"] = {"step": None, "wall_s": time.perf_counter() - t1,
                             "note": str(exc)}
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def run_case(model, hw_spec, limit: float, exhaustive_budget: float) -> dict:
    arg = json.dumps([model, hw_spec, limit, exhaustive_budget])
    res = subprocess.run([sys.executable, "-c", CHILD, arg], capture_output=True, text=True,
                         cwd=ROOT)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr else "failed"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def fmt_gap(r: dict) -> str:
    if not math.isfinite(r["objective"]):
        return "-"
    return f"{(r['objective'] - r['bound']) / r['objective']:.2%}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the three small cases only")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--time-limit", type=float, default=120.0)
    ap.add_argument("--out", default=None,
                    help="default results/solver-scale.md; with --only: print the table only")
    ap.add_argument("--only", default=None, help="run the cases whose name contains this")
    ap.add_argument("--replot", action="store_true",
                    help="redraw the PNG from the JSON of the last run, solving nothing")
    args = ap.parse_args()
    only = args.only
    if args.out is None and not only:
        args.out = str(ROOT / "results" / "solver-scale.md")
    if args.replot:
        raw = json.loads(Path(args.out).with_suffix(".json").read_text())
        _plot([(c["case"], statistics.median(r["wall_s"] for r in c["runs"])) for c in raw
               if "error" not in c["runs"][0]], Path(args.out).with_suffix(".png"))
        return
    rows, raw = [], []
    for i, (name, model, hw_spec) in enumerate(CASES):
        if (args.quick and i not in QUICK) or (only and only not in name):
            continue
        runs = []
        for rep in range(args.repeats):
            budget = EXHAUSTIVE_BUDGET_S if rep == 0 and i in (0, 1) else 0.0
            runs.append(run_case(model, hw_spec, args.time_limit, budget))
            if "error" in runs[-1]:
                break
        first = runs[0]
        if "error" in first:
            rows.append([name, "error", first["error"]] + [""] * 12)
            continue
        wall = statistics.median(r["wall_s"] for r in runs)
        mg = first["megatron"]
        ex = first.get("exhaustive")
        ex_txt = "not run (too large)"
        if ex:
            ex_txt = (f"{ex['step']:.6g} s in {ex['wall_s']:.1f} s "
                      f"(x{ex['wall_s'] / wall:.0f} slower)" if ex["step"] is not None
                      else f"not finished: {ex.get('note', '')}")
            if ex["step"] is not None:
                ex_txt += " equal" if math.isclose(ex["step"], first["objective"],
                                                   rel_tol=1e-6) else " DIFFERENT"
        rows.append([
            name, first["status"], f"{wall:.2f}", len(runs), first["candidates"],
            first["pruned"], first["over_memory"], first["cpsat_models"],
            f"{first['cpsat_vars']}/{first['cpsat_constraints']}",
            f"{first['objective']:.6g}", f"{first['bound']:.6g}", fmt_gap(first),
            f"{first['peak_rss_mb']:.0f}", first["layout"],
            "-" if mg is None else f"{mg['step'] / first['objective']:.2f}x ({mg['layout']})",
            ex_txt,
        ])
        raw.append({"case": name, "runs": runs})
        print(f"{name}: {first['status']} {wall:.2f} s", file=sys.stderr)
    head = ["case", "status", "wall s (median)", "runs", "candidates", "pruned by bound",
            "over memory", "CP-SAT stage models", "CP-SAT vars/constraints", "step s",
            "bound s", "gap", "peak RSS MB", "layout", "Megatron default / autopar",
            "exhaustive enumerator"]
    lines = ["# Solver scale", "",
             f"Generated by `python benchmarks/solver_scale.py{' --quick' if args.quick else ''}`"
             f" on {time.strftime('%Y-%m-%d')}, {sys.platform}, 1 CP-SAT worker, time limit "
             f"{args.time_limit:g} s per search. Wall time is the whole `search` call "
             "(enumeration, bounds, expert placement, stage cuts) in a fresh process.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    if args.out is None:  # one case alone: the table on stdout, the results left as they are
        print("\n".join(lines))
        return
    if all(r[1] == "error" for r in rows):  # a broken install, not a result: keep the old one
        sys.exit(f"every case failed (first: {rows[0][2]}); {args.out} left as it was")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps(raw, indent=1))
    _plot([(r[0], float(r[2])) for r in rows if r[1] != "error"],
          Path(args.out).with_suffix(".png"))
    print(f"wrote {args.out}", file=sys.stderr)


def _plot(walls: list[tuple[str, float]], path: Path) -> None:
    """Median wall time per case (the `plot` extra; nothing without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.barh([name for name, _ in walls], [wall for _, wall in walls])
    ax.set_xscale("log")
    ax.set_xlabel("solve wall time, s (log)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
