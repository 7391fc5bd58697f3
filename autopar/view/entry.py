"""The library entry points of `view` (exported as `autopar.trace`, `autopar.explain`,
`autopar.plot`): a plan given as a `Plan`, its parsed JSON or a plan file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..plan import Plan, read_plan, write_atomic
from .reeval import rebuild
from .trace import trace_document


def plan_data(plan: Plan | dict | str | Path) -> tuple[dict[str, Any], str]:
    """(the plan's JSON, its source name for error messages)."""
    if isinstance(plan, Plan):
        return plan.data, "plan"
    if isinstance(plan, dict):
        return plan, "plan"
    return read_plan(plan), str(plan)


def default_trace_path(source: str) -> Path:
    """PLAN.json -> PLAN.trace.json beside it."""
    p = Path(source)
    return p.with_name(p.name.removesuffix(".json") + ".trace.json")


def trace(plan: Plan | dict | str | Path, out: str | Path | None = None
          ) -> tuple[Path | None, dict[str, Any]]:
    """The plan's modeled step as a Chrome trace document (`view.trace`), written to `out`
    (default: beside a plan file; nothing is written for a plan given in memory without
    `out`). Returns (the path written or None, the document)."""
    data, source = plan_data(plan)
    doc = trace_document(data, rebuild(data, source))
    if out is None and source != "plan":
        out = default_trace_path(source)
    if out is None:
        return None, doc
    return write_atomic(out, json.dumps(doc, separators=(",", ":"))), doc


def explain(plan: Plan | dict | str | Path) -> dict[str, Any]:
    """Why the plan's layout (`view.explain`): runner-ups, binding constraints, sensitivity."""
    from .explain import explain_plan

    data, source = plan_data(plan)
    return explain_plan(data, rebuild(data, source))


def plot(plan: Plan | dict | str | Path, out_dir: str | Path, stem: str | None = None
         ) -> list[Path]:
    """The memory stack, step Gantt chart and per-component breakdown of a plan as PNGs in
    `out_dir` (`view.plot`; needs the `plot` extra)."""
    from .plot import plot_all

    data, source = plan_data(plan)
    return plot_all(data, rebuild(data, source), out_dir, stem)
