"""`autopar check` of what a serving plan on a mixed file adds beside its uniform plan
(`serve.mixed`): each group apart and the pools by type. Each group's point must use that
group's GPUs and meet the plan's targets; the totals are the sums of the parts, per GPU
over the whole cluster (or over a pair's pools); `serving_choice` names the answer that
serves the most. The points themselves are the one-type serving model's (`autopar solve`
on the group reproduces them); this recomputes what the plan derives from them."""

from __future__ import annotations

from typing import Any

from .finding import Findings, close

TOL = 1e-6


def _meets(pt: dict[str, Any], targets: dict[str, Any]) -> bool:
    def ok(limit_ms: float | None, got_s: float | None) -> bool:
        return limit_ms is None or (got_s is not None and got_s * 1e3 <= limit_ms * (1 + TOL))

    return ok(targets.get("ttft_ms"), pt.get("ttft_s")) and ok(targets.get("tpot_ms"),
                                                                pt.get("tpot_s"))


def check_mixed_serving(f: Findings, plan: dict[str, Any]) -> None:
    apart = plan.get("groups_apart")
    if not isinstance(apart, dict):
        return
    groups = {g["name"]: g for g in plan.get("uniform_on", {}).get("groups", [])}
    targets = plan.get("serving", {}).get("targets") or {}
    n = sum(int(g["count"]) for g in groups.values())
    total = rate = 0.0
    for i, r in enumerate(apart.get("groups", [])):
        path = f"groups_apart.groups[{i}]"
        g = groups.get(r.get("group"))
        if g is None or int(r.get("gpus", -1)) != int(g["count"]) or r.get("gpu") != \
                g["gpu_type"]:
            f.error("gpus", path, "not a group of the plan's cluster", r.get("group"),
                    sorted(groups))
            continue
        if "point" not in r:
            continue
        pt = r["point"]
        if int(pt.get("gpus", -1)) != int(g["count"]):
            f.error("gpus", f"{path}.point.gpus", "the group's point uses other GPUs",
                    pt.get("gpus"), g["count"])
        if not _meets(pt, targets):
            f.error("serving", f"{path}.point", "misses the plan's targets",
                    [pt.get("ttft_s"), pt.get("tpot_s")], targets)
        if not close(r["tokens_per_s"], pt["tokens_per_s"], TOL):
            f.error("serving", f"{path}.tokens_per_s", "the point's", r["tokens_per_s"],
                    pt["tokens_per_s"])
        total += pt["tokens_per_s"]
        rate += pt["requests_per_s"]
    for i, r in enumerate(apart.get("groups", [])):
        if "point" in r and rate and not close(r.get("request_share", -1.0),
                                               r["point"]["requests_per_s"] / rate, TOL):
            f.error("serving", f"groups_apart.groups[{i}].request_share", "its requests/s "
                    "over every group's", r.get("request_share"),
                    r["point"]["requests_per_s"] / rate)
    if not close(apart.get("tokens_per_s", -1.0), total, TOL):
        f.error("serving", "groups_apart.tokens_per_s", "the sum of the groups'",
                apart.get("tokens_per_s"), total)
    if n and not close(apart.get("tokens_per_s_per_gpu", -1.0), total / n, TOL):
        f.error("serving", "groups_apart.tokens_per_s_per_gpu", "the sum over the cluster's "
                "GPUs", apart.get("tokens_per_s_per_gpu"), total / n)
    cands = {"uniform": float(plan.get("metrics", {}).get("tokens_per_s_per_gpu", 0.0)) * n,
             "groups_apart": total}
    for i, r in enumerate(plan.get("pools_by_type", {}).get("pairs", [])):
        if "best" not in r:
            continue
        b, path = r["best"], f"pools_by_type.pairs[{i}]"
        if not _meets(b, targets):
            f.error("serving", f"{path}.best", "misses the plan's targets",
                    [b.get("ttft_s"), b.get("tpot_s")], targets)
        for key, grp in (("prefill_gpus", r["prefill_group"]),
                         ("decode_gpus", r["decode_group"])):
            if grp not in groups or b[key] > int(groups[grp]["count"]):
                f.error("gpus", f"{path}.best.{key}", "more GPUs than the group holds",
                        b[key], groups.get(grp, {}).get("count"))
        if not close(r["tokens_per_s_per_gpu"], r["tokens_per_s"] / r["gpus"], TOL):
            f.error("serving", f"{path}.tokens_per_s_per_gpu", "tokens/s over the pools' "
                    "GPUs", r["tokens_per_s_per_gpu"], r["tokens_per_s"] / r["gpus"])
        cands["pools_by_type"] = max(cands.get("pools_by_type", 0.0), r["tokens_per_s"])
    best = max(cands, key=cands.get)
    if not str(plan.get("serving_choice", "")).startswith(f"{best} serves the most"):
        f.error("serving", "serving_choice", "not the answer that serves the most tokens/s",
                plan.get("serving_choice"), best)
