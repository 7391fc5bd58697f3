"""What-if studies: a grid of solves from a study file (`autopar sweep`), the fewest GPUs
that meet a target (`recommend`), cost against throughput (docs/studies.md)."""

from __future__ import annotations

from pathlib import Path

from .run import Progress, run_study, solve_point
from .sizing import Recommendation, recommend
from .study import Point, Study, load_study
from .summary import write_summary


def sweep(study: str | Path | Study, out: str | Path, workers: int = 1,
          resume: bool = False) -> list[dict]:
    """Solve every point of `study` into `out` (points.jsonl, plans/, summary.csv / .md)
    and return the rows in study order."""
    st = study if isinstance(study, Study) else load_study(study)
    rows = run_study(st, Path(out), workers, resume)
    write_summary(rows, Path(out), st.name)
    return rows


__all__ = ["Point", "Progress", "Recommendation", "Study", "load_study", "recommend",
           "run_study", "solve_point", "sweep", "write_summary"]
