"""Expert placement benchmark: round-robin, greedy, node-local and CP-SAT side by side, and at
engine speed: the anytime placement, EPLB (global and hierarchical) and CP-SAT under a budget.

Writes results/expert-placement.md, results/expert-placement.csv and
results/expert-placement-engine.csv.
Run: python benchmarks/expert_placement.py [--quick]   (full run: about 8 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from autopar.search.placement import Placement, PlacementProblem, place_experts, place_layers  # noqa: E402
from autopar.search.placement.rebalance import moe_layer_time_s  # noqa: E402
from autopar.spec.loads import zipf_profile  # noqa: E402

PLACERS = ("round_robin", "greedy", "node_local", "cpsat")
ENGINE = ("anytime", "eplb_global", "eplb", "cpsat")  # the engine-speed table, in this order
ENGINE_BUDGET_S = 1.0  # CP-SAT's budget there: what engines give an online rebalance
REPEATS = 5  # engine-speed timings are the median of this many calls
TOKENS = 16384 * 8  # routed tokens per MoE layer: 16k tokens x top-8
HIDDEN, FFN = 7168, 2048  # DeepSeek-V3-sized expert, gated (3 matrices)
FLOPS_PER_TOKEN = 6 * HIDDEN * FFN  # forward: 2 FLOPs x 3 GEMMs x hidden x ffn
GPU_FLOPS = 989e12  # H100 SXM dense BF16
TOPOLOGIES = ((8, 8), (8, 4), (32, 8), (64, 8))  # (GPUs, GPUs per node): 1, 2, 4, 8 nodes
OUT = os.path.join(os.path.dirname(__file__), "..", "results")


@dataclass
class Row:
    experts: int
    gpus: int
    nodes: int
    spare: int
    skew: float
    results: dict[str, Placement]

    @property
    def bound(self) -> float:
        return self.results["cpsat"].best_bound


def layer_time_us(max_load_tokens: float) -> float:
    """MoE layer time = max GPU load (tokens) x FLOPs per token / GPU FLOP/s (the model
    `autopar place` prices a rebalance with)."""
    return moe_layer_time_s(max_load_tokens, FLOPS_PER_TOKEN, GPU_FLOPS) * 1e6


def run_case(e: int, g: int, gpn: int, spare: int, skew: float, limit: float) -> Row:
    loads = tuple(float(v) for v in zipf_profile(1, e, skew, 0).per_layer(TOKENS)[0])
    p = PlacementProblem(loads, g, gpn, -(-e // g) + spare, spare)
    res = {m: place_experts(p, m, time_limit_s=limit, seed=0, workers=2) for m in PLACERS}
    return Row(e, g, len(p.node_sizes), spare, skew, res)


@dataclass
class EngineRow:
    experts: int
    gpus: int
    nodes: int
    spare: int
    skew: float
    problem: PlacementProblem
    results: dict[str, Placement]
    times: dict[str, float]  # median seconds per call


def engine_case(e: int, g: int, gpn: int, spare: int, skew: float) -> EngineRow:
    """Anytime, EPLB global / hierarchical and CP-SAT (budget ENGINE_BUDGET_S, the anytime
    placement included) on the same loads, each timed as the median of REPEATS calls."""
    loads = tuple(float(v) for v in zipf_profile(1, e, skew, 0).per_layer(TOKENS)[0])
    p = PlacementProblem(loads, g, gpn, -(-e // g) + spare, spare)
    res, times = {}, {}
    for m in ENGINE:
        budget = ENGINE_BUDGET_S if m == "cpsat" else None
        took = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            res[m] = place_experts(p, m, seed=0, workers=2, budget_s=budget)
            took.append(time.perf_counter() - t0)
        times[m] = statistics.median(took)
    return EngineRow(e, g, len(p.node_sizes), spare, skew, p, res, times)


def even_split_max_over_mean(p: PlacementProblem, pl: Placement) -> float:
    """EPLB's own view of a placement: every replica of e carries w_e / count_e wherever its
    tokens start (what EPLB minimises; the routing rule above sends tokens to their own
    node first, which is what the other columns report)."""
    cnt = pl.replicas
    per_gpu = [sum(p.loads[e] / cnt[e] for e in ex) for ex in pl.gpu_experts]
    return max(per_gpu) / (sum(p.loads) / p.num_gpus)


def twice_on_a_gpu(pl: Placement) -> int:
    """GPUs holding two copies of one expert (EPLB's packing does not prevent it)."""
    return sum(1 for ex in pl.gpu_experts if len(set(ex)) < len(ex))


def engine_table(rows: list[EngineRow]) -> list[str]:
    head = (
        "| experts | GPUs (nodes) | spare/GPU | zipf | bound max/mean "
        "| ms anytime / EPLB global / EPLB hier / CP-SAT "
        "| max/mean anytime / EPLB global / EPLB hier / CP-SAT "
        "| EPLB's own max/mean global / hier | GPUs with an expert twice global / hier "
        "| cross-node share anytime / EPLB global / EPLB hier / CP-SAT | CP-SAT status |"
    )
    out = [head, "|" + "---|" * 10]
    for r in rows:
        mean = TOKENS / r.gpus
        ms = [r.times[m] * 1e3 for m in ENGINE]
        mm = [r.results[m].max_over_mean for m in ENGINE]
        own = [even_split_max_over_mean(r.problem, r.results[m]) for m in ("eplb_global", "eplb")]
        dup = [twice_on_a_gpu(r.results[m]) for m in ("eplb_global", "eplb")]
        cross = [r.results[m].cross_node_share for m in ENGINE]
        cp = r.results["cpsat"]
        out.append(
            f"| {r.experts} | {r.gpus} ({r.nodes}) | {r.spare} | {r.skew:.1f} | "
            f"{cp.best_bound / mean:.4f} | {fmt(ms, '.1f')} | {fmt(mm, '.4f')} | "
            f"{fmt(own, '.4f')} | {dup[0]} / {dup[1]} | {fmt(cross, '.3f')} | "
            f"{cp.method} {cp.status} |"
        )
    return out


def write_engine_csv(rows: list[EngineRow], path: str) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["experts", "gpus", "nodes", "spare_per_gpu", "zipf", "placer",
                    "median_s", "max_over_mean", "even_split_max_over_mean",
                    "gpus_with_a_duplicate", "cross_node_share", "method", "status",
                    "model_status", "model_bound"])
        for r in rows:
            for m in ENGINE:
                pl = r.results[m]
                w.writerow([r.experts, r.gpus, r.nodes, r.spare, r.skew, m,
                            f"{r.times[m]:.5f}", f"{pl.max_over_mean:.6f}",
                            f"{even_split_max_over_mean(r.problem, pl):.6f}",
                            twice_on_a_gpu(pl), f"{pl.cross_node_share:.6f}", pl.method,
                            pl.status, pl.model_status, f"{pl.model_bound:.6g}"])


def fmt(vals, spec: str) -> str:
    return " / ".join(format(v, spec) for v in vals)


def table(rows: list[Row]) -> list[str]:
    mean = TOKENS  # per GPU mean differs per row; ratios below are per row
    del mean
    head = (
        "| experts | GPUs (nodes) | spare/GPU | zipf | bound max/mean "
        "| max/mean RR / greedy / node-local / CP-SAT | gap vs bound greedy / CP-SAT "
        "| cross-node share RR / greedy / node-local / CP-SAT "
        "| MoE layer µs RR / greedy / CP-SAT | CP-SAT s | CP-SAT status |"
    )
    out = [head, "|" + "---|" * 11]
    for r in rows:
        mean = TOKENS / r.gpus
        mm = [r.results[m].max_over_mean for m in PLACERS]
        gaps = [r.results[m].gap * 100 for m in ("greedy", "cpsat")]
        cross = [r.results[m].cross_node_share for m in PLACERS]
        times = [layer_time_us(r.results[m].objective) for m in ("round_robin", "greedy", "cpsat")]
        cp = r.results["cpsat"]
        out.append(
            f"| {r.experts} | {r.gpus} ({r.nodes}) | {r.spare} | {r.skew:.1f} | "
            f"{r.bound / mean:.4f} | {fmt(mm, '.4f')} | {fmt(gaps, '.2f')} % | "
            f"{fmt(cross, '.3f')} | {fmt(times, '.0f')} | {cp.solve_time_s:.2f} | "
            f"{cp.status} |"
        )
    return out


def write_csv(rows: list[Row], path: str) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "experts", "gpus", "nodes", "spare_per_gpu", "zipf", "placer", "max_over_mean",
                "bound_over_mean", "gap_vs_bound", "cross_node_share", "moe_layer_us",
                "solve_s", "status", "model_status",
            ]
        )  # fmt: skip
        for r in rows:
            mean = TOKENS / r.gpus
            for m in PLACERS:
                pl = r.results[m]
                w.writerow(
                    [
                        r.experts, r.gpus, r.nodes, r.spare, r.skew, m,
                        f"{pl.max_over_mean:.6f}", f"{pl.best_bound / mean:.6f}", f"{pl.gap:.6f}",
                        f"{pl.cross_node_share:.6f}", f"{layer_time_us(pl.objective):.2f}",
                        f"{pl.solve_time_s:.3f}", pl.status, pl.model_status,
                    ]
                )  # fmt: skip


def time_61_layers(noise: bool, limit: float) -> dict:
    """61 MoE layers x 256 experts over 64 GPUs (8 nodes), Zipf 1.0, 1 spare slot per GPU."""
    w = zipf_profile(61, 256, 1.0, 0).per_layer(TOKENS)
    if noise:  # +-20 % per expert and layer: no two layers alike, nothing to reuse
        w = w * np.random.default_rng(1).uniform(0.8, 1.2, size=w.shape)
    probs = [PlacementProblem(tuple(map(float, row)), 64, 8, 5, 1) for row in w]
    t0 = time.perf_counter()
    res = place_layers(probs, "cpsat", time_limit_s=limit, seed=0, workers=2)
    wall = time.perf_counter() - t0
    mm = [r.max_over_mean for r in res]
    gaps = [r.gap for r in res]
    return {
        "wall": wall,
        "worst": max(mm),
        "mean": statistics.mean(mm),
        "worst_gap": max(gaps),
        "cross": statistics.mean(r.cross_node_share for r in res),
        "statuses": sorted({r.status for r in res}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few rows and short limits")
    ap.add_argument("--limit", type=float, default=None, help="CP-SAT seconds per layer")
    args = ap.parse_args()
    limit = args.limit or (0.5 if args.quick else 2.0)
    skews = (1.0,) if args.quick else (0.0, 0.6, 1.0, 1.4)
    experts = (256,) if args.quick else (64, 128, 256)
    t_all = time.perf_counter()
    rows = []
    for e in experts:
        for g, gpn in TOPOLOGIES:
            for spare in (0, 1):
                for s in skews:
                    rows.append(run_case(e, g, gpn, spare, s, limit))
                    r = rows[-1].results
                    print(
                        f"E={e} G={g}/{gpn} spare={spare} zipf={s}: "
                        + ", ".join(f"{m} {r[m].max_over_mean:.4f}" for m in PLACERS),
                        flush=True,
                    )
    engine = []
    for e in experts:
        for g, gpn in TOPOLOGIES:
            for s in skews:
                engine.append(engine_case(e, g, gpn, 1, s))
                r = engine[-1]
                print(f"engine E={e} G={g}/{gpn} zipf={s}: " + ", ".join(
                    f"{m} {r.times[m] * 1e3:.1f} ms {r.results[m].max_over_mean:.4f}"
                    for m in ENGINE), flush=True)
    eh = next(r for r in engine if (r.experts, r.gpus, r.skew) == (256, 32, 1.0))
    at, cpb = eh.results["anytime"], eh.results["cpsat"]
    at_ok = eh.times["anytime"] <= 0.05 and at.max_over_mean <= 1.01
    nl = place_experts(eh.problem, "node_local")
    at_local = at.cross_node_share <= nl.cross_node_share
    never_worse = [r for r in engine
                   if r.results["cpsat"].objective > r.results["anytime"].objective * (1 + 1e-12)]
    head = run_case(256, 32, 8, 1, 1.0, limit)
    cp, local = head.results["cpsat"], head.results["node_local"]
    ok = cp.max_over_mean <= 1.01 and cp.cross_node_share <= local.cross_node_share
    big_limit = 0.4
    t61 = time_61_layers(False, big_limit)
    t61n = time_61_layers(True, big_limit)
    worse = [r for r in rows if r.results["cpsat"].objective > r.results["greedy"].objective]
    total = time.perf_counter() - t_all

    os.makedirs(OUT, exist_ok=True)
    write_csv(rows + [head], os.path.join(OUT, "expert-placement.csv"))
    write_engine_csv(engine, os.path.join(OUT, "expert-placement-engine.csv"))
    cp_gaps = [r.results["cpsat"].gap * 100 for r in rows]
    w = max(rows, key=lambda r: r.results["cpsat"].gap)
    worst_row = f"{w.experts} experts over {w.gpus} GPUs, spare {w.spare}, Zipf {w.skew:g}"
    gr_gaps = [r.results["greedy"].gap * 100 for r in rows]
    lines = [
        "# Expert placement: round-robin vs greedy vs node-local vs CP-SAT, and at engine speed",
        "",
        f"Generated by `python benchmarks/expert_placement.py{' --quick' if args.quick else ''}`"
        f" ({platform.machine()}, {os.cpu_count()} cores, CP-SAT 2 workers, "
        f"{limit:g} s limit per layer; whole run {total:.0f} s).",
        "",
        "Loads: Zipf(S) with seed 0 over the experts, "
        f"{TOKENS} routed tokens per layer (16k tokens x top-8). Slots per GPU = "
        "ceil(E/G) + spare. Every placement is evaluated under the same routing rule: tokens "
        "start evenly on all GPUs, go to a replica on their own node when one exists (split "
        "evenly among that node's replicas), else split evenly over all replicas. "
        "`bound` is a valid lower bound on the max GPU load of any placement with these slots "
        "(max of total/G and the water-filled hottest replica; with no spare slot, the hottest "
        "expert plus the smallest ones filling its GPU). Gap = (max - bound) / max.",
        "",
        f"MoE layer time = max GPU load (tokens) x {FLOPS_PER_TOKEN / 1e6:.1f} MFLOP/token "
        f"(6 x {HIDDEN} x {FFN}, gated expert, forward) / {GPU_FLOPS / 1e12:.0f} TFLOP/s "
        "(H100 SXM BF16 dense), compute only.",
        "",
        "Placers: RR = contiguous blocks, no replicas (framework default); greedy = "
        "public-balancer style (water-fill spare slots to the highest load per replica, then "
        "LPT into the least loaded GPU with room, node-unaware); node-local = experts "
        "balanced over nodes first, replicas only inside a node; CP-SAT = this project "
        "(docs in `autopar/search/placement/`, `docs/expert-load.md`). Engine speed: "
        "anytime = this project's solver-free placement (LPT + swap descent, the CP-SAT "
        "start); EPLB = DeepSeek's expert-parallelism load balancer (github.com/deepseek-ai/"
        "EPLB, eplb.py at d52c72d), not on PyPI and written in torch, so ported step for step "
        "to numpy in `autopar/search/placement/eplb.py` (its timings are of that port, not of "
        "DeepSeek's code): global = replicate to the highest load per replica, then "
        "balanced packing onto GPUs; hier = its hierarchical policy with DeepSeek-V3's 8 "
        "expert groups (groups packed onto nodes, replicas inside each node, then packing "
        "onto the node's GPUs), falling back to global where the groups do not divide, as "
        "EPLB does.",
        "",
        "## Headline checks",
        "",
        "| check | target | result | pass |",
        "|---|---|---|---|",
        f"| 256 experts, 32 GPUs / 4 nodes, Zipf 1.0, 1 spare/GPU: CP-SAT max/mean | <= 1.01 | "
        f"{cp.max_over_mean:.4f} (bound {cp.best_bound / (TOKENS / 32):.4f}, {cp.status}, "
        f"{cp.solve_time_s:.2f} s) | {'yes' if cp.max_over_mean <= 1.01 else 'NO'} |",
        f"| same: cross-node share CP-SAT vs node-local | <= node-local | "
        f"{cp.cross_node_share:.3f} vs {local.cross_node_share:.3f} (node-local max/mean "
        f"{local.max_over_mean:.4f}; greedy {head.results['greedy'].max_over_mean:.4f} / "
        f"{head.results['greedy'].cross_node_share:.3f}) | {'yes' if ok else 'NO'} |",
        f"| 61 layers x 256 experts, 64 GPUs / 8 nodes, Zipf 1.0, 1 spare/GPU | < 30 s | "
        f"{t61['wall']:.1f} s (layers equal up to relabelling: solved once); max/mean worst "
        f"{t61['worst']:.4f} | {'yes' if t61['wall'] < 30 else 'NO'} |",
        f"| same with +-20 % per-layer noise (61 distinct layers, {big_limit:g} s each, "
        f"2 threads) | < 30 s | {t61n['wall']:.1f} s; max/mean worst {t61n['worst']:.4f}, "
        f"mean {t61n['mean']:.4f}, worst gap {t61n['worst_gap'] * 100:.2f} %, cross-node "
        f"{t61n['cross']:.3f}, status {', '.join(t61n['statuses'])} | "
        f"{'yes' if t61n['wall'] < 30 else 'NO'} |",
        f"| CP-SAT no worse than greedy on max load | every row | "
        f"{len(rows) - len(worse)} of {len(rows)} rows | {'yes' if not worse else 'NO'} |",
        f"| anytime: 256 E / 32 GPUs / 1 spare, Zipf 1.0: <= 50 ms at max/mean <= 1.01 | "
        f"<= 50 ms, <= 1.01 | {eh.times['anytime'] * 1e3:.1f} ms (median of {REPEATS}), "
        f"max/mean {at.max_over_mean:.4f}, cross-node {at.cross_node_share:.3f}; EPLB global "
        f"{eh.times['eplb_global'] * 1e3:.1f} ms at "
        f"{eh.results['eplb_global'].max_over_mean:.4f}, EPLB hier "
        f"{eh.times['eplb'] * 1e3:.1f} ms at {eh.results['eplb'].max_over_mean:.4f} | "
        f"{'yes' if at_ok else 'NO'} |",
        f"| same: cross-node share anytime vs node-local | <= node-local | "
        f"{at.cross_node_share:.3f} vs {nl.cross_node_share:.3f} (EPLB hier "
        f"{eh.results['eplb'].cross_node_share:.3f}, global "
        f"{eh.results['eplb_global'].cross_node_share:.3f}) | {'yes' if at_local else 'NO'} |",
        f"| CP-SAT with a {ENGINE_BUDGET_S:g} s budget (anytime included) no worse than "
        f"anytime | every engine row | {len(engine) - len(never_worse)} of {len(engine)} "
        f"rows; headline {eh.times['cpsat']:.2f} s at {cpb.max_over_mean:.4f}, cross-node "
        f"{cpb.cross_node_share:.3f} | {'yes' if not never_worse else 'NO'} |",
        "",
        f"Gap vs bound over all rows: CP-SAT median {statistics.median(cp_gaps):.2f} %, "
        f"max {max(cp_gaps):.2f} %; greedy median {statistics.median(gr_gaps):.2f} %, "
        f"max {max(gr_gaps):.2f} %. CP-SAT's largest gap is at {worst_row}: few slots per GPU, "
        "where the bound ignores how few copies a GPU holds and the model only uses replica "
        "counts that split evenly over equal nodes, so the gap there is partly the bound's. "
        "With 0 spare slots (E divisible by G here) the bound is exact: the hottest expert "
        "plus the lightest ones that fill its GPU.",
        "",
        "## Engine speed: anytime vs EPLB vs CP-SAT under a budget",
        "",
        f"One spare slot per GPU; times are the median of {REPEATS} calls on this machine "
        f"(wall clock, 2 CP-SAT workers; CP-SAT's budget {ENGINE_BUDGET_S:g} s includes its "
        "anytime start). max/mean is under the routing rule above for every placer; "
        "\"EPLB's own\" is the max/mean EPLB itself minimises, every replica carrying w / "
        "count wherever its tokens start, which is where its published ~1.01 (global) comes "
        "from: under node-first routing its replicas on different nodes carry unequal "
        "shares. EPLB's packing may put two copies of one expert on one GPU (counted); "
        "anytime and CP-SAT never do. At Zipf 0 every load ties, and packing heaviest first "
        "with ties to the lowest index puts each replicated expert's second copy on the GPU "
        "of its first (harmless there: all GPUs carry the mean). The CSV "
        "`expert-placement-engine.csv` has every figure.",
        "",
        *engine_table(engine),
        "",
        "## All rows",
        "",
        *table(rows),
        "",
        "Status: OPTIMAL = the placement meets the bound (proven optimal); FEASIBLE = best "
        "found, gap as shown; FALLBACK = greedy's placement kept (it was better). The CSV "
        "also holds each CP-SAT model's raw status (flat model, or hierarchical L1 node "
        "counts / L2 per-node packing / LNS windows).",
        "",
    ]
    with open(os.path.join(OUT, "expert-placement.md"), "w") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines[:40]))


if __name__ == "__main__":
    main()
