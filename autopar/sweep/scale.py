"""`autopar scale`: throughput against the GPU count, the layout chosen at each size, and the
scaling efficiency against linear (per-GPU throughput over the smallest size's), as a study
of whole nodes over the base hardware (docs/studies.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from ..spec.datafile import read_data
from ..spec.groups import is_grouped, parse_groups, refuse_mixed
from .study import Point, Study

MAX_SIZES = 64


def parse_sizes(text: str) -> list[int]:
    """`8,16,32`: GPU counts, ascending, each at least 1."""
    try:
        sizes = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise InputError("--gpus", "", f"a comma-separated list of GPU counts, got {text!r}") \
            from None
    if not sizes or sizes[0] < 1 or len(sizes) > MAX_SIZES:
        raise InputError("--gpus", "", f"1 to {MAX_SIZES} GPU counts >= 1, got {text!r}")
    return sizes


def scale_study(model: str | Path, hardware: str | Path, sizes: list[int],
                workload: dict[str, Any] | None = None, pins: dict[str, Any] | None = None,
                framework: str = "any", time_limit_s: float = 10.0) -> Study:
    """One point per GPU count: the base hardware with `count / gpus_per_node` nodes."""
    m, h = read_data(model), read_data(hardware)
    if is_grouped(h):  # scaling adds nodes of one type
        mixed = parse_groups(h, str(hardware))
        if len(mixed.groups) > 1:
            raise refuse_mixed(mixed, "autopar scale")
        raise InputError(str(hardware), "groups", "autopar scale adds nodes to a one-type "
                         "file: state the group's fields at the top level")
    per = h.get("gpus_per_node") if isinstance(h, dict) else None
    if not isinstance(per, int) or per < 1:
        raise InputError(str(hardware), "gpus_per_node", "needed to count whole nodes")
    wl = workload if workload is not None else (m.get("workload") if isinstance(m, dict)
                                                else None)
    model_data = {k: v for k, v in m.items() if k != "workload"} if isinstance(m, dict) else m
    points = []
    for i, n in enumerate(sizes):
        if n % per and n > per:
            raise InputError("--gpus", str(n), f"not whole nodes of {per} GPUs ({hardware})")
        hw = dict(h)
        hw["nodes"], hw["gpus_per_node"] = (n // per, per) if n >= per else (1, n)
        points.append(Point(i, {"gpus": n}, model_data, hw, wl, dict(pins or {}), framework,
                            time_limit_s, {"model": str(model), "hardware": str(hardware)}))
    return Study(f"scaling of {Path(model).stem} on {Path(hardware).stem}", str(model), points)


def efficiencies(rows: list[dict]) -> list[dict]:
    """Each row with `scaling_efficiency`: its tokens/s per GPU over the smallest solved
    size's (1.0 = linear)."""
    base = next((r["tokens_per_s_per_gpu"] for r in rows
                 if r.get("status") == "solved" and r.get("tokens_per_s_per_gpu")), None)
    out = []
    for r in rows:
        per_gpu = r.get("tokens_per_s_per_gpu")
        eff = per_gpu / base if base and per_gpu else None
        out.append({**r, "scaling_efficiency": eff})
    return out


def plot(rows: list[dict], path: Path, title: str) -> Path | None:
    """Throughput and scaling efficiency against GPUs (the `plot` extra; None without it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ok = [r for r in rows if r.get("status") == "solved"]
    if not ok:
        return None
    n = [r["gpus"] for r in ok]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(n, [r["throughput_tokens_per_s"] / 1e6 for r in ok], "o-", label="autopar's plan")
    ax.plot(n, [ok[0]["throughput_tokens_per_s"] / 1e6 * x / n[0] for x in n], "--",
            color="grey", label="linear from the smallest size")
    ax.set_xscale("log", base=2)
    ax.set_xticks(n, [str(x) for x in n])
    ax.minorticks_off()
    ax.set_xlabel("GPUs (labels: scaling efficiency, per-GPU throughput over the smallest)")
    ax.set_ylabel("throughput (million tokens/s)")
    ax.set_title(title)
    for r in ok:
        ax.annotate(f"{r['scaling_efficiency']:.0%}", (r["gpus"], r["throughput_tokens_per_s"]
                    / 1e6), textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
