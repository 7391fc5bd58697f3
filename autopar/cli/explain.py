"""`autopar explain`: why a plan's layout won, what binds it, what would change it."""

from __future__ import annotations

import click

from . import options as opt
from .app import main
from .run import guard


@main.command(epilog=opt.epilog("explain"))
@click.argument("plan_path", metavar="PLAN.json", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print the explanation as JSON")
def explain(plan_path, as_json) -> None:
    """The runner-up layouts of PLAN.json and what each loses on, the binding constraints,
    and the step time's sensitivity to each input (+/-10 %, and where the choice flips)."""
    import json

    from ..view.entry import explain as api_explain
    from ..view.explain import format_explain

    d = guard(lambda: api_explain(plan_path))
    click.echo(json.dumps(d, indent=1) if as_json else format_explain(d))
