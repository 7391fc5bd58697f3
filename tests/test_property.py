"""Every plan `solve` writes passes `autopar check` with zero errors, over generated problems.

A seeded generator (not hypothesis: the cases are many and each must stay cheap) draws small
dense and MoE models (MLA too), clusters of 1 to 4,096 GPUs in nodes of 1-8 GPUs with one NIC
per GPU, and workloads of every kind: training with TP overlap, ZeRO 0-3, fp8, sequence
parallelism, every recompute mode and interleaved stages; prefill and decode steps; serving
(whole requests, TTFT and TPOT targets). Big clusters pin their degrees so the search stays
cheap. Each plan must pass `check_plan` with no error, and its MFU and HFU, against the peak of
the precision its GEMMs run at, must be under 1. Infeasible problems are allowed, but only as
a minority.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any

from autopar.api import solve
from autopar.check.verify import check_plan, format_findings
from autopar.errors import InfeasibleError
from autopar.spec import HardwareSpec, MLASpec, ModelSpec, Workload, parse_hardware

PROBLEMS = 520
SEED = 11


@dataclass(frozen=True)
class Case:
    """One generated problem: specs, search pins and the serving targets."""

    index: int
    model: ModelSpec
    hw: HardwareSpec
    workload: Workload
    pins: dict[str, Any]
    time_limit_s: float

    def describe(self) -> str:
        m, w = self.model, self.workload
        return (f"case {self.index}: {m.name} L{m.layers} h{m.hidden} E{m.experts} on "
                f"{self.hw.nodes}x{self.hw.gpus_per_node} {w.kind}/{w.phase} b{w.batch} "
                f"prec={w.precision} pins={self.pins}")


def _model(rng: random.Random, kind: str, layers: int) -> ModelSpec:
    heads = rng.choice([2, 4, 8])
    head_dim = rng.choice([8, 16, 32])
    moe = kind != "dense"
    experts = rng.choice([2, 4, 6, 8, 16]) if moe else 0
    mla = MLASpec(rng.choice([0, 16]), 32, head_dim, 8, head_dim) if kind == "mla" else None
    dense_layers = (0,) if moe and rng.random() < 0.4 else ()
    return ModelSpec(
        name=kind, layers=layers, hidden=heads * head_dim, heads=heads,
        kv_heads=rng.choice([k for k in (1, 2, heads) if heads % k == 0]), head_dim=head_dim,
        ffn_hidden=rng.choice([64, 96, 128]) if not moe or dense_layers else 0,
        gated_mlp=rng.random() < 0.5, vocab=rng.randint(50, 600), experts=experts,
        top_k=rng.randint(1, min(2, experts)) if moe else 0,
        expert_ffn_hidden=rng.choice([32, 48, 64]) if moe else 0,
        shared_experts=rng.randint(0, 1) if moe else 0,
        shared_expert_ffn_hidden=32 if moe else 0, dense_layers=dense_layers,
        tie_embeddings=rng.random() < 0.3, dropout=rng.random() < 0.3, mla=mla)


def _hardware(rng: random.Random, nodes: int, per_node: int, memory_gb: float) -> HardwareSpec:
    """One NIC per GPU (the inter-node rate is per GPU); sometimes a fast NIC next to a slow
    intra-node link (PCIe boxes), and sometimes an fp8 peak."""
    tflops = {"bf16": 100.0}
    if rng.random() < 0.5:
        tflops["fp8"] = 200.0
    intra = rng.choice([100, 300, 450]) if rng.random() < 0.85 else 16
    spec = {"name": f"gen-{nodes}x{per_node}",
            "gpu": {"memory_gb": memory_gb, "tflops": tflops, "hbm_tbps": 1.0},
            "nodes": nodes, "gpus_per_node": per_node,
            "intra_node": {"bandwidth_gbps": intra, "latency_us": rng.choice([0, 3])},
            "inter_node": {"bandwidth_gbps": rng.choice([12.5, 25, 50]),
                           "latency_us": rng.choice([0, 8])}}
    return parse_hardware(spec, "generated")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _training(rng: random.Random, m: ModelSpec, n: int, per_node: int,
              big: bool) -> tuple[Workload, dict[str, Any]]:
    pins: dict[str, Any] = {}
    if big:  # fix the degrees so the search has a handful of candidates
        tp = rng.choice([d for d in _divisors(per_node) if m.heads % d == 0])
        pp = rng.choice([d for d in _divisors(n // tp) if d <= m.layers])
        dp = n // (tp * pp)
        pins.update(tp=tp, pp=pp, micro_batch=1)
        if m.is_moe:
            pins["ep"] = rng.choice([d for d in _divisors(tp * dp) if d <= m.experts])
        batch = dp * rng.choice([1, 2, 4])
        pins["num_micro_batches"] = batch // dp
        pins["recompute"] = rng.choice(["none", "selective", "full"])
        pins["zero"] = rng.choice([0, 1, 2, 3])
        if tp > 1:
            pins["sequence_parallel"] = rng.random() < 0.6
    else:
        batch = rng.randint(1, 16)
        for key, values in (("tp", [d for d in _divisors(n) if per_node % d == 0]),
                            ("pp", [d for d in _divisors(n) if d <= m.layers]),
                            ("recompute", ["none", "selective", "full"]),
                            ("zero", [0, 1, 2, 3])):
            if rng.random() < 0.3:
                pins[key] = rng.choice(values)
        if m.is_moe and rng.random() < 0.3:
            pins["ep"] = rng.choice([d for d in _divisors(n) if d <= m.experts])
    if rng.random() < 0.25:  # Transformer Engine overlap needs TP > 1 and sequence parallel
        pins["overlap_tp_comm"] = True
        if "sequence_parallel" not in pins or pins.get("tp", 2) == 1:
            pins["sequence_parallel"] = True
        if pins.get("tp") == 1:
            pins.pop("tp")
    if rng.random() < 0.15:
        pins["overlap_grad_reduce"] = False
    if (not big and pins.get("pp") == 2 and m.layers % 4 == 0 and rng.random() < 0.5):
        pins["virtual_stages"] = 2
        pins.setdefault("num_micro_batches", 2)
        batch = max(batch, 2)
    precision = "fp8" if rng.random() < 0.3 else None
    load = rng.choice(["uniform", "uniform", "zipf:1.2:3"])
    spare = rng.choice([None, 1]) if m.is_moe and not big else None
    w = Workload("training", batch, rng.choice([16, 32, 64]), expert_load=load,
                 spare_slots=spare, precision=precision)
    return w, pins


def _inference(rng: random.Random, m: ModelSpec, n: int) -> tuple[Workload, dict[str, Any]]:
    load = rng.choice(["uniform", "zipf:1.2:3"])
    precision = "fp8" if rng.random() < 0.2 else None
    phase = rng.choice(["prefill", "decode", "both", "ttft", "tpot"])
    inp, out = rng.choice([16, 48]), rng.choice([0, 16]) if phase in ("prefill", "decode") \
        else 16
    pins: dict[str, Any] = {}
    if rng.random() < 0.3:
        pins["tp"] = rng.choice([d for d in _divisors(n) if d <= 8])
    if phase in ("prefill", "decode"):
        w = Workload("inference", rng.randint(1, 8), phase=phase, input_len=inp,
                     output_len=out, expert_load=load, precision=precision)
    elif phase == "both":
        w = Workload("inference", rng.randint(1, 8), phase="both", input_len=inp,
                     output_len=out, expert_load=load, precision=precision)
    elif phase == "ttft":
        w = Workload("inference", 1, phase="both", input_len=inp, output_len=out,
                     ttft_ms=rng.choice([0.05, 1.0, 100.0]), expert_load=load,
                     precision=precision)
    else:
        w = Workload("inference", 1, phase="decode", input_len=inp, output_len=out,
                     tpot_ms=rng.choice([0.05, 1.0, 100.0]), expert_load=load,
                     precision=precision)
    return w, pins


def generate(count: int = PROBLEMS, seed: int = SEED) -> list[Case]:
    """`count` problems from one seeded generator: about 1 in 8 on 256-4,096 GPUs."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        kind = rng.choice(["dense", "dense", "moe", "moe", "mla"])
        training = rng.random() < 0.6
        big = training and rng.random() < 0.12
        if big:
            per_node = 8
            nodes = rng.choice([32, 64, 128, 256, 512])
        else:
            per_node = rng.randint(1, 8)
            nodes = rng.choice([1, 1, 1, 2, 2, 3, 4])
        n = nodes * per_node
        layers = rng.choice([2, 4, 6, 8]) if not big else rng.choice([4, 8])
        m = _model(rng, kind, layers)
        hw = _hardware(rng, nodes, per_node, 80.0 if big else rng.choice([1.5, 3.0, 80.0]))
        w, pins = _training(rng, m, n, per_node, big) if training else _inference(rng, m, n)
        out.append(Case(i, m, hw, w, pins, 0.5))
    return out


def gemm_peak(plan: dict, hw: HardwareSpec) -> float:
    """All GPUs' peak at the precision the GEMMs run at (fp8 when the workload asks for it
    and the GPU has it)."""
    m, w = plan["inputs"]["model"], plan["inputs"]["workload"]
    dtype = w.get("precision") or m.get("weight_dtype") or m["dtype"]
    return hw.gpu.flops(dtype) * hw.num_gpus


def features(c: Case, plan: dict) -> set[str]:
    """What a feasible plan exercises, so the test can insist every option was covered."""
    s, w = plan["strategy"], c.workload
    if w.kind != "training":
        serving = w.phase == "both" or w.ttft_ms is not None or w.tpot_ms is not None
        kind = ("ttft" if w.ttft_ms else "tpot" if w.tpot_ms else "both") if serving \
            else w.phase
        return {kind, "moe" if c.model.is_moe else "dense"}
    out = {"training", f"zero{s['zero']}", f"recompute-{s['recompute']}",
           "moe" if c.model.is_moe else "dense"}
    flags = {"tp_overlap": s["overlap_tp_comm"] and s["tp"] > 1,
             "sequence_parallel": s["sequence_parallel"], "interleaved": s["virtual_stages"] > 1,
             "fp8": w.precision == "fp8" and "fp8" in c.hw.gpu.peak_flops, "ep": s["ep"] > 1,
             "4096_gpus": c.hw.num_gpus == 4096, "dp_multi_nic": c.hw.nodes > 1 and s["dp"] > 1
             and c.hw.gpus_per_node > s["tp"]}
    return out | {k for k, v in flags.items() if v}


COVERED = {"training", "zero0", "zero1", "zero2", "zero3", "recompute-none", "recompute-selective",
           "recompute-full", "tp_overlap", "sequence_parallel", "interleaved", "fp8", "ep",
           "4096_gpus", "dp_multi_nic", "prefill", "decode", "both", "ttft", "tpot", "moe",
           "dense"}


def run_case(c: Case) -> tuple[str, str, set[str]]:
    """("ok" | "infeasible" | "fail", detail, features of the plan)."""
    try:
        plan = solve(c.model, c.hw, c.workload, pins=c.pins, time_limit_s=c.time_limit_s,
                     seed=0, workers=1)
    except InfeasibleError as e:
        return "infeasible", str(e), set()
    data = json.loads(plan.to_json())  # what a reader of the file sees
    # the plan's own workload: a serving plan's body is one decode (or prefill) step at the
    # chosen concurrency, echoed in `inputs`, not the request the search was given
    found = [x for x in check_plan(data, c.model, c.hw) if x.severity == "error"]
    mt = data["metrics"]
    peak = gemm_peak(data, c.hw)
    util = [f"{k} {mt[key] / (mt['step_time_s'] * peak):.4f} against the GEMM-precision peak"
            for k, key in (("mfu", "model_flops_per_step"), ("hfu", "flops_per_step"))
            if mt[key] / (mt["step_time_s"] * peak) >= 1]
    if found or util:
        return "fail", "\n".join(util) + "\n" + format_findings(found), set()
    return "ok", "", features(c, data)


def test_every_generated_plan_passes_check():
    t0 = time.perf_counter()
    results = [(c, *run_case(c)) for c in generate()]
    fails = [f"{c.describe()}\n{detail}" for c, kind, detail, _ in results if kind == "fail"]
    counts = {k: sum(r[1] == k for r in results) for k in ("ok", "infeasible", "fail")}
    seen = set().union(*(r[3] for r in results))
    print(f"{counts} in {time.perf_counter() - t0:.1f} s")
    assert not fails, f"{len(fails)} of {len(results)} plans fail check:\n" + "\n\n".join(
        fails[:5])
    assert len(results) >= 500 and counts["infeasible"] < len(results) / 2, counts
    assert COVERED <= seen, f"no feasible plan exercises {sorted(COVERED - seen)}"


def generate_cp(count: int = 48, seed: int = 14) -> list[Case]:
    """Training problems with context parallelism pinned [cp-attention], from their own seeded
    generator (the main set stays as it was): every exchange, recompute mode and ZeRO stage,
    dense, MoE and MLA models, fp8 sometimes."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        per_node, nodes = rng.choice([2, 4, 8]), rng.choice([1, 1, 2, 4])
        m = _model(rng, rng.choice(["dense", "moe", "mla"]), rng.choice([2, 4]))
        hw = _hardware(rng, nodes, per_node, 80.0)
        n = nodes * per_node
        cp = rng.choice([c for c in (2, 4, 8) if n % c == 0])
        seq = rng.choice([64, 128, 256])
        pins = {"cp": cp, "cp_comm": rng.choice(["p2p", "p2p", "all_gather", "a2a"]),
                "recompute": rng.choice(["none", "selective", "full"]),
                "zero": rng.choice([0, 1, 2, 3])}
        w = Workload("training", rng.randint(1, 8), seq,
                     precision="fp8" if rng.random() < 0.3 else None)
        out.append(Case(i, m, hw, w, pins, 0.5))
    return out


def assert_generated_pass(cases: list[Case], what: str) -> None:
    """Every generated plan of `cases` passes check, and three in four are feasible."""
    results = [(c, *run_case(c)) for c in cases]
    fails = [f"{c.describe()}\n{detail}" for c, kind, detail, _ in results if kind == "fail"]
    assert not fails, f"{len(fails)} {what} plans fail check:\n" + "\n\n".join(fails[:3])
    ok = sum(kind == "ok" for _, kind, _, _ in results)
    assert ok >= len(results) * 3 // 4, f"only {ok} of {len(results)} {what} problems feasible"


def test_generated_cp_plans_pass_check():
    assert_generated_pass(generate_cp(), "CP")


if __name__ == "__main__":  # python tests/test_property.py [count]: counts and failures
    import sys

    t0 = time.perf_counter()
    cases = generate(int(sys.argv[1]) if len(sys.argv) > 1 else PROBLEMS)
    tally: dict[str, int] = {}
    for c in cases:
        t = time.perf_counter()
        kind, detail, _ = run_case(c)
        tally[kind] = tally.get(kind, 0) + 1
        if kind == "fail" or time.perf_counter() - t > 2:
            print(f"--- {kind} {time.perf_counter() - t:.1f}s {c.describe()}\n{detail}")
    print(tally, f"{time.perf_counter() - t0:.1f} s")
