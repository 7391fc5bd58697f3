"""`autopar plot`: pictures of a plan (the `plot` extra)."""

from __future__ import annotations

import click

from . import options as opt
from .app import main
from .run import guard


@main.command(epilog=opt.epilog("plot"))
@click.argument("plan_path", metavar="PLAN.json", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=".",
              show_default=True, help="folder for memory.png, gantt.png and breakdown.png")
@click.option("--stem", default=None, help="prefix of the file names (STEM-memory.png, ...)")
def plot(plan_path, out_dir, stem) -> None:
    """Draw PLAN.json: memory per GPU pattern (weights, gradients, optimizer, activations, KV
    cache, headroom), the step's Gantt chart and the per-component time breakdown."""
    from ..view.entry import plot as api_plot

    for path in guard(lambda: api_plot(plan_path, out_dir, stem)):
        click.echo(str(path))
