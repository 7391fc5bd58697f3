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
from autopar.model.components import weight_bytes  # noqa: E402
from autopar.search import SearchOptions  # noqa: E402
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


def _forms(plan: dict) -> str:
    """The other mixed forms' times, where the plan is the uniform or ep_slots form."""
    out = [f"{c['form']} {c['step_time_s']:.4g} s" if c.get("step_time_s") else
           f"{c['form']} none ({c.get('why', '')})" for k, c in plan["compared"].items()
           if k.startswith("mixed_")]
    return f"; the mixed forms: {', '.join(out)}" if out else ""


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
    s = plan["strategy"]
    if plan.get("mode") == "uniform":  # one layout paced by the slowest type was fastest
        u = plan["uniform_on"]
        return {"case": label, "step": plan["metrics"]["step_time_s"],
                "plan": f"uniform: TP{s['tp']} PP{s['pp']} DP{s['dp']} EP{s['ep']} on all "
                        f"{s['num_gpus']} GPUs paced by {u['paced_by']}{_forms(plan)}",
                "slow": _cmp(plan["compared"]["slowest_type"]),
                "fast": _cmp(plan["compared"]["fast_only"]),
                "check": len(autopar.check(plan, hardware=str(ROOT / hw))),
                "wall": time.perf_counter() - t0, "cut_short": plan["solver"].get(
                    "time_limit_reached", False)}
    if plan.get("mode") == "ep_slots":  # EP groups across the types, slots by speed
        slots = ", ".join(f"{g}: {x['experts_per_rank']} experts x {x['ranks_per_ep_group']} "
                          "ranks" for g, x in plan["expert_slots"].items())
        mem = ", ".join(f"{g} {x['total_bytes'] / GB:.0f}/{x['capacity_bytes'] / GB:.0f} GB"
                        for g, x in plan["stages"][0]["memory"].items())
        seqs = "".join(f"; {g}: {x['sequences_per_replica']} sequences on each of "
                       f"{x['replicas']} attention-DP replicas"
                       for g, x in plan.get("sequence_shares", {}).items())
        lat = "".join(f", {k[:4].upper()} {plan['metrics'][k] * 1e3:.4g} ms"
                      for k in ("tpot_s", "ttft_s") if k in plan["metrics"])
        return {"case": label, "step": plan["metrics"]["step_time_s"],
                "plan": f"ep_slots: TP{s['tp']} PP{s['pp']} DP{s['dp']} EP{s['ep']} "
                        f"ETP{s['etp']} {s.get('moe_dispatcher', '')}, mb {s['micro_batch']}x"
                        f"{s['num_micro_batches']}{lat}, per EP group {slots}{seqs}; stage 0 "
                        f"{mem}{_forms(plan)}",
                "slow": _cmp(plan["compared"]["slowest_type"]),
                "fast": _cmp(plan["compared"]["fast_only"]),
                "check": len(autopar.check(plan, hardware=str(ROOT / hw))),
                "wall": time.perf_counter() - t0, "cut_short": False}
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


def _layout(d: dict) -> str:
    s = d["strategy"]
    cut = "-".join(str(b - a + 1) for a, b in s.get("stage_layers", [])) if s["pp"] > 1 else ""
    return (f"TP{s['tp']} PP{s['pp']} DP{s['dp']} EP{s['ep']} zero {s['zero']} recompute "
            f"{s['recompute']}, mb {s['micro_batch']}x{s['num_micro_batches']}"
            + (f", layers {cut}" if cut else ""))


def seven_row(limit: float) -> tuple[dict, list[str]]:
    """Mixtral-8x7B training on a node with one failed GPU: one type, so (a) is the best plan
    whose splits are all even (what Megatron, torchtitan and DeepSpeed run: every DP rank
    the same micro-batches), and (b) the power-of-two subset; the intact node is the
    reference."""
    t0 = time.perf_counter()
    model = str(ROOT / "problems/models/mixtral-8x7b.yaml")
    seven = autopar.solve(model, str(ROOT / SEVEN), time_limit_s=limit).data
    eight = autopar.solve(model, str(ROOT / "problems/hw/h100-8x.yaml"), time_limit_s=limit)
    s, step = seven["strategy"], seven["metrics"]["step_time_s"]
    batch = seven["inputs"]["workload"]["batch"]
    q, r = divmod(batch, s["dp"])
    uneven = (f"; the {batch} samples split unevenly over the {s['dp']} replicas ({r} x "
              f"{q + 1}, {s['dp'] - r} x {q}: paced by {q + 1})" if r else "")
    evens = []
    for fw in ("megatron", "torchtitan", "deepspeed"):
        try:
            d = autopar.solve(model, str(ROOT / SEVEN), time_limit_s=limit, framework=fw).data
            evens.append((d["metrics"]["step_time_s"], fw, d))
        except AutoparError:
            continue
    row = {"case": "Mixtral-8x7B training, 7 H100 (one failed)", "step": step,
           "plan": _layout(seven) + uneven,
           "check": len(autopar.check(seven)), "wall": time.perf_counter() - t0,
           "cut_short": seven["solver"]["time_limit_reached"]}
    if evens:
        e_step, fw, d = min(evens, key=lambda x: x[0])
        row["slow"] = (f"{e_step:.4g} s ({_layout(d)}; the best even-split plan, "
                       f"--framework {fw}: every GPU is one type, so even splits are what "
                       "treating them alike gives)",
                       f"{e_step / step:.2f}x ({100 * (1 - step / e_step):.0f}% less time)")
    m = load_model(model).model
    four_hw = replace(load_any_hardware(ROOT / SEVEN), gpus_per_node=4, name="h100-7gpu: 4 of 7")
    try:
        four = autopar.solve(model, four_hw, time_limit_s=limit).data
        f4 = four["metrics"]["step_time_s"]
        row["fast"] = (f"{f4:.4g} s ({_layout(four)}; on 4 of the 7, the power-of-two subset)",
                       f"{f4 / step:.2f}x")
    except AutoparError as exc:
        row["fast"] = (f"no plan on 4 of the 7 (the power-of-two subset): {exc}",
                       "only the 7-GPU plans exist")
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
                     "experts' states unshardable over EP 7 (EDP = 1), the 7-GPU plans are "
                     "data-parallel or a 7-stage pipeline; what the uneven splits gain is "
                     "the batch shares (and the free cut where the framework has none).")
    return row, notes


def ep_slots_alone(limit: float) -> list[str]:
    """The ep_slots form for Mixtral on 8 H100 + 8 A100 on its own, every layout priced
    within the time limit (the solve prices the best-bound 48, `mixed_ep.MAX_PRICED`, and
    stops once no bound beats the faster forms)."""
    from autopar.cost.bundled import default_calibration
    from autopar.search.deadline import Deadline
    from autopar.search.mixed_solve import search_ep_slots
    from autopar.spec.groups import fastest, paced_by_slowest, slowest

    hw = load_any_hardware(ROOT / MIXED)
    p = make_problem(ROOT / "problems/models/mixtral-8x7b.yaml", hw.groups[0].hw)
    dt = p.model.dtype
    q = replace(p, hw=paced_by_slowest(hw, dt),
                calib=default_calibration(slowest(hw, dt).hw.gpu.name))
    ev = search_ep_slots(q, hw, fastest(hw, dt), SearchOptions(time_limit_s=limit),
                         Deadline.after(limit), float("inf"), most=10**6)
    if ev is None:
        return ["- Mixtral on 8 H100 + 8 A100, the ep_slots form alone: none fits."]
    per = ", ".join(f"{g.name} {n} experts x {r} ranks" for g, n, r in zip(
        hw.groups, ev.slots, ev.members, strict=True))
    return [f"- Mixtral on 8 H100 + 8 A100, the ep_slots form alone: {ev.step_time:.4g} s "
            f"({ev.strategy.describe()}; per EP group {per}; against the Mixtral row's "
            "forms): its dense parts stay paced by the A100s, where the DP shares give the "
            "A100 replicas fewer micro-batches of the whole model."]


def serving_table(limit: float) -> list[str]:
    """Qwen3-30B-A3B whole requests under TTFT 2 s / TPOT 50 ms on 8 H100 + 8 A100: the
    uniform plan (every GPU as the A100, `serve.mixed`), the pools by type (prefill on one
    group, decode on the other), and each group alone by the one-type serving search."""
    model = ROOT / "problems/models/qwen3-30b-a3b.yaml"
    mf = load_model(model)
    w = replace(mf.workload, phase="both", ttft_ms=2000.0, tpot_ms=50.0)
    t0 = time.perf_counter()
    d = autopar.solve(mf, str(ROOT / MIXED), w, time_limit_s=limit, disaggregate=True).data
    wall = time.perf_counter() - t0
    mt, s = d["metrics"], d["strategy"]
    n = s["num_gpus"]
    rows = [f"| uniform (every GPU as the A100), TP{s['tp']} DP{s['dp']} EP{s['ep']} | {n} | "
            f"{mt['tokens_per_s_per_gpu'] * n:.0f} | {mt['tokens_per_s_per_gpu']:.0f} | "
            f"{mt['ttft_s'] * 1e3:.0f} | {mt['tpot_s'] * 1e3:.1f} | "
            f"{len(autopar.check(d, hardware=str(ROOT / MIXED)))} |"]
    for r in d["pools_by_type"]["pairs"]:
        label = f"pools: prefill {r['prefill_group']}, decode {r['decode_group']}"
        if "best" not in r:
            rows.append(f"| {label} | - | - | - | - | - | {r['why']} |")
            continue
        b = r["best"]
        rows.append(f"| {label} ({b['prefill_gpus']} + {b['decode_gpus']} GPUs) | {r['gpus']} "
                    f"| {r['tokens_per_s']:.0f} | {r['tokens_per_s_per_gpu']:.0f} | "
                    f"{b['ttft_s'] * 1e3:.0f} | {b['tpot_s'] * 1e3:.1f} | - |")
    apart = d["groups_apart"]
    for r in apart["groups"]:
        if "point" not in r:
            rows.append(f"| {r['group']} apart | {r['gpus']} | - | - | - | - | {r['why']} |")
            continue
        pt, lay = r["point"], r["point"]["layout"]
        rows.append(f"| {r['group']} apart: TP{lay['tp']} DP{lay['dp']} EP{lay['ep']}, "
                    f"{r['request_share']:.0%} of the requests | {r['gpus']} | "
                    f"{r['tokens_per_s']:.0f} | {r['tokens_per_s'] / r['gpus']:.0f} | "
                    f"{pt['ttft_s'] * 1e3:.0f} | {pt['tpot_s'] * 1e3:.1f} | - |")
    rows.append(f"| groups apart, in all | {n} | {apart['tokens_per_s']:.0f} | "
                f"{apart['tokens_per_s_per_gpu']:.0f} | - | - | - |")
    ds = load_model(ROOT / "problems/models/deepseek-v3.yaml")
    dw = replace(ds.workload, phase="both", ttft_ms=5000.0, tpot_ms=100.0)
    dd = autopar.solve(ds, str(ROOT / MIXED), dw, time_limit_s=limit).data
    dp, why = dd["serving"]["point"], {r["group"]: r.get("why", "") for r in
                                       dd["groups_apart"]["groups"]}
    ds_s = dd["strategy"]
    deepseek = (f"DeepSeek-V3 fp8 whole requests (4096 in / 1024 out, TTFT 5 s, TPOT 100 ms) "
                f"on the same cluster: the uniform plan (TP{ds_s['tp']} DP{ds_s['dp']} "
                f"EP{ds_s['ep']}) serves {dp['tokens_per_s']:.0f} tokens/s at "
                f"concurrency {dp['concurrency']}, TPOT {dp['tpot_s'] * 1e3:.1f} ms, check "
                f"errors {len(autopar.check(dd, hardware=str(ROOT / MIXED)))}; no group holds "
                f"the {weight_bytes(ds.model) / GB:.0f} GB of weights alone ("
                + ", ".join(f"{g.name} {g.count} x {g.hw.gpu.memory_bytes / GB:.0f} GB: "
                            + ("infeasible" if why.get(g.name) else "serves")
                            for g in load_any_hardware(ROOT / MIXED).groups)
                + "), so there are no "
                "groups apart or pools; the decode-step forms (ep_slots with sequence shares) "
                "are in the first table, one step of batch 256.")
    return ["## Serving whole requests on 8 H100 + 8 A100", "",
            f"Qwen3-30B-A3B (`{model.relative_to(ROOT)}`, 2048 in / 1024 out) under TTFT 2 s "
            f"and TPOT 50 ms, `autopar solve --hw {MIXED} --phase both --ttft-ms 2000 "
            f"--tpot-ms 50 --disaggregate` (wall {wall:.0f} s): the uniform plan is the "
            "serving search on the cluster paced by the A100 (its TTFT and TPOT hold on every "
            "GPU); the pools put the prefill on one group and the decode on the other, each "
            "priced on its own type, the KV cache over the 200 Gb/s NICs, the split searched "
            "by whole GPUs (the GPUs a pair leaves idle serve nothing here); groups apart run "
            "each group's own one-type serving plan, the requests routed by their rates. "
            "`check errors` counts the whole plan's (its sums, its choice). "
            + d["serving_choice"] + ".", "",
            "| plan | GPUs | tokens/s | tokens/s/GPU | TTFT ms | TPOT ms | check errors |",
            "|---|---|---|---|---|---|---|", *rows, "", deepseek, ""]


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
            training_row("DeepSeek-V3 fp8 decode, batch 256 (4096 in, 1024 out), 8 H100 + "
                         "8 A100", "problems/models/deepseek-v3.yaml", None, lim)]
    seven, notes = seven_row(lim)
    ep_notes = ep_slots_alone(lim)
    serving = serving_table(lim)
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
        "fastest of four forms (notes), each priced by the one-type cost model on the GPU "
        "type each part sits on; (a) and (b) are the existing search on one type, (a) on "
        "the cluster paced by its slowest type and links (itself a plan on the cluster: "
        "the `uniform` form). On the 7-GPU node every GPU is one type: there (a) is the "
        "best plan with every split even (what Megatron, torchtitan and DeepSpeed run) and "
        "(b) the power-of-two subset. "
        "`check errors` is what `autopar check` finds in the plan. Mixed "
        "searches cut short by the time limit: " + (", ".join(short) or "none") + ".",
        "",
        *body,
        "",
        *serving,
        "## Notes",
        "",
        *notes,
        "- Four forms are searched and the fastest is the plan: one pipeline over the "
        "groups (`pipeline`: stages on one group each, layers by speed and memory); "
        "data-parallel replicas on every group with micro-batch shares by speed "
        "(`dp_shares`, `search.hetero_dp`: one shape, a common cut, the sync and ZeRO over "
        "all replicas; the replicas' pipeline sends are priced on the NIC, conservative); "
        "(a) itself (`uniform`: one layout over every GPU priced at the slowest type, each "
        "GPU field and link the least of any group's, `spec.groups.paced_by_slowest`, so "
        "every GPU and link does at least what it was priced at, which `autopar check "
        "--hw` verifies field by field: a mixed plan is never slower than (a)); and "
        "(a)'s shapes with EP groups across both types and expert slots by speed and "
        "memory (`ep_slots`, `search.mixed_ep`: each type's expert time priced by the "
        "one-type layer cost of a rank holding that many experts, the dense part, the "
        "collectives and the experts of each layer each paced by their slowest type). "
        "Megatron and torchtitan give every DP rank the same micro-batches and every EP "
        "rank E / EP experts, so with `--framework megatron` neither `dp_shares` nor "
        "`ep_slots` is searched.",
        *ep_notes,
        "- DeepSeek-V3 decode: one decode step is planned over the groups like a training "
        "step (`autopar solve` on the mixed file; the serving search with TTFT / TPOT "
        "targets plans one type and refuses it in one line). The fastest group alone "
        "cannot hold the 671 B fp8 weights (8 x 80 GB); A100 has no fp8 tensor cores, so "
        "its layers run the fp8 checkpoint at the 16-bit rate (`GPUSpec.flops`). The mixed "
        "pipeline loses to (a) because a stage may not span two types (EP 8 at most). The "
        "ep_slots form keeps (a)'s EP 16, moves experts to the H100s and shares the "
        "sequences by speed over the attention-DP replicas (`search.mixed_ep.assign_seqs`): "
        "a type's dense work and TP collectives are priced at its share, the experts at the "
        "mean (the all-to-all mixes every replica's tokens), the all-to-all at the larger; "
        "its memory at the larger of its share and the mean. The A100's dense work is mostly "
        "reading its attention weights, so its replicas take few sequences. The H100 is "
        "priced from its measured kernel tables (the bundled calibration), the A100 from the "
        "analytic defaults.",
        "- Uneven TP shards (`search.uneven.split_heads`, `split_columns`) are pure "
        "functions: every stage and replica sits on one type, so its TP groups split evenly.",
        "",
    ])
    Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
