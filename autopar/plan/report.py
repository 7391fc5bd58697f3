"""The compact terminal summary of a plan."""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

from ..schema.gpus import gpu_records

GB = 1e9
UNITS = {"step_time_s": " s", "tokens_per_s_per_gpu": " tokens/s/GPU",
         "request_latency_s": " s"}


def summary(plan: dict[str, Any]) -> str:
    s, mt, sv = plan["strategy"], plan["metrics"], plan["solver"]
    lines = [
        f"{plan['name']}: {s['num_gpus']} GPUs",
        f"strategy  TP={s['tp']}{' CP=' + str(s['cp']) if s.get('cp', 1) > 1 else ''} "
        f"PP={s['pp']} DP={s['dp']} EP={s['ep']} ETP={s['etp']} "
        f"EDP={s['edp']}  micro-batch {s['micro_batch']} x {s['num_micro_batches']}  "
        f"recompute={s['recompute']}"
        + (f"({','.join(s['recompute_modules'])})" if s.get("recompute_modules") else "")
        + f" zero={s['zero']} "
        f"sp={'on' if s['sequence_parallel'] else 'off'}"
        f"  stages {s['stage_layers']}",
    ]
    rows = []
    for g in gpu_records(plan):
        mem = g["memory"]
        rows.append([g["id"], g["node"], g["stage"], f"{g['layers'][0]}-{g['layers'][1]}",
                     f"{mem['total_bytes'] / GB:.1f} / {mem['capacity_bytes'] / GB:.0f}",
                     f"{mem['weights_bytes'] / GB:.1f}",
                     f"{(mem['gradients_bytes'] + mem['optimizer_bytes']) / GB:.1f}",
                     f"{(mem['activations_bytes'] + mem['kv_cache_bytes']) / GB:.1f}",
                     f"{g['flops_per_step'] / 1e12:.1f}",
                     sum(len(e['experts']) for e in g["experts"][:1])])
    if len(rows) > 16:
        rows = rows[:8] + [["..."] * len(rows[0])] + rows[-4:]
    lines.append(tabulate(rows, headers=["gpu", "node", "stage", "layers", "mem GB",
                                         "weights", "grad+opt", "act/kv", "TFLOP/step",
                                         "experts"], tablefmt="simple"))
    t = plan["timing"]
    lines.append(
        f"step {mt['step_time_s'] * 1e3:.2f} ms (pipeline {t['pipeline_s'] * 1e3:.2f}, bubble "
        f"{t['bubble_s'] * 1e3:.2f}, DP exposed {t['dp_exposed_s'] * 1e3:.2f}, optimizer "
        f"{t['optimizer_s'] * 1e3:.2f})")
    thr = (f"throughput {mt['throughput_samples_per_s']:.2f} samples/s, "
           f"{mt['throughput_tokens_per_s']:.0f} tokens/s  MFU {mt['mfu']:.1%}  "
           f"HFU {mt['hfu']:.1%}  expert max/mean {mt['expert_load_max_over_mean']:.3f}")
    if "tpot_s" in mt:
        thr += f"  TPOT {mt['tpot_s'] * 1e3:.2f} ms"
    if "ttft_s" in mt:
        thr += f"  TTFT {mt['ttft_s'] * 1e3:.1f} ms"
    if "tokens_per_s_per_gpu" in mt:
        thr += f"  {mt['tokens_per_s_per_gpu']:.0f} tokens/s/GPU"
    lines.append(thr)
    failed = [v["name"] for v in plan["validation"] if not v["passed"]]
    unit = UNITS.get(sv.get("objective_name", "step_time_s"), "")
    lines.append(
        f"solver {sv['status']}  objective {sv['objective']:.6g}{unit}  "
        f"bound {sv['best_bound']:.6g}{unit}"
        f"  gap {sv['gap']:.2%}  {sv['solve_time_s']:.3f} s  ({sv['candidates']} candidates, "
        f"{sv['pruned_by_bound']} pruned by bound, {sv['memory_infeasible']} over memory, "
        f"{sv['cpsat_models']} CP-SAT stage models)  seed {sv['seed']}"
        + (f"\ntime limit of {sv['time_limit_s']:g} s reached: the best layout found, "
           f"{sv.get('unbounded', 0)} layouts not examined (covered by the bound)"
           if sv.get("time_limit_reached") else ""))
    lines.append("validation " + ("all passed" if not failed else f"FAILED: {', '.join(failed)}"))
    return "\n".join(lines)
