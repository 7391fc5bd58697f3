"""`autopar scale`: the plan at each GPU count, throughput and scaling efficiency."""

from __future__ import annotations

from pathlib import Path

import click

from ..sweep import plots, run_study, write_summary
from ..sweep.scale import efficiencies, parse_sizes, plot, scale_study
from . import options as opt
from .app import main
from .run import guard


@main.command(epilog=opt.epilog("scale"))
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="model file (its workload is the one scaled)")
@click.option("--hw", "hw_path", required=True, type=click.Path(dir_okay=False),
              help="hardware file: its GPU, links and GPUs per node; nodes are varied")
@click.option("--gpus", required=True, help="GPU counts, e.g. 8,16,32 (whole nodes)")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="folder for the points, plans, summary and scaling.png")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="worker processes (each solve single-threaded, seed 0)")
@click.option("--time-limit", "time_limit", type=float, default=10.0, show_default=True,
              help="seconds per point")
@click.option("--resume", is_flag=True, help="finish a scaling run in --out")
def scale(model_path, hw_path, gpus, out, workers, time_limit, resume) -> None:
    """Throughput, per-GPU throughput and scaling efficiency against GPU count."""
    study = guard(lambda: scale_study(model_path, hw_path, parse_sizes(gpus),
                                      time_limit_s=time_limit))
    folder = Path(out)
    rows = efficiencies(guard(lambda: run_study(study, folder, workers, resume)))
    write_summary(rows, folder, study.name)
    png = plot(rows, folder / "scaling.png", study.name)
    if plots.missing():
        click.echo(plots.EXTRA_LINE, err=True)
    for r in rows:
        eff = r["scaling_efficiency"]
        line = (f"{r['gpus']:>6} GPUs  {r['status']:<10} "
                + (f"{r['throughput_tokens_per_s']:>14,.0f} tok/s  "
                   f"{r['tokens_per_s_per_gpu']:>9,.0f} /GPU  {eff:6.1%}  {r['layout']}"
                   if r["status"] == "solved" else r.get("reason", "")))
        click.echo(line)
    click.echo(f"table: {folder / 'summary.md'}" + (f", plot: {png}" if png else ""))
