"""Serving options of `autopar solve` (latency targets, frontier, disaggregation) and the
lines its summary adds for a serving plan."""

from __future__ import annotations

from dataclasses import replace

import click

from ..errors import InputError
from ..export.engines import ENGINES, export_text
from .options import decode_hw, latency_targets


def scheduler_options(f):
    """--token-budget and --two-batch-overlap: the engine scheduler aggregated serving is
    priced under (docs/serving.md, serving-chunked and serving-tbo)."""
    f = click.option("--two-batch-overlap/--no-two-batch-overlap", "two_batch_overlap",
                     default=None, help="SGLang's two-batch overlap on EP layouts: pin it on "
                                        "or off (default: on where it shortens requests)")(f)
    return click.option("--token-budget", type=click.IntRange(0, 10_000_000), default=None,
                        help="tokens one scheduler iteration carries, decode included (vLLM "
                             "--max-num-batched-tokens; default vLLM's for the GPU: 8192 "
                             "on >= 70 GiB, 2048 else and on A100; 0: whole prefills)")(f)


def apply_scheduler(wl, token_budget: int | None, two_batch_overlap: bool | None):
    """The workload with the command line's scheduler settings."""
    t = {k: v for k, v in (("token_budget", token_budget),
                           ("two_batch_overlap", two_batch_overlap)) if v is not None}
    if t and (wl is None or wl.kind != "inference"):
        raise InputError("command line", "--token-budget/--two-batch-overlap",
                         "need an inference workload")
    return replace(wl, **t) if t else wl


def serving_options(f):
    """The options `solve` takes for serving (collected into its **serving kwargs)."""
    opts = [
        latency_targets,
        scheduler_options,
        click.option("--frontier", "with_frontier", is_flag=True,
                     help="add the throughput/latency Pareto frontier to the plan"),
        click.option("--disaggregate", is_flag=True,
                     help="also plan separate prefill and decode pools and compare"),
        decode_hw,
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def apply_targets(wl, serving: dict):
    """The workload with the command line's latency targets."""
    if wl is None:
        return wl
    t = {k: serving.get(k) for k in ("ttft_ms", "tpot_ms") if serving.get(k) is not None}
    if t and wl.kind != "inference":
        raise InputError("command line", "--ttft-ms/--tpot-ms", "need an inference workload")
    if "ttft_ms" in t and wl.phase == "decode":
        raise InputError("command line", "--ttft-ms",
                         "a TTFT target needs a prefill: use --phase prefill or both")
    if "tpot_ms" in t and wl.phase == "prefill":
        raise InputError("command line", "--tpot-ms",
                         "a TPOT target needs decoding: use --phase decode or both")
    wl = replace(wl, **t) if t else wl
    return apply_scheduler(wl, serving.get("token_budget"), serving.get("two_batch_overlap"))


def solve_kwargs(serving: dict) -> dict:
    return {"frontier": bool(serving.get("with_frontier")),
            "disaggregate": bool(serving.get("disaggregate")),
            "decode_hw": serving.get("decode_hw")}


def serving_summary(plan: dict) -> str:
    """Lines added to `solve`'s summary for a serving plan."""
    sv = plan.get("serving")
    if not sv:
        return ""
    pt = sv["point"]
    lines = [f"serving  {sv['objective']}: concurrency {pt['concurrency']} "
             f"(max {pt['max_concurrency']}), "
             f"TTFT {_ms(pt['ttft_s'])} ms, TPOT {_ms(pt['tpot_s'])} ms, "
             f"{pt['tokens_per_s_per_gpu']:.1f} tokens/s/GPU, "
             f"{pt['tokens_per_s_per_user']:.1f} tokens/s/user"]
    d = sv.get("disaggregated")
    if d:
        lines.append(f"modes    {d['winner'] or 'neither'} wins"
                     + (f" by x{d['ratio']:.2f}" if d.get("ratio") else ""))
    for eng in ENGINES:
        if eng in plan.get("launch", {}):
            lines.append(f"{eng:8s} {export_text(plan, eng)}")
    return "\n".join(lines)


def _ms(v):
    return "-" if v is None else f"{v * 1e3:.2f}"


__all__ = ["serving_options", "scheduler_options", "apply_scheduler", "apply_targets",
           "solve_kwargs", "serving_summary"]
