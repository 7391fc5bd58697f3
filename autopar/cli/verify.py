"""`autopar verify`: run a plan on a shrunken model over CPU processes (docs/verify.md)."""

from __future__ import annotations

import sys

import click

from . import options as opt
from .app import main
from .run import guard


@main.command(epilog=opt.epilog("verify"))
@click.argument("plan_path", metavar="PLAN.json", type=click.Path(dir_okay=False))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**31 - 1),
              help="seed of the small model's weights and batch")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def verify(plan_path, seed, as_json) -> None:
    """Run PLAN.json: a small model with the plan's structure, sharded as the plan places
    it over one CPU process per GPU (torch.distributed, gloo), forward (and backward for
    training) compared with the same model on one process. Needs the `verify` extra."""
    import json

    from ..api import verify_plan

    report = guard(lambda: verify_plan(plan_path, seed=seed))
    click.echo(json.dumps(report.to_dict(), indent=1) if as_json else report.text())
    sys.exit(0 if report.passed else 1)
