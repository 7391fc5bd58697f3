"""Consistency checks a plan records about itself (`validation[]`).

They read only the plan document and the specs, so `autopar check` can run the same checks
on any plan file, including one autopar did not write.
"""

from __future__ import annotations

from typing import Any

from .components import embedding_components, head_components, layer_components
from .cost import Problem

REL_TOL = 1e-6


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "passed": bool(ok), "detail": detail}


def check_degrees(plan: dict) -> dict[str, Any]:
    s = plan["strategy"]
    n = s["num_gpus"]
    ok = s["tp"] * s["dp"] * s["pp"] == n and s["ep"] * s["etp"] * s["edp"] == s["tp"] * s["dp"]
    return _check("degrees_multiply", ok,
                  f"tp*dp*pp = {s['tp']}*{s['dp']}*{s['pp']} = {s['tp'] * s['dp'] * s['pp']} "
                  f"(GPUs {n}); ep*etp*edp = {s['ep']}*{s['etp']}*{s['edp']} "
                  f"(tp*dp {s['tp'] * s['dp']})")


def check_memory(plan: dict) -> dict[str, Any]:
    over = [g["id"] for g in plan["gpus"]
            if g["memory"]["total_bytes"] > g["memory"]["capacity_bytes"]]
    worst = max(g["memory"]["total_bytes"] / g["memory"]["capacity_bytes"] for g in plan["gpus"])
    return _check("memory_within_capacity", not over,
                  f"max {worst:.1%} of capacity" + (f"; over on GPUs {over}" if over else ""))


def check_stage_layers(plan: dict, layers: int) -> dict[str, Any]:
    ranges = plan["strategy"]["stage_layers"]
    ok = ranges[0][0] == 0 and ranges[-1][1] == layers - 1 and all(
        a[1] + 1 == b[0] and a[0] <= a[1] for a, b in zip(ranges, ranges[1:], strict=False))
    return _check("stage_layers_cover", ok, f"stages {ranges} over {layers} layers")


def shard_coverage(plan: dict) -> list[str]:
    """Problems with TP shards: per stage, per TP group, per component and layer range the
    shards must tile [0, of) exactly once (replicated components are whole on every rank)."""
    s = plan["strategy"]
    problems = []
    groups: dict[tuple, list[dict]] = {}
    for g in plan["gpus"]:
        r = g["ranks"]
        groups.setdefault((g["stage"], r["dp_rank"]), []).append(g)
    for (stage, dp_rank), members in groups.items():
        if len(members) != s["tp"]:
            problems.append(f"stage {stage} replica {dp_rank} has {len(members)} TP ranks, "
                            f"expected {s['tp']}")
            continue
        pieces: dict[tuple, list[tuple[int, int, int]]] = {}
        for g in members:
            for c in g["components"]:
                sh = c["shard"]
                key = (c["name"], tuple(c["layers"] or ()))
                if sh.get("replicated"):
                    if sh["start"] != 0 or sh["end"] != sh["of"]:
                        problems.append(f"{key} replicated but partial on GPU {g['id']}")
                    continue
                pieces.setdefault(key, []).append((sh["start"], sh["end"], sh["of"]))
        for key, parts in pieces.items():
            if len(parts) != s["tp"]:
                problems.append(f"stage {stage} {key[0]} layers {list(key[1])}: "
                                f"{len(parts)} shards for TP={s['tp']}")
                continue
            parts.sort()
            of = parts[0][2]
            pos = 0
            for a, b, _ in parts:
                if a != pos:
                    problems.append(f"stage {stage} {key[0]} layers {list(key[1])}: "
                                    f"{'gap' if a > pos else 'overlap'} at {min(a, pos)}")
                    break
                pos = b
            else:
                if pos != of:
                    problems.append(f"stage {stage} {key[0]}: shards end at {pos}, not {of}")
    return problems


def check_shards(plan: dict) -> dict[str, Any]:
    problems = shard_coverage(plan)
    return _check("shards_cover_once", not problems,
                  "; ".join(problems[:3]) if problems else
                  "every TP-split tensor is covered exactly once per replica")


def check_experts(plan: dict, model: dict) -> dict[str, Any]:
    if not model.get("experts"):
        return _check("experts_placed", True, "dense model")
    E = model["experts"]
    missing = []
    groups: dict[tuple, set] = {}
    for g in plan["gpus"]:
        r = g["ranks"]
        for e in g["experts"]:
            for layer in range(e["layers"][0], e["layers"][1] + 1):
                groups.setdefault((g["stage"], r["edp_rank"], r["etp_rank"], layer),
                                  set()).update(e["experts"])
    moe_layers = [x for x in range(model["layers"]) if x not in model.get("dense_layers", [])]
    for key, got in groups.items():
        if len(got) != E:
            missing.append(f"layer {key[3]} group {key[:3]}: {E - len(got)} experts missing")
    placed_layers = {k[3] for k in groups}
    for layer in moe_layers:
        if layer not in placed_layers:
            missing.append(f"layer {layer}: no experts placed")
    return _check("experts_placed", not missing,
                  "; ".join(missing[:3]) if missing else
                  f"all {E} experts of {len(moe_layers)} MoE layers in every EP group")


def expected_flops(p: Problem, plan: dict) -> float:
    """Hardware FLOPs per step from the model alone: tokens x FLOPs/token x passes, with
    recompute and DP/TP replication of the replicated components."""
    m, w = p.model, p.workload
    s = plan["strategy"]
    tokens = w.batch * w.tokens_per_sample
    passes = 3 if w.kind == "training" else 1
    rc = s["recompute"]
    sp = s["sequence_parallel"]
    total = 0.0
    for layer in range(m.layers):
        for c in layer_components(m, layer, w.context_len, w.causal):
            extra = 1 if rc == "full" or (rc == "selective" and c.role == "heads") else 0
            mult = m.top_k if c.is_expert else 1
            repl = s["tp"] if c.role == "replicated" and not sp else 1
            total += tokens * c.flops_per_token * mult * repl * (passes + extra)
    head_tokens = tokens
    if w.kind != "training" and w.phase == "prefill":
        head_tokens = w.batch
    for c in head_components(m) + embedding_components(m):
        extra = 0
        repl = s["tp"] if c.role == "replicated" and not sp else 1
        total += head_tokens * c.flops_per_token * repl * (passes + extra)
    return total


def check_flops(p: Problem, plan: dict) -> dict[str, Any]:
    expected = expected_flops(p, plan)
    got = plan["flops"]["total"]
    ok = abs(got - expected) <= REL_TOL * max(expected, 1.0)
    return _check("flops_conserved", ok,
                  f"sum over GPUs {got:.6g} vs model {expected:.6g} FLOPs per step")


def check_throughput(plan: dict) -> dict[str, Any]:
    mt = plan["metrics"]
    ok = mt["achieved_flops_per_s"] <= mt["peak_flops_per_s"] * (1 + REL_TOL)
    return _check("throughput_within_peak", ok,
                  f"{mt['achieved_flops_per_s'] / 1e12:.1f} TFLOP/s achieved of "
                  f"{mt['peak_flops_per_s'] / 1e12:.1f} peak ({mt['hfu']:.1%})")


def check_metrics(p: Problem, plan: dict) -> dict[str, Any]:
    mt = plan["metrics"]
    w = p.workload
    problems = []
    if abs(mt["throughput_tokens_per_s"] - mt["throughput_samples_per_s"] * w.tokens_per_sample) \
            > REL_TOL * mt["throughput_tokens_per_s"]:
        problems.append("tokens/s != samples/s x tokens per sample")
    if abs(mt["throughput_samples_per_s"] * mt["step_time_s"] - w.batch) > REL_TOL * w.batch:
        problems.append("samples/s x step time != batch")
    if not mt["mfu"] <= mt["hfu"] * (1 + REL_TOL) <= 1 + REL_TOL:
        problems.append(f"mfu {mt['mfu']:.3f} <= hfu {mt['hfu']:.3f} <= 1 does not hold")
    if abs(plan["timing"]["step_time_s"] - mt["step_time_s"]) > REL_TOL * mt["step_time_s"]:
        problems.append("timing.step_time_s != metrics.step_time_s")
    return _check("metrics_consistent", not problems,
                  "; ".join(problems) or "throughput, step time, MFU and timing agree")


def validations(p: Problem, plan: dict) -> list[dict[str, Any]]:
    return [
        check_degrees(plan),
        check_stage_layers(plan, p.model.layers),
        check_memory(plan),
        check_shards(plan),
        check_experts(plan, plan["inputs"]["model"]),
        check_flops(p, plan),
        check_throughput(plan),
        check_metrics(p, plan),
    ]
