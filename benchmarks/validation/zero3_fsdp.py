"""ZeRO-3 / FSDP calibration rows against autopar's ZeRO-3 model [fsdp]: SC'21 Table 2's
ZeRO-3 rows (GPT-3 175B, DeepSpeed ZeRO-3 on 384-1536 A100s), the table's ranking (PTD-P vs
ZeRO-3 at the same GPUs), and Megatron-Bridge's Llama-3 8B Megatron-FSDP row (8 H100).

The rows are the `megatron2021_t2_zero3_*` records of ../shared/reference/calibration-2025.yaml
(calibration rows). Each is evaluated pinned: TP 1, PP 1, DP = GPUs, the published micro-batch,
full recompute (what Eq. 3's count assumes), fp16, the 2021 software of Table 1, and ZeRO-3 as
DeepSpeed ran it in 2021: `zero3_gather="on-demand"` (each parameter tensor gathered when its
module runs and waited for, again for the recomputed forward). TFLOP/s are counted the paper's
way (`megatron_table1.paper_flops`). The PTD-P rows come from `megatron_runs.yaml` (table2).

    python benchmarks/validation/zero3_fsdp.py
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from megatron_table1 import paper_flops, problem, run_pinned, runs, timing_of  # noqa: E402

from autopar.cost.evaluate import Evaluation, evaluate  # noqa: E402
from autopar.cost.layer import MoEState  # noqa: E402
from autopar.cost.strategy import Strategy  # noqa: E402

ROOT = HERE.parents[1]
REFERENCE = next((d / "shared" / "reference" / "calibration-2025.yaml" for d in ROOT.parents
                  if (d / "shared" / "reference" / "calibration-2025.yaml").is_file()),
                 ROOT.parent / "shared" / "reference" / "calibration-2025.yaml")
TERMS = ("forward_s", "backward_s", "recompute_s", "param_gather_exposed_s", "optimizer_s")


@dataclass
class Zero3Row:
    id: str
    gpus: int
    micro_batch: int
    published: float  # TFLOP/s per GPU, Eq. 3
    predicted: float
    ev: Evaluation
    timing: dict

    @property
    def error(self) -> float:
        return self.predicted / self.published - 1


def records(path: Path = REFERENCE) -> list[dict]:
    data = yaml.safe_load(path.read_text())
    return [r for r in data["records"] if r["id"].startswith("megatron2021_t2_zero3_")]


def as_run(r: dict) -> dict:
    """The record in `megatron_runs.yaml`'s shape (what `megatron_table1` builds from)."""
    m, w = r["model"], r["workload"]
    n = r["hardware"]["count"]
    return {"params_b": m["params_b"], "layers": m["layers"], "hidden": m["hidden"],
            "heads": m["heads"], "gpus": n, "tp": 1, "pp": 1, "dp": n,
            "global_batch": w["global_batch"], "micro_batch": w["micro_batch"]}


def zero3_row(r: dict, gather: str = "on-demand") -> Zero3Row:
    run = as_run(r)
    p = replace(problem(run, 2021), zero3_gather=gather)
    n, mb = run["gpus"], run["micro_batch"]
    s = Strategy(n, 1, 1, n, micro_batch=mb, num_micro_batches=run["global_batch"] // n // mb,
                 recompute="full", zero=3)
    ev = evaluate(p, s, [0, run["layers"]], [MoEState()] * run["layers"])
    tf = paper_flops(run) / ev.step_time / n / 1e12
    return Zero3Row(r["id"], n, mb, r["measured"]["value"], tf, ev, timing_of(p, ev))


def ptdp_rows() -> dict[int, tuple[float, float]]:
    """GPUs -> (published, predicted) TFLOP/s of Table 2's PTD-P rows for GPT-3 175B."""
    out = {}
    for r in runs("table2"):
        if r["params_b"] == 174.6:
            _, row = run_pinned(r, 2021)
            out[r["gpus"]] = (r["tflops_per_gpu"], row.tflops)
    return out


def dominant(t: dict) -> str:
    step = t["step_time_s"]
    top = sorted(TERMS, key=lambda k: -t[k])[:2]
    return ", ".join(f"{k.removesuffix('_s')} {100 * t[k] / step:.0f}%" for k in top)


def fsdp_row(path: Path = REFERENCE) -> list[str]:
    """Megatron-Bridge's Llama-3 8B FSDP row, as `mbridge_h100` runs it (ZeRO-3, prefetch),
    with its dominant terms, under the default and the bundled calibration."""
    import mbridge_h100 as mb

    r = next(x for x in mb.records(path) if x["layout"].get("zero") == 3)
    pub = r["measured"]["value"]
    lines = [f"`{r['id']}`: {r['model']['name']} on {r['hardware']['count']} H100, DP "
             f"{r['layout']['dp']}, micro-batch {r['workload']['micro_batch']}, global batch "
             f"{r['workload']['global_batch']}, fp8; published {pub} tokens/s/GPU "
             f"({r['measured']['secondary'][-1]['value']} s a step).", "",
             "| calibration | recompute | predicted tok/s/GPU | error | step (s) | "
             "dominant terms | ZeRO-3 on the link / exposed (s) |", "|---|---|---|---|---|---|---|"]
    for calib in ("defaults", "bundled"):
        p, ev, mode = mb.run(r, calib)
        tok = mb.tokens_per_gpu(r, ev)
        t = timing_of(p, ev)
        z = ev.stages[0].zero3
        link = (z.gathers * (z.gather_dp + z.gather_edp) + z.reduce) * ev.strategy.num_micro_batches
        lines.append(f"| {calib} | {mode} | {tok:.0f} | {100 * (tok / pub - 1):+.1f}% | "
                     f"{ev.step_time:.2f} | {dominant(t)} | {link:.2f} / "
                     f"{t['param_gather_exposed_s']:.2f} |")
    return lines


def report(path: Path = REFERENCE) -> str:
    rows = [zero3_row(r) for r in records(path)]
    pre = {x.gpus: zero3_row(r, "prefetch") for x, r in zip(rows, records(path), strict=True)}
    ptdp = ptdp_rows()
    lines = ["| row | GPUs | MBS | published TFLOP/s | predicted | error | step (s) | "
             "dominant terms | exposed ZeRO-3 (s) | prefetched instead: predicted, error |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for x in rows:
        q = pre[x.gpus]
        lines.append(f"| `{x.id}` | {x.gpus} | {x.micro_batch} | {x.published} | "
                     f"{x.predicted:.1f} | {100 * x.error:+.1f}% | {x.ev.step_time:.1f} | "
                     f"{dominant(x.timing)} | {x.timing['param_gather_exposed_s']:.1f} | "
                     f"{q.predicted:.1f}, {100 * q.error:+.1f}% |")
    errs = [abs(x.error) for x in rows]
    rank = ["| GPUs | PTD-P published | PTD-P predicted | ZeRO-3 published | ZeRO-3 predicted "
            "| faster, measured | faster, predicted |", "|---|---|---|---|---|---|---|"]
    for x in rows:
        pub, pred = ptdp[x.gpus]
        meas = "PTD-P" if pub > x.published else "ZeRO-3"
        mine = "PTD-P" if pred > x.predicted else "ZeRO-3"
        rank.append(f"| {x.gpus} | {pub} | {pred:.1f} | {x.published} | {x.predicted:.1f} | "
                    f"{meas} | {mine}{'' if meas == mine else ' (wrong)'} |")
    return "\n".join([
        "# ZeRO-3 at scale: SC'21 Table 2 (GPT-3 175B, DeepSpeed ZeRO-3 vs PTD-P)", "",
        "`python benchmarks/validation/zero3_fsdp.py` (rows: `megatron2021_t2_zero3_*` of "
        "`../shared/reference/calibration-2025.yaml`, calibration rows; PTD-P rows: "
        "`benchmarks/validation/megatron_runs.yaml` table2). Pinned: TP 1, PP 1, DP = GPUs, "
        "the published micro-batch (one per replica and step), full recompute, fp16, the 2021 "
        "software of Table 1, ZeRO-3 gathered on demand (`zero3_gather: on-demand`, DeepSpeed "
        "2021: one all-gather per parameter tensor, 12 a GPT layer, waited for, refetched for "
        "the recomputed forward; reduce-scatters behind the backward). Each call pays the ring "
        "latency `(n - 1) alpha` of `problems/hw/selene-a100.yaml` (8 us across nodes), which "
        "is what makes 1536 GPUs no faster than 768. TFLOP/s counted as Eq. 3. Error = "
        "predicted / published - 1. The last column is the same layout under the default "
        "`prefetch` (Megatron-FSDP / FSDP2: one coalesced gather per unit, behind the previous "
        "unit's compute). No number was fitted to these rows; the on-demand mode is the one "
        "choice made with them in view (prefetch misses them by 39-330 %).", "",
        *lines, "",
        f"Mean absolute error {100 * sum(errs) / len(errs):.1f}%, max {100 * max(errs):.1f}% "
        "(targets 10 %, 20 %).", "",
        "## Ranking: PTD-P vs ZeRO-3 at the same GPU count", "",
        *rank, "",
        "At 384 GPUs the measured gap is 6 % (153 vs 144) and the ZeRO-3 row is predicted "
        "9 % fast, so the order flips there; at 768 and 1536 GPUs, where the per-tensor "
        "gathers' latency dominates, autopar orders them as measured.", "",
        "## Megatron-FSDP: Llama-3 8B on one DGX-H100", "",
        *fsdp_row(path), "",
        "Prefetched per layer over NVLink, the gathers and reduce-scatters hide behind the "
        "layers' compute but for the first gather of each pass and the last reduce-scatter; "
        "the error is the compute's (the default fp8 GEMM curve against the bundled "
        "measured tables), not the FSDP terms'.", ""])


def main() -> None:
    out = ROOT / "results" / "validation-zero3.md"
    text = report()
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
