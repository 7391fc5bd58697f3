"""Write the golden outputs that `tests/test_golden.py` compares against: the plan of every
bundled problem and the pinned predictions of the training-validation benchmark, with solve
times (the only figures that may differ between two runs of the same code) removed.

Run it from the project root when a change is meant to move the figures; a refactor must
leave `python -m pytest tests/test_golden.py` passing without it:

    python tests/golden/make.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
M, H = ROOT / "problems" / "models", ROOT / "problems" / "hw"
TIME_LIMIT_S = 60.0  # far above what any case needs: each solves to OPTIMAL, so deterministically

# (golden file stem, model file, hardware file, solve keyword arguments)
CASES = [
    ("seed-training", "seed-moe.yaml", "seed-3gpu.yaml", {}),
    ("seed-serving", "seed-moe-serve.yaml", "seed-3gpu.yaml", {}),
    ("mixtral-training", "mixtral-8x7b.yaml", "h100-8x.yaml", {}),
    ("mixtral-decode", "mixtral-8x7b-serve.yaml", "h100-8x.yaml", {}),
    ("mixtral-tp-overlap", "mixtral-8x7b.yaml", "h100-8x.yaml",
     {"pins": {"overlap_tp_comm": True}}),
    ("qwen3-decode", "qwen3-30b-a3b.yaml", "h100-8x.yaml", {}),
    ("llama3-70b-training", "llama3-70b.yaml", "h100-4node.yaml", {}),
    ("gpt3-175b-training", "gpt3-175b.yaml", "selene-a100.yaml", {}),
    ("deepseek-v3-training-256", "deepseek-v3-train.yaml", "h800-32node.yaml", {}),
    # the same under Megatron-Core's rules: what `export --to megatron` launches
    ("deepseek-v3-training-megatron", "deepseek-v3-train.yaml", "h800-32node.yaml",
     {"framework": "megatron"}),
    ("deepseek-v3-decode", "deepseek-v3.yaml", "h200-2node.yaml", {}),
    ("hf-mixtral-decode", "hf/mixtral-8x7b-config.json", "h100-8x.yaml", {"workload": (
        "inference", {"phase": "decode", "batch": 64, "input_len": 2048, "output_len": 512})}),
]
VOLATILE = {"solve_time_s", "search_time_s", "wall_s", "wall_time_s"}


def scrub(x):
    """The document without run-to-run noise: solve times."""
    if isinstance(x, dict):
        return {k: scrub(v) for k, v in x.items() if k not in VOLATILE}
    if isinstance(x, list):
        return [scrub(v) for v in x]
    return x


def canonical(x) -> str:
    return json.dumps(scrub(x), indent=1, sort_keys=True) + "\n"


def plan_of(model: str, hw: str, kw: dict) -> dict:
    import autopar
    from autopar.spec import parse_workload

    kw = dict(kw)
    wl = kw.pop("workload", None)
    if wl:
        kind, fields = wl
        kw["workload"] = parse_workload({"kind": kind, **fields}, "golden")
    plan = autopar.solve(M / model, H / hw, time_limit_s=TIME_LIMIT_S, seed=0, workers=1, **kw)
    return plan.data


def predictions() -> dict:
    """The training-validation benchmark's pinned predictions (step time, TFLOP/s per GPU)."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "validation"))
    from megatron_table1 import run_pinned, runs

    out = {}
    for table, year in (("table1", 2021), ("table2", 2021), ("korthikanti2022", 2022)):
        for i, r in enumerate(runs(table)):
            row = run_pinned(r, year)[1]
            key = f"{table}/{i}/{r.get('name', r.get('params_b'))}/{r.get('recompute', '')}"
            out[key] = {"step_time_s": row.ev.step_time, "tflops_per_gpu": row.tflops}
    return out


def outputs() -> dict[str, str]:
    docs = {stem: canonical(plan_of(m, h, kw)) for stem, m, h, kw in CASES}
    docs["validation-predictions"] = canonical(predictions())
    return docs


def main() -> None:
    for stem, text in outputs().items():
        (HERE / f"{stem}.json").write_text(text)
        print(f"{stem}.json  {len(text):,} bytes")


if __name__ == "__main__":
    main()
