"""What-if studies: a grid of solves from a study file (`autopar sweep`), the fewest GPUs
that meet a target (`recommend`), cost against throughput (docs/studies.md)."""

from __future__ import annotations

import json
from pathlib import Path

from . import plots
from .cost import cost_key, with_costs
from .run import Progress, run_study, solve_point
from .sizing import Recommendation, recommend
from .study import Point, Study, load_study
from .summary import write_summary


def sweep(study: str | Path | Study, out: str | Path, workers: int = 1,
          resume: bool = False, ray: str | None = None) -> list[dict]:
    """Solve every point of `study` into `out` (points.jsonl, plans/, summary.csv / .md)
    and return the rows in study order; `ray`: as Ray tasks on that cluster address ("":
    a local Ray instance), the same rows."""
    st = study if isinstance(study, Study) else load_study(study)
    rows = run_study(st, Path(out), workers, resume, ray=ray)
    return finish(rows, st, Path(out))[0]


def finish(rows: list[dict], study: Study, out: Path) -> tuple[list[dict], list[Path]]:
    """The rows with their cost (GPU-hours and, at the study's prices, US$ per million
    tokens; the cost frontier marked), the summary tables, and with the plot extra
    cost.png and breakdown.png next to them."""
    rows = with_costs(rows, study.prices)
    paths = list(write_summary(rows, out, study.name))
    if not plots.missing():
        png = plots.cost_png(rows, out / "cost.png", f"{study.name}: cost against throughput",
                             cost_key(rows), plots.tokens_label(rows))
        plans = {}
        for r in [r for r in rows if r.get("status") == "solved"][:plots.MAX_BARS]:
            p = out / "plans" / f"{r['key']}.json"
            if p.is_file():
                plans[r["key"]] = json.loads(p.read_text())
        bars = plots.breakdown_png(rows, plans, out / "breakdown.png", study.name)
        paths += [x for x in (png, bars) if x]
    return rows, paths


__all__ = ["finish", "Point", "Progress", "Recommendation", "Study", "load_study", "recommend",
           "run_study", "solve_point", "sweep", "write_summary"]
