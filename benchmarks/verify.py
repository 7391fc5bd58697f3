"""`autopar verify` on the plans issue 19 names: the seed plan (3 processes), TP=2 x EP=2 x
PP=2 (8 processes, two models), uneven expert replicas (hot experts in spare slots, on one
node and on two), a dense TP=4 plan whose TP ranks share KV heads, a serving plan (forward
only), and a plan with one shard dropped (must fail naming the layer and the tensor). Each
plan is solved by the CLI, then run.

    python benchmarks/verify.py [--out results/verify.md]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import autopar  # noqa: E402
from autopar.verify import ShardError  # noqa: E402

M, H = "problems/models/", "problems/hw/"
DENSE = {"model": {"name": "dense-gqa", "layers": 4, "hidden": 1024, "heads": 8, "kv_heads": 2,
                   "head_dim": 128, "ffn_hidden": 3000, "gated_mlp": True, "vocab": 32003,
                   "dtype": "bf16"},
         "workload": {"kind": "training", "global_batch": 8, "seq_len": 1024}}
FOUR = {"name": "h100-4x", "gpu": {"type": "H100-SXM5-80GB"}, "nodes": 1, "gpus_per_node": 4}
TWO_NODES = {"name": "seed-2x2", "gpu": {"name": "seed-64g", "memory_gb": 64,
                                         "tflops": {"bf16": 400}, "hbm_tbps": 1.6},
             "nodes": 2, "gpus_per_node": 2,
             "intra_node": {"bandwidth_gbps": 100, "latency_us": 5},
             "inter_node": {"bandwidth_gbps": 25, "latency_us": 10}}
CASES = [  # name, model, hardware, extra CLI arguments
    ("seed (README quick start)", M + "seed-moe.yaml", H + "seed-3gpu.yaml", []),
    ("Mixtral 8x7B, TP=2 EP=2 PP=2 (ETP=2 searched)", M + "mixtral-8x7b.yaml",
     H + "h100-8x.yaml", ["--tp", "2", "--pp", "2", "--ep", "2"]),
    ("mini MoE (dense layer 0, shared expert, tied embeddings), TP=2 EP=2 PP=2 ETP=1",
     M + "mini-moe.yaml", H + "h100-8x.yaml",
     ["--tp", "2", "--pp", "2", "--ep", "2", "--etp", "1"]),
    ("seed, EP=3, 1 spare slot, zipf:1.2 (hot experts replicated)", M + "seed-moe.yaml",
     H + "seed-3gpu.yaml", ["--pp", "1", "--ep", "3", "--spare-slots", "1", "--expert-load",
                            "zipf:1.2"]),
    ("seed on 2 nodes x 2, EP=4, 1 spare slot, zipf:1.2 (node-local replicas)",
     M + "seed-moe.yaml", "@two-nodes", ["--pp", "1", "--ep", "4", "--spare-slots", "1",
                                         "--expert-load", "zipf:1.2"]),
    ("dense, TP=4 over 2 KV heads (KV heads copied), uneven vocabulary", "@dense",
     "@four", ["--tp", "4", "--pp", "1"]),
    ("seed serving (inference: forward only)", M + "seed-moe-serve.yaml", H + "seed-3gpu.yaml",
     []),
]


def solve(tmp: Path, model: str, hw: str, extra: list[str], name: str) -> dict:
    files = {"@two-nodes": (tmp / "two.yaml", TWO_NODES),
             "@dense": (tmp / "dense.yaml", DENSE), "@four": (tmp / "four.yaml", FOUR)}
    for key in (model, hw):
        if key in files:
            files[key][0].write_text(yaml.safe_dump(files[key][1]))
    model = str(files[model][0]) if model in files else model
    hw = str(files[hw][0]) if hw in files else hw
    out = tmp / f"{abs(hash(name))}.json"
    subprocess.run([sys.executable, "-m", "autopar", "solve", "--model", model, "--hw", hw,
                    "--time-limit", "10", "--out", str(out), *extra], cwd=ROOT, check=True,
                   capture_output=True)
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "results" / "verify.md"))
    args = ap.parse_args()
    rows, notes, broken = [], [], ""
    with tempfile.TemporaryDirectory(prefix="autopar-verify-bench-") as t:
        tmp = Path(t)
        for name, model, hw, extra in CASES:
            plan = solve(tmp, model, hw, extra, name)
            t0 = time.perf_counter()
            r = autopar.verify_plan(plan)
            wall = time.perf_counter() - t0
            st = plan["strategy"]
            reps = sum(layer.get("replicas", 0) for layer in plan["experts"]["layers"]
                       if layer["layer"] in r.small["layers"]) if plan.get("experts") else 0
            layout = (f"TP={st['tp']} PP={st['pp']} DP={st['dp']} EP={st['ep']} "
                      f"ETP={st['etp']} EDP={st.get('edp', 1)}")
            grads = (f"{r.gradients.max_abs:.2e} / {r.gradients.rel:.2e}" if r.tensors
                     else "forward only")
            rows.append(f"| {name} | {r.processes} | {layout} | {r.small['layers']} | {reps} | "
                        f"{r.outputs.max_abs:.2e} / {r.outputs.rel:.2e} | {grads} | "
                        f"{r.tensors} | {r.loss_rel:.1e} | {'PASS' if r.passed else 'FAIL'} "
                        f"| {wall:.1f} |")
            notes += [f"- {name}: {n}" for n in r.small["notes"]]
            print(rows[-1], flush=True)
            if name.startswith("mini"):
                bad = copy.deepcopy(plan)
                pat = next(p for p in bad["gpus"]["shards"] if p["ranks"]["tp_rank"] == 1)
                pat["components"] = [c for c in pat["components"] if c["name"] != "qkv"]
                try:
                    autopar.verify_plan(bad)
                    broken = "(no error: the broken plan ran)"
                except ShardError as exc:
                    broken = str(exc)
    text = "\n".join([
        "# autopar verify: plans run on CPU processes", "",
        f"`python benchmarks/verify.py` on {platform.machine()}, Python "
        f"{platform.python_version()}, torch {__import__('torch').__version__} (gloo), 2 "
        "cores. Each plan is solved by `autopar solve` (the arguments in the first column), "
        "then `autopar verify` runs its small float64 model on one process per GPU and "
        "compares it with one process; differences are the largest over every logit and "
        "every weight's gradient, relative to that tensor's largest magnitude. Tolerance "
        "1e-9 relative.", "",
        "| plan | processes | layout | layers kept | replicas in kept layers | outputs max abs "
        "/ rel | gradients max abs / rel | tensors compared | loss rel | result | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows, "",
        "Shard boundaries the small model could not keep exact (the report's notes):", "",
        *(notes or ["- none"]), "",
        "A plan with one shard dropped (the mini MoE plan above, TP rank 1's `qkv` removed "
        "from its shard pattern) fails before any process starts:", "",
        f"    {broken}", ""])
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
