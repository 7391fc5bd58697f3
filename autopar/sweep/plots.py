"""The `plot` extra's PNGs next to a table: the cost frontier over GPU types, and each
point's memory and step-time breakdown (from its plan: the fullest GPU's memory terms and
the timing terms the plan states). matplotlib is imported only here, and only when asked;
`missing()` says which extra to install when it is absent."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from .cost import tokens_per_s

EXTRA_LINE = "plots skipped: matplotlib is not installed (pip install 'autopar[plot]')"
MAX_BARS = 48  # more bars than this are unreadable; the title says how many are shown
MEMORY_TERMS = (("weights_bytes", "weights"), ("gradients_bytes", "gradients"),
                ("optimizer_bytes", "optimizer states"), ("activations_bytes", "activations"),
                ("kv_cache_bytes", "KV cache"), ("workspace_bytes", "workspace"),
                ("tp_overhead_bytes", "TP buffers"), ("reserved_bytes", "reserved"))
TIME_TERMS = (("forward_s", "forward"), ("backward_s", "backward"),
              ("recompute_s", "recompute"),
              (("tp_comm_exposed_s", "ep_comm_exposed_s", "pp_comm_exposed_s",
                "param_gather_exposed_s", "dp_exposed_s"), "exposed communication"),
              ("bubble_s", "pipeline bubble"), ("optimizer_s", "optimizer"))


def missing() -> bool:
    """matplotlib (the `plot` extra) is not installed."""
    return importlib.util.find_spec("matplotlib") is None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cost_png(rows: list[dict[str, Any]], path: Path, title: str, key: str,
             tokens: str = "tokens") -> Path | None:
    """Cost per million tokens against throughput, one marker style per GPU type, the
    Pareto frontier ringed and joined; each point labelled with its GPU count. `tokens`
    names what is counted ("output tokens" for serving)."""
    pts = [r for r in rows if r.get(key) is not None and tokens_per_s(r)]
    if not pts:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    types = list(dict.fromkeys(str(r.get("gpu")) for r in pts))
    for i, g in enumerate(types):
        mine = [r for r in pts if str(r.get("gpu")) == g]
        ax.scatter([tokens_per_s(r) for r in mine], [r[key] for r in mine],
                   marker="osD^v<>"[i % 7], s=36, label=g, zorder=3)
        for r in mine:
            ax.annotate(f"{r['num_gpus']}", (tokens_per_s(r), r[key]),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
    front = sorted((r for r in pts if r.get("cost_frontier")), key=tokens_per_s)
    ax.plot([tokens_per_s(r) for r in front], [r[key] for r in front], "-o", color="black",
            lw=1, ms=11, mfc="none", label="cost frontier (nothing cheaper and faster)",
            zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel(f"throughput ({tokens}/s, log scale; labels: GPUs)")
    ax.set_ylabel(f"US$ per million {tokens}" if key == "usd_per_mtok"
                  else f"GPU-hours per million {tokens}")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def tokens_label(rows: list[dict[str, Any]]) -> str:
    """What the rows' tokens are: output tokens (serving), training tokens, or both."""
    kinds = {"output_tokens_per_s" in r for r in rows if tokens_per_s(r)}
    if kinds == {True}:
        return "output tokens"
    return "training tokens" if kinds == {False} else "tokens (output tokens when serving)"


def _fullest(plan: dict) -> dict | None:
    mem = [m.get("memory", {}) for m in plan.get("gpus", {}).get("memory", [])]
    return max(mem, key=lambda m: m.get("total_bytes", 0.0), default=None)


def _time(timing: dict, names) -> float:
    names = (names,) if isinstance(names, str) else names
    return sum(float(timing.get(n) or 0.0) for n in names)


def breakdown_png(rows: list[dict[str, Any]], plans: dict[str, dict], path: Path,
                  title: str) -> Path | None:
    """Two stacked-bar panels per solved point (up to MAX_BARS): the fullest GPU's memory
    (GB, capacity marked) and the step time by term (s; a serving plan's step is one
    decode step), the step time the plan states marked."""
    ok = [r for r in rows if r.get("status") == "solved" and r.get("key") in plans]
    if not ok:
        return None
    shown = ok[:MAX_BARS]
    plt = _pyplot()
    fig, (am, at) = plt.subplots(2, 1, figsize=(max(6.4, 0.32 * len(shown) + 2) + 2.2, 7.2),
                                 sharex=True)
    x = list(range(len(shown)))
    mems = [_fullest(plans[r["key"]]) or {} for r in shown]
    base = [0.0] * len(shown)
    for k, label in MEMORY_TERMS:
        v = [float(m.get(k) or 0.0) / 1e9 for m in mems]
        if any(v):
            am.bar(x, v, bottom=base, label=label)
            base = [a + b for a, b in zip(base, v, strict=True)]
    am.scatter(x, [float(m.get("capacity_bytes") or 0.0) / 1e9 for m in mems], marker="_",
               s=200, color="black", label="capacity", zorder=3)
    am.set_ylabel("memory of the fullest GPU (GB)")
    am.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    timings = [plans[r["key"]].get("timing", {}) for r in shown]
    base = [0.0] * len(shown)
    for names, label in TIME_TERMS:
        v = [_time(t, names) for t in timings]
        if any(v):
            at.bar(x, v, bottom=base, label=label)
            base = [a + b for a, b in zip(base, v, strict=True)]
    at.scatter(x, [float(t.get("step_time_s") or 0.0) for t in timings], marker="_", s=200,
               color="black", label="step time (plan)", zorder=3)
    at.set_ylabel("step time (s)")
    at.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    at.set_xticks(x, [_label(r) for r in shown], rotation=90, fontsize=7)
    at.set_xlabel("point (index: GPUs x GPU type, layout)")
    more = f" (first {len(shown)} of {len(ok)} solved points)" if len(ok) > len(shown) else ""
    am.set_title(f"{title}: memory and step time per point{more}", fontsize=10)
    for a in (am, at):
        a.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _label(r: dict) -> str:
    g = str(r.get("gpu") or "").split("-")[0]
    return f"{r['index']}: {r.get('num_gpus')}x{g} {r.get('layout', '')}"


__all__ = ["tokens_label", "cost_png", "breakdown_png", "missing", "EXTRA_LINE"]
