"""What a serving plan's metrics must equal, from its own `serving` section (for `autopar
check`): the serving figures replace "TPOT = the step time" of a one-step plan, since a
serving TPOT includes the prefills mixed into aggregated decode steps [serving-*].

For aggregated serving the TTFT and TPOT are recomputed here from the per-stage times the
plan lists for its scheduler iterations (`serving.point.iteration`), restating the formulas
of docs/serving.md (`serving-chunked`, `serving-queue`, `serving-tbo`, `serving-aggregated`)
without the planner's code: the token budget and its engine default, the chunk schedule,
the decode iteration against the plan's own timing, and whether two-batch overlap was worth
turning on.
"""

from __future__ import annotations

import math
from typing import Any

GIB = 2 ** 30


def serving_expectations(plan: dict[str, Any]) -> list[tuple[str, float, str]]:
    """(metrics key, expected value, why) for a plan with a `serving` section."""
    sv = plan["serving"]
    pt, w = sv["point"], sv["workload"]
    gpus = plan["strategy"]["num_gpus"]
    out: list[tuple[str, float, str]] = [
        ("tokens_per_s_per_gpu", pt["tokens_per_s"] / gpus, "serving tokens/s / GPUs"),
        ("concurrency", pt["concurrency"], "serving.point.concurrency"),
        ("max_concurrency", pt["max_concurrency"], "serving.point.max_concurrency"),
    ]
    times = recompute_times(plan) if isinstance(pt.get("iteration"), dict) else None
    tpot = times["tpot_s"] if times else pt.get("tpot_s")
    ttft = times["ttft_s"] if times else pt.get("ttft_s")
    why = " (recomputed from serving.point.iteration)" if times else ""
    if tpot is not None:
        out.append(("tpot_s", tpot, "serving.point.tpot_s" + why))
        out.append(("tokens_per_s_per_user", 1.0 / tpot, "1 / TPOT"))
    if ttft is not None:
        out.append(("ttft_s", ttft, "serving.point.ttft_s" + why))
    if w["phase"] == "both":
        latency = ttft + max(w["output_len"] - 1, 0) * tpot
        out.append(("request_latency_s", latency, "TTFT + (OSL - 1) x TPOT"))
        out.append(("requests_per_s", pt["concurrency"] / latency,
                    "concurrency / request latency (Little's law)"))
        out.append(("tokens_per_s_per_gpu", pt["concurrency"] / latency * w["output_len"]
                    / gpus, "requests/s x OSL / GPUs"))
    return out


def default_budget(gpu: dict[str, Any]) -> int:
    """vLLM V1's --max-num-batched-tokens default (`vllm serve`): 8192 on GPUs of >= 70 GiB
    that are not an A100, else 2048."""
    big = gpu["memory_bytes"] >= 70 * GIB and "a100" not in str(gpu["name"]).lower()
    return 8192 if big else 2048


def _stage(x: dict, tbo: bool) -> float:
    """[serving-tbo] 2 max(compute, a2a) per layer of one half, the rest twice; without the
    overlap, compute + a2a per layer and the rest once."""
    if tbo:
        return sum(n * 2 * max(c, a) for n, c, a in x["layers"]) + 2 * x["other_s"]
    return sum(n * (c + a) for n, c, a in x["layers"]) + x["other_s"]


def _schedule(b: int, m: int, isl: int, osl: int, budget: int) -> dict[str, float] | None:
    """[serving-chunked] room beside the decode tokens, prompt tokens offered per micro-batch
    iteration, chunks per prompt, the chunk an iteration carries and the share that do."""
    room = budget - b // m
    offered = b * isl / max(osl - 1, 1) / m
    if room < 1 or offered >= room:
        return None
    chunks = -(-isl // room)
    chunk = min(room, max(-(-isl // chunks), math.ceil(offered)))
    return {"room": room, "offered": offered, "chunks": chunks, "chunk": chunk,
            "share": offered / chunk, "utilization": offered / room}


def _times(it: dict, tbo: bool, b: int, m: int, isl: int, osl: int,
           sch: dict | None) -> tuple[float, float]:
    dec = [_stage(x, tbo) for x in it["tbo_decode" if tbo else "decode"]]
    if sch is None:  # [serving-aggregated] whole prefills (token_budget 0)
        pre = it["prefill_stage_s"]
        a = b / max(osl - 1, 1)
        tpot = max(sum(dec), max(m * d + a * x for d, x in zip(dec, pre, strict=True)))
        return sum(pre) + tpot / 2 + max(0.0, a - 1) / 2 * max(pre), tpot
    mix = [_stage(x, tbo) for x in it["tbo_mixed" if tbo else "mixed"]]
    f = sch["share"]
    e = [f * x + (1 - f) * d for x, d in zip(mix, dec, strict=True)]
    tpot = max(sum(e), m * max(e))
    rho = sch["utilization"]
    queue = rho * (isl / (m * sch["room"]) * tpot) / (2 * (1 - rho))  # [serving-queue] M/D/1
    period = max(sum(mix), max(mix) + (m - 1) * max(e))
    return tpot / 2 + queue + sum(mix) + (sch["chunks"] - 1) * period, tpot


def recompute_times(plan: dict[str, Any]) -> dict[str, float]:
    """TTFT and TPOT of an aggregated plan from its iteration figures."""
    pt, w = plan["serving"]["point"], plan["serving"]["workload"]
    it = pt["iteration"]
    b, m = pt["per_replica"], pt["micro_batches"]
    budget = it["token_budget"]
    sch = _schedule(b, m, w["input_len"], w["output_len"], budget) if budget else None
    ttft, tpot = _times(it, bool(it["two_batch_overlap"]), b, m, w["input_len"],
                        w["output_len"], sch)
    return {"ttft_s": ttft, "tpot_s": tpot}


def serving_mismatches(plan: dict[str, Any], tol: float = 1e-6
                       ) -> list[tuple[str, str, Any, Any]]:
    """(field, why, stated, expected) where a serving plan's iteration figures disagree with
    its inputs or its own timing."""
    pt, w = plan["serving"]["point"], plan["serving"]["workload"]
    it = pt.get("iteration")
    if w.get("phase") != "both" or not isinstance(it, dict):
        return []
    out: list[tuple[str, str, Any, Any]] = []
    f = "serving.point.iteration"

    def same(field: str, got: float, want: float, why: str) -> None:
        if abs(got - want) > tol * max(abs(want), abs(got), 1e-30):
            out.append((field, why, got, want))

    gpu = plan["inputs"]["hardware"]["gpu"]
    want = w.get("token_budget")
    want = default_budget(gpu) if want is None else want
    if it["token_budget"] != want:
        out.append((f"{f}.token_budget", "the workload's budget, else vLLM's default for "
                    f"{gpu['name']}", it["token_budget"], want))
    b, m, isl, osl = pt["per_replica"], pt["micro_batches"], w["input_len"], w["output_len"]
    sch = _schedule(b, m, isl, osl, it["token_budget"]) if it["token_budget"] else None
    if it["token_budget"]:
        if sch is None:
            out.append((f"{f}.schedule", "the budget cannot keep up with this load", "a "
                        "schedule", "none"))
            return out
        for k, v in sch.items():
            same(f"{f}.schedule.{k}", it["schedule"][k], v, "serving-chunked")
    stages = plan["timing"]["per_stage"]
    for k, x in enumerate(it["decode"]):
        same(f"{f}.decode[{k}]", _stage(x, False), stages[k]["per_micro_batch_s"],
             "a decode iteration is the plan's step (timing.per_stage)")
    tbo = bool(it["two_batch_overlap"])
    pinned = w.get("two_batch_overlap")
    if tbo and "tbo_decode" not in it:
        out.append((f"{f}.two_batch_overlap", "on without its half-batch figures", tbo,
                    False))
    elif pinned is False and tbo:
        out.append((f"{f}.two_batch_overlap", "pinned off", tbo, False))
    elif pinned is None and "tbo_decode" in it:  # searched: on only where it pays
        lat = {o: (lambda t: t[0] + max(osl - 1, 0) * t[1])(_times(it, o, b, m, isl, osl, sch))
               for o in (False, True)}
        if tbo != (lat[True] < lat[False]):
            out.append((f"{f}.two_batch_overlap", "on exactly where it shortens the request "
                        f"({lat[True]:.6g} s with, {lat[False]:.6g} s without)", tbo,
                        lat[True] < lat[False]))
    for key, v in recompute_times(plan).items():
        same(f"serving.point.{key}", pt[key], v, "recomputed from the iteration figures")
    return out


__all__ = ["serving_expectations", "serving_mismatches", "recompute_times", "default_budget"]
