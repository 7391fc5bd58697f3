"""Predicted against published training throughput: Megatron-LM on Selene (A100-80GB).

For each row of Narayanan et al. SC'21 Table 1 the published layout is pinned (TP, PP, DP,
micro-batch, interleaving, full recompute, DDP overlap as launched by the paper's script) and
evaluated with the package defaults; TFLOP/s per GPU are counted the paper's way (the
recomputed forward included). Each row is then solved unpinned, to see whether autopar finds
a layout at least as fast under its own model, and which term dominates its step. The
full-recompute runs of Korthikanti et al. 2022 (Table 5) are evaluated the same way.

    python benchmarks/validation/megatron_table1.py [--time-limit 20] [--out results/...]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from autopar.cost.evaluate import Evaluation, evaluate
from autopar.cost.layer import MoEState, Problem
from autopar.cost.strategy import Strategy
from autopar.plan import PHASES
from autopar.search import SearchOptions, search
from autopar.spec import HardwareSpec, ModelSpec, Workload, load_hardware

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).with_name("megatron_runs.yaml")
SEQ, VOCAB = 2048, 51200


@dataclass
class Row:
    label: str
    data: dict
    ev: Evaluation
    eval_s: float
    flops: float

    @property
    def tflops(self) -> float:
        return self.flops / self.ev.step_time / self.data["gpus"] / 1e12


def runs(table: str) -> list[dict]:
    """The rows of one table of `megatron_runs.yaml`."""
    return yaml.safe_load(DATA.read_text())[table]


def gpt(r: dict) -> ModelSpec:
    """The paper's GPT: learned positions, GeLU MLP of 4h, dropout, tied embeddings."""
    h, a = r["hidden"], r["heads"]
    return ModelSpec(name=f"gpt-{r.get('name', r.get('params_b'))}", layers=r["layers"],
                     hidden=h, heads=a, kv_heads=a, head_dim=h // a, ffn_hidden=4 * h,
                     gated_mlp=False, vocab=VOCAB, dtype="fp16", dropout=True,
                     tie_embeddings=True)


def selene(gpus: int) -> HardwareSpec:
    hw = load_hardware(ROOT / "problems" / "hw" / "selene-a100.yaml")
    return replace(hw, nodes=max(1, gpus // hw.gpus_per_node),
                   gpus_per_node=min(hw.gpus_per_node, gpus))


def problem(r: dict, year: int) -> Problem:
    """fp16 weights and gradients, fp32 master and Adam states; no flash attention. The 2021
    code (SC'21, NGC PyTorch 20.12) had neither the weight-gradient GEMM's fused gradient
    accumulation nor the asynchronous TP all-reduce of the column-parallel input gradient;
    Megatron's code of 2022 has both on by default."""
    wl = Workload("training", batch=r["global_batch"], seq_len=SEQ, grad_dtype="fp16")
    new = year >= 2022
    return Problem(gpt(r), selene(r["gpus"]), wl, flash_attention=False,
                   fused_grad_accumulation=new, async_tp_allreduce=new)


def published(r: dict) -> Strategy:
    mb = r["micro_batch"]
    return Strategy(r["gpus"], r["tp"], r["pp"], r["dp"], micro_batch=mb,
                    num_micro_batches=r["global_batch"] // r["dp"] // mb,
                    recompute=r.get("recompute", "full"), zero=0,
                    sequence_parallel=r.get("sequence_parallel", False),
                    virtual_stages=r["virtual_stages"],
                    overlap_grad_reduce=r.get("ddp", "torch") == "torch")


def paper_flops(r: dict) -> float:
    """Narayanan et al. eq. (3): 96 B s L h^2 (1 + s / 6h + V / 16 L h), recompute counted."""
    B, L, h = r["global_batch"], r["layers"], r["hidden"]
    return 96 * B * SEQ * L * h * h * (1 + SEQ / (6 * h) + VOCAB / (16 * L * h))


def even_cut(layers: int, pp: int) -> list[int]:
    return [round(k * layers / pp) for k in range(pp + 1)]


def run_pinned(r: dict, year: int) -> tuple[Problem, Row]:
    p = problem(r, year)
    s = published(r)
    t0 = time.perf_counter()
    ev = evaluate(p, s, even_cut(r["layers"], r["pp"]), [MoEState()] * r["layers"])
    return p, Row(str(r.get("name", r.get("params_b"))), r, ev, time.perf_counter() - t0,
                  paper_flops(r))


def timing_of(p: Problem, ev: Evaluation) -> dict:
    from autopar.plan.timing import _timing

    return _timing(p, ev.strategy, ev)


def pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def table1(time_limit: float) -> tuple[list[str], list[float]]:
    rows = runs("table1")
    lines = [
        "| params (B) | GPUs | TP | PP | DP | MBS | v | DDP | published TFLOP/s | predicted "
        "TFLOP/s | error | dominant term | pinned memory (GB) | pinned solve (s) | "
        "autopar unpinned | its step vs published | its dominant term |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    errors = []
    for r in rows:
        p, row = run_pinned(r, 2021)
        err = row.tflops / r["tflops_per_gpu"] - 1
        errors.append(err)
        tm = timing_of(p, row.ev)
        s = published(r)
        pins = {k: getattr(s, k) for k in ("tp", "pp", "dp", "micro_batch", "recompute",
                                           "zero", "sequence_parallel", "virtual_stages",
                                           "overlap_grad_reduce")}
        t0 = time.perf_counter()
        pinned = search(p, SearchOptions(pins=pins, time_limit_s=time_limit))
        pin_s = time.perf_counter() - t0
        free = search(p, SearchOptions(time_limit_s=time_limit))
        if free.best is None:
            found, vs, dom = "none fits", "", ""
        else:
            fs = free.best.strategy
            found = (f"TP{fs.tp} PP{fs.pp} DP{fs.dp} mb{fs.micro_batch} v{fs.virtual_stages} "
                     f"{fs.recompute} Z{fs.zero} SP{int(fs.sequence_parallel)} "
                     f"({free.status})")
            vs = f"{free.best.value / row.ev.step_time:.3f}x"
            dom = timing_of(p, free.best.evaluation)["dominant_term"]
        pin_note = f"{pin_s:.1f}" + ("" if pinned.best is not None else " (none)")
        lines.append(
            f"| {r['params_b']} | {r['gpus']} | {r['tp']} | {r['pp']} | {r['dp']} | "
            f"{r['micro_batch']} | {r['virtual_stages']} | {r['ddp']} | {r['tflops_per_gpu']} | "
            f"{row.tflops:.1f} | {pct(err)} | {tm['dominant_term']} | "
            f"{row.ev.max_memory / 1e9:.1f}{'' if row.ev.feasible else ' (over)'} | "
            f"{pin_note} | {found} | {vs} | {dom} |")
    return lines, errors


def table2() -> tuple[list[str], list[float]]:
    """SC'21 Table 2 (PTD-P rows): pinned like Table 1, under the assumed interleaving and
    under the default schedule, since the table does not say which it ran."""
    rows = runs("table2")
    lines = ["| params (B) | GPUs | TP | PP | DP | m | published TFLOP/s | v (assumed) | "
             "predicted | error | predicted at v 1 | error at v 1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    errors = []
    for r in rows:
        _, row = run_pinned(r, 2021)
        _, flat = run_pinned({**r, "virtual_stages": 1}, 2021)
        err, err1 = (x.tflops / r["tflops_per_gpu"] - 1 for x in (row, flat))
        errors.append(err)
        m = published(r).num_micro_batches
        lines.append(f"| {r['params_b']} | {r['gpus']} | {r['tp']} | {r['pp']} | {r['dp']} | "
                     f"{m} | {r['tflops_per_gpu']} | {r['virtual_stages']} | {row.tflops:.1f} | "
                     f"{pct(err)} | {flat.tflops:.1f} | {pct(err1)} |")
    return lines, errors


def korthikanti() -> tuple[list[str], list[float]]:
    rows = runs("korthikanti2022")
    lines = ["| model | GPUs | TP | PP | MBS x m | v | recompute | SP | measured (s) | "
             "predicted (s) | error |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    errors = []
    for r in rows:
        _, row = run_pinned(r, 2022)
        err = r["iteration_s"] / row.ev.step_time - 1  # as a throughput error
        errors.append(err)
        m = published(r).num_micro_batches
        lines.append(f"| {r['name']} | {r['gpus']} | {r['tp']} | {r['pp']} | "
                     f"{r['micro_batch']} x {m} | {r['virtual_stages']} | "
                     f"{r.get('recompute', 'full')} | "
                     f"{'yes' if r.get('sequence_parallel') else 'no'} | "
                     f"{r['iteration_s']} | "
                     f"{row.ev.step_time:.2f} | {pct(err)} |")
    return lines, errors


def breakdown() -> list[str]:
    """Where the step goes for each Table 1 row under the published layout."""
    rows = runs("table1")
    head = "| params (B) | " + " | ".join(k.removesuffix("_s") for k in PHASES) + \
        " | of which elementwise |"
    lines = [head, "|" + "---|" * (len(PHASES) + 2)]
    for r in rows:
        p, row = run_pinned(r, 2021)
        tm = timing_of(p, row.ev)
        step = tm["step_time_s"]
        cells = " | ".join(f"{100 * tm[k] / step:.1f}%" for k in PHASES)
        lines.append(f"| {r['params_b']} | {cells} | {100 * tm['elementwise_s'] / step:.1f}% |")
    return lines


def summary(errors: list[float]) -> str:
    mae, worst = sum(map(abs, errors)) / len(errors), max(map(abs, errors))
    return f"Mean absolute error {100 * mae:.1f}%, max {100 * worst:.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-limit", type=float, default=20.0,
                    help="seconds per search (pinned and unpinned)")
    ap.add_argument("--out", default=str(ROOT / "results" / "validation-training.md"))
    args = ap.parse_args()
    t1, e1 = table1(args.time_limit)
    t2, e2 = korthikanti()
    t3, e3 = table2()
    signed1 = sum(e1) / len(e1)
    text = "\n".join([
        "# Training validation: Megatron-LM on Selene (A100-SXM4-80GB)",
        "",
        "Generated by `benchmarks/validation/megatron_table1.py` with the package defaults "
        "(no per-row settings beyond the published layout and the software generation). "
        "Inputs and sources: `benchmarks/validation/megatron_runs.yaml`, "
        "`problems/hw/selene-a100.yaml`. The one fitted figure, the A100's sustained GEMM "
        "efficiency, comes from a single 2022 run (the 22B row of the last table, "
        "`benchmarks/validation/fit_a100_gemm.py`); every other row is held out.",
        "",
        "## Narayanan et al. SC'21, Table 1",
        "",
        "TFLOP/s per GPU are counted as the paper counts them, recomputed forward included: "
        "`96 B s L h^2 (1 + s/(6h) + V/(16 L h))` FLOPs per iteration over the predicted step "
        "time. Each row's published layout is pinned: TP, PP, DP, micro-batch and interleaving "
        "from the paper's launch script (`examples/sc21/run_table_1.sh`), full recompute, "
        "fp16, no sequence parallelism, no distributed optimizer (ZeRO 0), unfused attention, "
        "and the DP all-reduce overlapped with the backward only under `torch` DDP. The "
        "software is Megatron of April 2021 (NGC PyTorch 20.12): the backward TP all-reduce "
        "is synchronous (`async_tp_allreduce` off) and gradient accumulation is a separate "
        "pass (`fused_grad_accumulation` off). The stage cut is Megatron's even split. "
        "Error = predicted / published - 1.",
        "",
        *t1,
        "",
        f"**{summary(e1)}** (targets: 5%, 10%; mean signed {pct(signed1)}).",
        "",
        "The unpinned columns are autopar's own search on the same problem (same model, "
        "hardware and software assumptions), with its whole option space (ZeRO 1-3, "
        "sequence parallelism, selective recompute, interleaving, DP overlap); "
        "`its step vs published` < 1 means it found a faster layout under its own model. "
        "`pinned solve` is the wall time of a search with every option pinned (the search "
        "still cuts the stages).",
        "",
        "### Where the step goes (published layouts, share of the predicted step)",
        "",
        *breakdown(),
        "",
        "## Narayanan et al. SC'21, Table 2 (PTD-P rows)",
        "",
        "Megatron's runs of the comparison with ZeRO-3: GPT-3 175B on TP 8 x PP 12 and the "
        "530B model on TP 8 x PP 35, micro-batch 1, fixed batch, DP 2-16; same software and "
        "counting as Table 1. The table does not state the pipeline schedule: `v (assumed)` "
        "is the interleaving the paper's scripts use for the same model and pipeline depth, "
        "and the last two columns evaluate the non-interleaved schedule instead.",
        "",
        *t3,
        "",
        f"{summary(e3)} (assumed interleaving).",
        "",
        "## Korthikanti et al. 2022, Table 5",
        "",
        "Measured iteration times of the same code base a year later, with full recompute and "
        "with the paper's sequence parallelism + selective recompute: the asynchronous TP "
        "all-reduce and fused gradient accumulation on (Megatron's defaults by then), DP 1. "
        "The A100 GEMM efficiency default is derived from the 22B full-recompute row; the "
        "other rows are held out. Error = measured / predicted - 1 (as a throughput error).",
        "",
        *t2,
        "",
        f"{summary(e2)} ({summary(e2[1:]).lower()} over the {len(e2) - 1} held-out rows).",
        "",
        "Reading: the largest models (1T in both papers, 530B in 2022) run faster than "
        "predicted: their GEMMs reach a higher share of peak than the 22B model's, from which "
        "the efficiency comes, by more than the default size curve (`gemm_half_dim` 64) "
        "gives. A measured GEMM table (`docs/calibration.md`) replaces the curve.",
        "",
    ])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
