"""`autopar sweep`: every point of a study file solved, each written as it finishes."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..sweep import finish, load_study, plots, run_study
from ..sweep.run import Progress
from . import options as opt
from .app import main
from .run import guard


@main.command(epilog=opt.epilog("sweep"))
@click.argument("study_path", metavar="STUDY.yaml", type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="folder for points.jsonl, plans/ and summary.csv / summary.md")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="worker processes (each solve single-threaded, seed 0: the rows do not "
                   "depend on this)")
@click.option("--resume", is_flag=True, help="finish a sweep in --out: skip its done points")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None,
              metavar="[ADDRESS]", help="solve the points as Ray tasks on the cluster at "
              "ADDRESS, or on a local Ray instance of --workers CPUs without one (the ray "
              "extra); the rows are the same as with processes")
@click.option("--quiet", is_flag=True, help="no progress line on stderr")
def sweep(study_path, out, workers, resume, ray_address, quiet) -> None:
    """Solve every point of a study (a grid or list of what-ifs, docs/studies.md)."""
    study = guard(lambda: load_study(study_path))
    folder = Path(out)

    def show(p: Progress, row: dict) -> None:
        best = f"{p.best:,.0f} tok/s/GPU" if p.best else "none yet"
        left = p.left_s()
        eta = f"{left:.0f} s left" if left is not None else ""
        click.echo(f"\rpoints {p.done}/{p.total}  infeasible {p.infeasible}  failed "
                   f"{p.failed}  best {best}  {eta}   ", err=True, nl=p.done == p.total)

    rows = guard(lambda: run_study(study, folder, workers, resume,
                                   None if quiet else show, ray=ray_address))
    rows, paths = guard(lambda: finish(rows, study, folder))
    if plots.missing():
        click.echo(plots.EXTRA_LINE, err=True)
    solved = sum(r["status"] == "solved" for r in rows)
    click.echo(f"{len(rows)} points ({solved} solved): {', '.join(str(p) for p in paths)}")
    sys.exit(0)
