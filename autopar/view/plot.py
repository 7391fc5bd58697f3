"""Pictures of a plan (the `plot` extra, matplotlib, imported only here): the memory stack of
each distinct GPU pattern, the step's Gantt chart drawn from the same events as the trace,
and where each stage's step time goes, component by component."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..schema.gpus import decode_ids
from .reeval import Rebuilt
from .trace import COMPUTE, THREADS, Ev, step_events

GB = 1e9
MEMORY_TERMS = (("weights", "weights"), ("gradients", "gradients"),
                ("optimizer", "optimizer states"), ("activations", "activations"),
                ("kv_cache", "KV cache"))
MAX_BARS = 32  # memory patterns drawn one bar each; beyond, the fullest of each stage
KIND_COLORS = {"forward": "#4C72B0", "backward": "#DD8452", "forward+backward": "#8172B3",
               "bubble": "#D0D0D0", "exposed-comm": "#C44E52", "optimizer": "#55A868"}


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("plot", "", "needs matplotlib, which is not installed: pip install "
                                     "'autopar[plot]'") from None
    return plt


def _id_text(ids: list[int]) -> str:
    if not ids:
        return "none"
    if len(ids) == 1:
        return f"GPU {ids[0]}"
    step = ids[1] - ids[0]
    regular = all(b - a == step for a, b in zip(ids, ids[1:], strict=False))
    span = f"{ids[0]}-{ids[-1]}" + (f"/{step}" if step > 1 else "") if regular \
        else f"{ids[0]},{ids[1]},..."
    return f"{len(ids)} GPUs {span}"


def memory_rows(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per memory pattern of `gpus.memory` (GPUs holding the same bytes), with its
    terms in bytes; past MAX_BARS patterns, the fullest pattern of each stage."""
    n = plan["strategy"]["num_gpus"]
    rows = []
    for pat in plan["gpus"]["memory"]:
        m = pat["memory"]
        ids = sorted(decode_ids(pat["gpu_ids"], n)[0] or [])
        terms = {k: m.get(f"{k}_bytes", 0.0) for k, _ in MEMORY_TERMS}
        terms["other"] = m["total_bytes"] - sum(terms.values())  # workspace, reserved, TP
        terms["headroom"] = max(0.0, m["capacity_bytes"] - m["total_bytes"])
        rows.append({"stage": pat.get("stage"), "ids": ids, "terms": terms,
                     "capacity": m["capacity_bytes"], "utilization": m["utilization"]})
    if len(rows) > MAX_BARS:
        best: dict[Any, dict] = {}
        for r in rows:
            if r["stage"] not in best or r["utilization"] > best[r["stage"]]["utilization"]:
                best[r["stage"]] = r
        rows = list(best.values())
    return rows


def plot_memory(plan: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    rows = memory_rows(plan)
    fig, ax = plt.subplots(figsize=(3.2 + 1.15 * len(rows), 4.8))
    names = [k for k, _ in MEMORY_TERMS] + ["other", "headroom"]
    labels = dict(MEMORY_TERMS) | {"other": "workspace + reserved", "headroom": "headroom"}
    colors = ["#4C72B0", "#DD8452", "#C44E52", "#8172B3", "#937860", "#8C8C8C", "#E5E5E5"]
    x = range(len(rows))
    base = [0.0] * len(rows)
    for name, color in zip(names, colors, strict=True):
        vals = [r["terms"][name] / GB for r in rows]
        if any(vals):
            ax.bar(x, vals, bottom=base, color=color, label=labels[name],
                   edgecolor="white", linewidth=0.5, hatch="//" if name == "headroom" else None)
            base = [a + b for a, b in zip(base, vals, strict=True)]
    cap = rows[0]["capacity"] / GB
    ax.axhline(cap, color="black", linestyle="--", linewidth=1)
    ax.text(len(rows) - 0.5, cap, f" capacity {cap:.0f} GB", va="bottom", ha="right", fontsize=8)
    ax.set_xticks(list(x))
    ax.set_xticklabels([f"stage {r['stage']}\n{_id_text(r['ids'])}\n{r['utilization']:.0%}"
                        for r in rows], fontsize=7)
    ax.set_ylabel("memory per GPU (GB)")
    ax.set_ylim(0, cap * 1.12)
    ax.set_title(f"{plan.get('name')}\nmemory per GPU: one bar per GPU pattern "
                 f"({plan['strategy']['num_gpus']} GPUs; % of capacity)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return _save(fig, plt, path)


def _kind(e: Ev) -> str:
    if e.cat in ("bubble", "exposed-comm", "optimizer"):
        return e.cat
    return e.name.split(" mb")[0]


def plot_gantt(plan: dict[str, Any], rb: Rebuilt, path: Path) -> Path:
    """The step as the trace draws it: per stage a compute lane (the top-level passes,
    bubbles, exposed waits and the optimizer) and a lane per communication stream."""
    plt = _plt()
    ev = rb.evaluate()
    events = step_events(rb, ev)
    top = _top_level(events)
    lanes: list[tuple[int, int]] = []
    for k in range(rb.strategy.pp):
        lanes.append((k, COMPUTE))
        lanes += sorted({(k, e.tid) for e in events if e.pid == k and e.tid != COMPUTE})
    y = {lane: len(lanes) - 1 - i for i, lane in enumerate(lanes)}
    crit = sorted((e for e in top if e.pid == _critical(ev) and e.tid == COMPUTE),
                  key=lambda e: e.t0)
    zoom = len(crit) > ZOOM_PASSES * 2  # many micro-batches: also the first passes, readable
    height = max(2.5, 0.3 * len(lanes) + 1.4)
    fig, axes = plt.subplots(2 if zoom else 1, 1, figsize=(11, height * (1.8 if zoom else 1)),
                             squeeze=False)
    t = plan.get("timing", {})
    title = (f"{plan.get('name')}: modeled step, {t.get('schedule')}, "
             f"{rb.strategy.num_micro_batches} micro-batches, step {ev.step_time:.4g} s")
    spans = [(0.0, ev.step_time * 1.01, title)]
    if zoom:
        end = crit[ZOOM_PASSES].t0 + crit[ZOOM_PASSES].dur
        spans.append((0.0, end, f"the first {ZOOM_PASSES} passes of the critical stage"))
    for ax, (lo, hi, name) in zip(axes[:, 0], spans, strict=True):
        seen: set[str] = set()
        for e in top:
            if e.t0 > hi:
                continue
            kind = _kind(e) if e.tid == COMPUTE else "comm"
            color = KIND_COLORS.get(kind, "#64B5CD")
            label = None if kind in seen else ("communication (time on the link)"
                                               if kind == "comm" else kind.replace("-", " "))
            seen.add(kind)
            h = 0.8 if e.tid == COMPUTE else 0.5
            ax.broken_barh([(e.t0, e.dur)], (y[(e.pid, e.tid)] - h / 2, h), facecolors=color,
                           edgecolor=color if e.tid != COMPUTE else "white", linewidth=0.4,
                           label=label)
        ax.set_yticks([y[lane] for lane in lanes])
        ax.set_yticklabels([f"stage {k} {THREADS[tid]}" for k, tid in lanes], fontsize=7)
        ax.set_xlabel("time in the step (s)")
        ax.set_xlim(lo, hi)
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return _save(fig, plt, path)


ZOOM_PASSES = 24  # a second panel with the critical stage's first passes beyond this many


def _critical(ev) -> int:
    return max(range(len(ev.stages)), key=lambda k: ev.stages[k].busy)


def _top_level(events: list[Ev]) -> list[Ev]:
    """The events no other event of their thread contains (the children are drawn by the
    breakdown, not the Gantt chart)."""
    out, by = [], defaultdict(list)
    for e in events:
        by[(e.pid, e.tid)].append(e)
    for es in by.values():
        es.sort(key=lambda e: (e.t0, -e.dur))
        end = -1.0
        for e in es:
            if e.t0 >= end - 1e-12:
                out.append(e)
                end = e.t0 + e.dur
    return out


def breakdown(rb: Rebuilt) -> dict[int, dict[str, float]]:
    """Stage -> seconds of the step per component (forward, backward and recompute
    together), exposed communication, bubble, optimizer and the idle rest: the trace's
    compute lane, which adds up to the step time on every stage."""
    events = step_events(rb, rb.evaluate())
    top = {id(e) for e in _top_level(events)}
    out: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in events:
        if e.tid != COMPUTE:
            continue
        if "component" in e.args:
            out[e.pid][e.args["component"]] += e.dur
        elif e.cat == "exposed-comm":
            out[e.pid][e.name.removeprefix("wait: ").removesuffix(" exposed") + " (exposed)"] \
                += e.dur
        elif id(e) in top and e.cat in ("bubble", "optimizer"):
            out[e.pid][e.cat] += e.dur
        elif id(e) not in top:
            out[e.pid]["other"] += e.dur
    step = rb.evaluate().step_time
    for v in out.values():  # what the stage's lane leaves empty: it waits for the others
        gap = step - sum(v.values())
        if gap > 1e-9 * step:
            v["idle (waiting for other stages)"] = gap
    return {k: dict(v) for k, v in out.items()}


SPECIAL = {"bubble": ("#D0D0D0", None), "idle (waiting for other stages)": ("white", ".."),
           "optimizer": ("#55A868", None), "other": ("#8C8C8C", None)}
PALETTE = [i for i in range(20) if i not in (6, 7, 14, 15)]  # tab20 less its reds and greys
EXPOSED = ("#C44E52", "#E17C7C", "#8E2C2F", "#F2A7A7", "#5E1A1C")


def _order(data: dict[int, dict[str, float]]) -> list[str]:
    """Components first (model order), then exposed communication, then the rest."""
    names: list[str] = []
    for v in data.values():
        names += [k for k in v if k not in names]
    comps = [n for n in names if n not in SPECIAL and not n.endswith("(exposed)")]
    exposed = [n for n in names if n.endswith("(exposed)")]
    return comps + exposed + [n for n in SPECIAL if n in names]


def plot_breakdown(plan: dict[str, Any], rb: Rebuilt, path: Path) -> Path:
    plt = _plt()
    data = breakdown(rb)
    step = rb.evaluate().step_time
    names = _order(data)
    fig, ax = plt.subplots(figsize=(10.5, max(2.6, 0.5 * len(data) + 1.8)))
    cmap = plt.get_cmap("tab20")
    stages = sorted(data)
    left = [0.0] * len(stages)
    comp_i = exp_i = 0
    for name in names:
        vals = [data[k].get(name, 0.0) for k in stages]
        hatch = None
        if name in SPECIAL:
            color, hatch = SPECIAL[name]
        elif name.endswith("(exposed)"):
            color, exp_i = EXPOSED[exp_i % len(EXPOSED)], exp_i + 1
        else:
            color, comp_i = cmap(PALETTE[comp_i % len(PALETTE)]), comp_i + 1
            hatch = "//" if comp_i > len(PALETTE) else None
        ax.barh(range(len(stages)), vals, left=left, color=color, label=name, hatch=hatch,
                edgecolor="0.6" if hatch else "white", linewidth=0.3)
        left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.set_yticks(range(len(stages)))
    ax.set_yticklabels([f"stage {k}" for k in stages])
    ax.invert_yaxis()
    ax.set_xlim(0, step * 1.01)
    ax.set_xlabel("seconds of the step (each component's forward + backward + recompute, "
                  "summed over micro-batches)")
    ax.set_title(f"{plan.get('name')}: where each stage's {step:.4g} s step goes",
                 fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), ncol=1 + len(names) // 18)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(plan: dict[str, Any], rb: Rebuilt, out_dir: str | Path,
             stem: str | None = None) -> list[Path]:
    """memory.png, gantt.png and breakdown.png (prefixed by `stem`) in `out_dir`."""
    _plt()
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    pre = f"{stem}-" if stem else ""
    return [plot_memory(plan, d / f"{pre}memory.png"),
            plot_gantt(plan, rb, d / f"{pre}gantt.png"),
            plot_breakdown(plan, rb, d / f"{pre}breakdown.png")]
