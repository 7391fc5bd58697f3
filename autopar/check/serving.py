"""What a serving plan's metrics must equal, from its own `serving` section (for `autopar
check`): the serving figures replace "TPOT = the step time" of a one-step plan, since a
serving TPOT includes the prefills mixed into aggregated decode steps [serving-*]."""

from __future__ import annotations

from typing import Any


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
    if pt.get("tpot_s") is not None:
        out.append(("tpot_s", pt["tpot_s"], "serving.point.tpot_s"))
        out.append(("tokens_per_s_per_user", 1.0 / pt["tpot_s"], "1 / TPOT"))
    if pt.get("ttft_s") is not None:
        out.append(("ttft_s", pt["ttft_s"], "serving.point.ttft_s"))
    if w["phase"] == "both":
        latency = pt["ttft_s"] + max(w["output_len"] - 1, 0) * pt["tpot_s"]
        out.append(("request_latency_s", latency, "TTFT + (OSL - 1) x TPOT"))
        out.append(("requests_per_s", pt["concurrency"] / latency,
                    "concurrency / request latency (Little's law)"))
    return out


__all__ = ["serving_expectations"]
