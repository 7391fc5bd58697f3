"""The serving frontier as a terminal table, a JSON document and (with the `plot` extra) a
PNG of tokens/s per GPU against tokens/s per user."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tabulate import tabulate

from ..cost.layer import Problem
from .disagg import DisaggResult
from .frontier import ServingResult

SCHEMA = "autopar-frontier/1.0"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e3:.2f}"


def frontier_table(res: ServingResult, disagg: DisaggResult | None = None) -> str:
    t = res.targets
    rows = []
    for pt in res.frontier:
        rows.append(["agg", pt.layout.describe(), pt.concurrency, _ms(pt.ttft_s),
                     _ms(pt.tpot_s), f"{pt.tokens_per_s_per_user:.1f}",
                     f"{pt.tokens_per_s_per_gpu:.1f}", pt.max_concurrency,
                     "yes" if pt.meets(t.ttft_ms, t.tpot_ms) else "no"])
    for x in (disagg.frontier if disagg else []):
        lay = (f"P {x.prefill.gpus}:{x.prefill.layout.describe()} x{x.prefill.per_replica} / "
               f"D {x.decode.gpus}:{x.decode.layout.describe()}")
        rows.append(["disagg", lay, x.decode.concurrency, _ms(x.ttft_s), _ms(x.tpot_s),
                     f"{x.tokens_per_s_per_user:.1f}", f"{x.tokens_per_s_per_gpu:.1f}",
                     x.decode.max_concurrency, "yes" if x.meets(t) else "no"])
    head = ["mode", "layout", "concurrency", "TTFT ms", "TPOT ms", "tok/s/user", "tok/s/GPU",
            "max conc", "meets targets"]
    lines = [tabulate(rows, headers=head, tablefmt="simple")]
    b = res.best
    if b is not None:
        lines.append(f"chosen ({res.objective}; targets: {t.describe()}): "
                     f"{b.layout.describe()} at concurrency {b.concurrency}: "
                     f"{b.tokens_per_s_per_gpu:.1f} tokens/s/GPU, "
                     f"{b.tokens_per_s_per_user:.1f} tokens/s/user, TTFT {_ms(b.ttft_s)} ms, "
                     f"TPOT {_ms(b.tpot_s)} ms")
    if disagg is not None:
        lines.append(comparison_line(res, disagg))
    if res.timed_out or (disagg is not None and disagg.timed_out):
        lines.append(f"time limit reached: {res.unexamined} of {res.layouts} layouts not "
                     "costed" + (", disaggregated splits in part" if disagg is not None
                                 and disagg.timed_out else "")
                     + "; the frontier covers what was costed")
    lines.append(f"{res.layouts} layouts, {res.evaluations} evaluations, "
                 f"{res.search_time_s:.2f} s" + (f" (+ {disagg.search_time_s:.2f} s "
                                                  "disaggregated)" if disagg else ""))
    return "\n".join(lines)


def comparison_line(res: ServingResult, d: DisaggResult) -> str:
    a = res.best.tokens_per_s_per_gpu if res.best else 0.0
    b = d.best.tokens_per_s_per_gpu if d.best else 0.0
    if not a and not b:
        return "neither mode meets the targets"
    if b > a:
        x = d.best
        return (f"disaggregated wins: {b:.1f} vs {a:.1f} tokens/s/GPU (x{b / max(a, 1e-30):.2f})"
                f" with {x.prefill.gpus} prefill GPUs ({x.prefill.layout.describe()}) and "
                f"{x.decode.gpus} decode GPUs ({x.decode.layout.describe()}), prefill/decode "
                f"rate {x.prefill_rate / x.decode_rate:.2f}")
    return f"aggregated wins: {a:.1f} vs {b:.1f} tokens/s/GPU (x{a / max(b, 1e-30):.2f})"


def frontier_document(p: Problem, res: ServingResult,
                      disagg: DisaggResult | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "model": p.model.name, "hardware": p.hw.name, "gpus": p.hw.num_gpus,
        "workload": p.workload.echo(),
        "targets": {"ttft_ms": res.targets.ttft_ms, "tpot_ms": res.targets.tpot_ms},
        "objective": res.objective,
        "best": res.best.to_dict() if res.best else None,
        "frontier": [pt.to_dict() for pt in res.frontier],
        "search": {"layouts": res.layouts, "evaluations": res.evaluations,
                   "points": len(res.points), "search_time_s": res.search_time_s,
                   "time_limit_reached": res.timed_out,
                   "layouts_not_costed": res.unexamined},
    }
    if disagg is not None:
        doc["disaggregated"] = {
            "best": disagg.best.to_dict() if disagg.best else None,
            "frontier": [x.to_dict() for x in disagg.frontier],
            "splits": disagg.splits, "search_time_s": disagg.search_time_s,
            "time_limit_reached": disagg.timed_out,
            "comparison": comparison_line(res, disagg),
        }
    return doc


def frontier_png(res: ServingResult, path: str | Path, title: str,
                 disagg: DisaggResult | None = None) -> Path:
    """Plot the frontier; needs matplotlib (`pip install autopar[plot]`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from ..errors import InputError

        raise InputError("--png", "", "needs matplotlib, which is not installed: "
                                      "pip install 'autopar[plot]'") from None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cloud = [(x.tokens_per_s_per_user, x.tokens_per_s_per_gpu) for x in res.points]
    if cloud:
        ax.scatter(*zip(*cloud, strict=True), s=6, color="0.8", label="all points (agg)")
    xs = [x.tokens_per_s_per_user for x in res.frontier]
    ys = [x.tokens_per_s_per_gpu for x in res.frontier]
    ax.plot(xs, ys, "o-", color="C0", label="aggregated frontier")
    if disagg is not None and disagg.frontier:
        ax.plot([x.tokens_per_s_per_user for x in disagg.frontier],
                [x.tokens_per_s_per_gpu for x in disagg.frontier], "s-", color="C1",
                label="disaggregated frontier")
    if res.best is not None:
        ax.plot([res.best.tokens_per_s_per_user], [res.best.tokens_per_s_per_gpu], "*",
                color="C3", markersize=14, label="chosen")
    if res.targets.tpot_ms:
        ax.axvline(1e3 / res.targets.tpot_ms, color="C3", linestyle=":",
                   label=f"TPOT {res.targets.tpot_ms:g} ms")
    ax.set_xlabel("tokens/s per user (1 / TPOT)")
    ax.set_ylabel("tokens/s per GPU")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


__all__ = ["frontier_table", "frontier_document", "frontier_png", "comparison_line"]
