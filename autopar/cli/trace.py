"""`autopar trace`: the modeled step of a plan as a Chrome trace event file."""

from __future__ import annotations

import click

from . import options as opt
from .app import main
from .run import guard


@main.command(epilog=opt.epilog("trace"))
@click.argument("plan_path", metavar="PLAN.json", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="trace file to write (default: PLAN.trace.json beside the plan)")
def trace(plan_path, out_path) -> None:
    """Write PLAN.json's step as Chrome trace events (open in ui.perfetto.dev or
    chrome://tracing): one process per pipeline stage, compute and communication threads."""
    from ..view.entry import trace as api_trace

    def run():
        return api_trace(plan_path, out_path)

    path, doc = guard(run)
    n = sum(e["ph"] == "X" for e in doc["traceEvents"])
    click.echo(f"{path}: {n} events, step {doc['otherData']['step_time_s']:.6g} s "
               f"({doc['otherData']['layout']})")
