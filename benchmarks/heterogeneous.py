"""Mixed GPU groups (issue 17): each case's plan against (a) the best plan that treats every
GPU as the slowest type and (b) the best plan on the fastest group alone, both by the
existing one-type search. Every figure comes from a solve run here; nothing is typed in.

    python benchmarks/heterogeneous.py [--out results/heterogeneous.md] [--time-limit 60]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import autopar  # noqa: E402
from autopar.api import make_problem  # noqa: E402
from autopar.errors import AutoparError  # noqa: E402
from autopar.search import SearchOptions  # noqa: E402
from autopar.search.mixed_solve import solve_mixed  # noqa: E402
from autopar.search.uneven import SplitError, expert_slots  # noqa: E402
from autopar.spec import GB, load_model, parse_workload  # noqa: E402
from autopar.spec.files import load_any_hardware  # noqa: E402

MIXED = "problems/hw/h100-a100-mixed.yaml"
SEVEN = "problems/hw/h100-7gpu.yaml"
PCIE = "problems/hw/h100-l40s-pcie.yaml"
# Megatron's precision-aware optimizer (bf16 gradients, fp32 master, 8-bit moments: 10 B per
# parameter), as problems/models/mixtral-8x7b.yaml states for its own training
LEAN = {"grad_dtype": "bf16", "master_dtype": "fp32", "state_dtype": "fp8"}


def _fmt(x: float | None, unit: str = "s") -> str:
    return "-" if x is None else f"{x:.4g} {unit}"


def _cmp(c: dict) -> tuple[str, str]:
    if c.get("step_time_s"):
        m = c["margin"]
        return (f"{c['step_time_s']:.4g} s ({c['strategy']})",
                f"{c['speedup']:.2f}x ({100 * abs(m):.0f}% {'less' if m >= 0 else 'more'} "
                "time)")
    return (f"no plan: {c.get('why', '')}", "only the mixed plan exists")


def training_row(label: str, model: str, optimizer: dict | None, limit: float,
                 hw: str = MIXED, framework: str = "any") -> dict:
    mf = load_model(ROOT / model)
    if optimizer:
        w = mf.workload
        data = {"kind": "training", "global_batch": w.batch, "seq_len": w.seq_len,
                "optimizer": optimizer}
        mf = replace(mf, workload=parse_workload(data, "benchmark"))
    t0 = time.perf_counter()
    try:
        plan = autopar.solve(mf, str(ROOT / hw), time_limit_s=limit, framework=framework).data
    except AutoparError as exc:
        return {"case": label, "plan": f"none: {exc}", "wall": time.perf_counter() - t0}
    st = plan["stages"]
    cut = ", ".join(f"{x['group']} {x['layers'][0]}-{x['layers'][1]} "
                    f"({x['memory']['total_bytes'] / GB:.0f}/"
                    f"{x['memory']['capacity_bytes'] / GB:.0f} GB)" for x in st)
    s = plan["strategy"]
    if plan["mode"] == "dp_shares":  # one row per group: the stages are every replica's
        cut = ", ".join(f"{g}: {x['replicas']} replicas x {x['micro_batches']} micro-batches"
                        for g, x in plan["shares"].items())
        mem = ", ".join(f"{x['group']} stage {x['stage']} {x['memory']['total_bytes'] / GB:.0f}"
                        f"/{x['memory']['capacity_bytes'] / GB:.0f} GB" for x in st)
        cut = f"{cut}; {mem}"
    other = plan["compared"].get("other_mixed_form", {})
    alt = (f"; the {other['form']} form: {other['step_time_s']:.4g} s" if
           other.get("step_time_s") else f"; the {other.get('form')} form: none")
    return {"case": label, "step": plan["metrics"]["step_time_s"],
            "plan": f"{plan['mode']}: TP{s['tp']} PP{s['pp']} DP{s['dp']} CP{s.get('cp', 1)} "
                    f"EP{s['ep']}, mb {s['micro_batch']}x{s['num_micro_batches']}: {cut}{alt}",
            "slow": _cmp(plan["compared"]["slowest_type"]),
            "fast": _cmp(plan["compared"]["fast_only"]),
            "check": len(autopar.check(plan)), "wall": time.perf_counter() - t0,
            "cut_short": plan["solver"]["time_limit_reached"]}


def serving_row(limit: float) -> dict:
    """DeepSeek-V3 fp8 decode: the serving search plans one type, so the mixed pipeline's
    decode step (the same per-stage cost functions) is priced here by `solve_mixed`."""
    hw = load_any_hardware(ROOT / MIXED)
    p = make_problem(ROOT / "problems/models/deepseek-v3.yaml", hw.groups[0].hw)
    t0 = time.perf_counter()
    from autopar.search.deadline import Deadline

    done = solve_mixed(p, hw, SearchOptions(time_limit_s=limit), Deadline.after(limit))
    ev = done.result.best
    out = {"case": f"DeepSeek-V3 fp8 decode, batch {p.workload.batch}, 8 H100 + 8 A100",
           "wall": time.perf_counter() - t0}
    slow, fast = done.compared["slowest_type"], done.compared["fast_only"]
    if ev is None:
        out["plan"] = f"none: {done.result.why}"
    else:
        s = ev.strategy
        names = [done.result.hw.groups[g].name for g in ev.groups]
        out["step"] = ev.step_time
        out["plan"] = (f"TP{s.tp} PP{s.pp} DP{s.dp} EP{s.ep} ETP{s.etp}: " + ", ".join(
            f"{n} {ev.bounds[k]}-{ev.bounds[k + 1] - 1} ({st.memory.total / GB:.0f}/"
            f"{c / GB:.0f} GB)" for k, (n, st, c) in enumerate(zip(
                names, ev.stages, ev.capacities, strict=True))))
    out["slow"], out["fast"] = _cmp(slow), _cmp(fast)
    out["cut_short"] = done.result.timed_out
    return out


def seven_row(limit: float) -> tuple[dict, list[str]]:
    """Mixtral-8x7B training on a node with one failed GPU: one type, so the slowest-type
    and fast-only plans are this plan; the intact node is the reference."""
    t0 = time.perf_counter()
    model = str(ROOT / "problems/models/mixtral-8x7b.yaml")
    seven = autopar.solve(model, str(ROOT / SEVEN), time_limit_s=limit).data
    eight = autopar.solve(model, str(ROOT / "problems/hw/h100-8x.yaml"), time_limit_s=limit)
    s, step = seven["strategy"], seven["metrics"]["step_time_s"]
    same = f"{step:.4g} s (the same 7 GPUs, one type)"
    row = {"case": "Mixtral-8x7B training, 7 H100 (one failed)", "step": step,
           "plan": f"TP{s['tp']} PP{s['pp']} DP{s['dp']} EP{s['ep']} zero {s['zero']} "
                   f"recompute {s['recompute']}, mb {s['micro_batch']}x"
                   f"{s['num_micro_batches']}",
           "slow": (same, "1.00x (nothing to rebalance)"), "fast": (same, "1.00x"),
           "check": len(autopar.check(seven)), "wall": time.perf_counter() - t0,
           "cut_short": seven["solver"]["time_limit_reached"]}
    m = load_model(model).model
    per_expert = 3 * m.hidden * m.expert_ffn_hidden * m.layers * 10  # B, at 10 B/param
    notes = [f"- The intact node (8 H100) runs Mixtral in {eight.metrics['step_time_s']:.4g} s; "
             f"7 GPUs cost {100 * (step / eight.metrics['step_time_s'] - 1):.0f}% more."]
    try:
        slots = expert_slots(m.experts, [1.0] * 7, [80 * GB] * 7, per_expert)
        notes.append(f"- EP 7 over 8 experts: slots {slots}")
    except SplitError as exc:
        notes.append(f"- EP 7 over Mixtral's 8 experts (one GPU holds two, `search.uneven."
                     f"expert_slots`) does not fit: one expert's weights, gradients and "
                     f"optimizer states are {per_expert / GB:.0f} GB at 10 B/param, so two "
                     f"are {2 * per_expert / GB:.0f} GB on an 80 GB GPU ({exc}). With the "
                     "experts' states unshardable over EP 7 (EDP = 1), the 7-GPU plan stays "
                     "the one-type one.")
    return row, notes


def table(rows: list[dict]) -> list[str]:
    out = ["| case | mixed plan | step | (a) every GPU as the slowest type | vs (a) | "
           "(b) fastest group alone | vs (b) | check errors |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        slow, fast = r.get("slow", ("-", "-")), r.get("fast", ("-", "-"))
        out.append(f"| {r['case']} | {r['plan']} | {_fmt(r.get('step'))} | {slow[0]} | "
                   f"{slow[1]} | {fast[0]} | {fast[1]} | {r.get('check', '-')} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "results/heterogeneous.md"))
    ap.add_argument("--time-limit", type=float, default=60.0)
    a = ap.parse_args()
    lim = a.time_limit
    rows = [training_row("Llama-3 70B training, 8 H100 + 8 A100 (file's Adam)",
                         "problems/models/llama3-70b.yaml", None, lim),
            training_row("Llama-3 70B training, 8 H100 + 8 A100 (10 B/param optimizer)",
                         "problems/models/llama3-70b.yaml", LEAN, lim),
            training_row("Mixtral-8x7B training, 8 H100 + 8 A100",
                         "problems/models/mixtral-8x7b.yaml", None, lim),
            training_row("Mixtral-8x7B training, 8 H100 + 8 A100, --framework megatron",
                         "problems/models/mixtral-8x7b.yaml", None, lim, MIXED, "megatron"),
            training_row("Mixtral-8x7B training, 8 H100 + 8 L40S (PCIe only)",
                         "problems/models/mixtral-8x7b.yaml", None, lim, PCIE),
            serving_row(lim)]
    seven, notes = seven_row(lim)
    rows.append(seven)
    body = table(rows)
    walls = ", ".join(f"{r['wall']:.0f} s" for r in rows)
    short = [r["case"] for r in rows if r.get("cut_short")]
    text = "\n".join([
        "# Mixed GPU groups (issue 17)",
        "",
        "Made by `python benchmarks/heterogeneous.py` (time limit "
        f"{lim:g} s a solve; wall {walls}). Hardware: `{MIXED}` (one DGX H100 beside one "
        f"DGX A100 80GB, 200 Gb/s IB per GPU between), `{PCIE}` (the H100 node beside 8 L40S "
        f"on PCIe, 100 Gb/s Ethernet), `{SEVEN}`. Each mixed plan is the "
        "faster of two forms (notes), each priced stage by stage by the one-type cost model "
        "on the group the stage sits on; (a) and (b) are the existing search on one type. "
        "`check errors` is what `autopar check` finds in the plan. Mixed "
        "searches cut short by the time limit: " + (", ".join(short) or "none") + ".",
        "",
        *body,
        "",
        "## Notes",
        "",
        *notes,
        "- DeepSeek-V3 serving: the serving search (TTFT / TPOT targets, frontier) plans one "
        "type and refuses a mixed file in one line; the row prices one decode step of the "
        "mixed pipeline with the same per-stage cost functions. The fastest group alone "
        "cannot hold the 671 B fp8 weights (8 x 80 GB); A100 has no fp8 tensor cores, so "
        "its stages run the fp8 checkpoint at the 16-bit rate (`GPUSpec.flops`). Where the "
        "mixed pipeline loses to (a), that is because (a) spreads the experts over all 16 "
        "GPUs (EP 16) while a mixed stage may not span two types: what would win is an EP "
        "group across both types with expert slots by speed and memory "
        "(`search.uneven.expert_slots`), not built.",
        "- Plans of (a) are plans on this very cluster: the H100s run them no slower than "
        "an A100 would, so (a)'s time bounds what a one-type planner given this cluster "
        "would promise.",
        "- Two mixed forms are searched and the faster is the plan: one pipeline over the "
        "groups (`pipeline`: stages on one group each, layers by speed and memory) and "
        "data-parallel replicas on every group with micro-batch shares by speed "
        "(`dp_shares`, `search.hetero_dp`: one shape, a common cut, the sync and ZeRO over "
        "all replicas; the replicas' pipeline sends are priced on the NIC, conservative). "
        "Megatron and torchtitan give every DP rank the same micro-batches, so with "
        "`--framework megatron` only the pipeline form is searched.",
        "- Uneven TP shards (`search.uneven.split_heads`, `split_columns`) are pure "
        "functions: every stage and replica sits on one type, so its TP groups split evenly.",
        "",
    ])
    Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
