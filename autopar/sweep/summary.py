"""A sweep's table: one row per point, as CSV and Markdown (`summary.csv`, `summary.md`)."""

from __future__ import annotations

import csv
from pathlib import Path

from tabulate import tabulate

from .run import ROW_KEYS, SERVING_KEYS

EXTRA_KEYS = ("gpu_hours_per_mtok", "usd_per_mtok", "cost_frontier")


def columns(rows: list[dict]) -> list[str]:
    """The axes (in first-seen order), then the figures."""
    axes: list[str] = []
    for r in rows:
        axes += [k for k in r if k not in ROW_KEYS and k not in SERVING_KEYS
                 and k not in EXTRA_KEYS and k not in axes]
    figures = [k for k in ROW_KEYS if k not in ("index", "key", "solve_s", "reason")]
    figures += [k for k in SERVING_KEYS + EXTRA_KEYS if any(k in r for r in rows)]
    return ["index", *axes, *figures, "solve_s", "reason", "key"]


def write_summary(rows: list[dict], out: Path, title: str) -> tuple[Path, Path]:
    cols = columns(rows)
    csv_path, md_path = out / "summary.csv", out / "summary.md"
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in rows:
            w.writerow([r.get(c, "") for c in cols])
    solved = sum(r["status"] == "solved" for r in rows)
    table = tabulate([[_fmt(r.get(c)) for c in cols] for r in rows], cols, tablefmt="github")
    md_path.write_text(f"# Sweep: {title}\n\n{len(rows)} points, {solved} solved, "
                       f"{len(rows) - solved} infeasible or refused (their reason in the "
                       f"row).\n\n{table}\n")
    return csv_path, md_path


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
