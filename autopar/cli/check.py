"""`autopar check`: recompute a plan from its inputs, independently of the search."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..spec import read_data
from . import options as opt
from .app import main
from .run import guard


@main.command(epilog=opt.epilog("check"))
@click.argument("plan_path", metavar="PLAN.json", type=click.Path(dir_okay=False))
@click.option("--hw", "hw_path", type=click.Path(dir_okay=False), default=None,
              help="hardware YAML (default: the plan's inputs)")
@click.option("--model", "model_path", type=click.Path(), default=None,
              help="model YAML, HF config.json or checkpoint folder (default: the plan's "
                   "inputs)")
@click.option("--json", "as_json", is_flag=True, help="print the findings as JSON")
@click.option("--framework", default=None, metavar="NAME",
              help="also report each rule of this framework the plan breaks: megatron, "
                   "torchtitan, deepspeed, vllm, sglang, trtllm (default: the framework the "
                   "plan records, if any)")
def check(plan_path, hw_path, model_path, as_json, framework) -> None:
    """Recompute PLAN.json from its inputs and list every inconsistency."""
    import json

    from ..check.verify import check_plan, exit_code, format_findings

    def run():
        return check_plan(read_data(plan_path), model_path, hw_path,
                          base_dir=Path(plan_path).parent, source=plan_path,
                          framework=framework)

    findings = guard(run)
    if as_json:
        errors = sum(x.severity == "error" for x in findings)
        click.echo(json.dumps({"plan": plan_path, "errors": errors,
                               "warnings": len(findings) - errors,
                               "findings": [x.to_dict() for x in findings]}, indent=1))
    else:
        click.echo(format_findings(findings))
    sys.exit(exit_code(findings))

