"""`autopar export`: a serving plan's vLLM or SGLang launch configuration, or a training
plan's Megatron-LM flags."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError
from ..export import TARGETS, KindError, export_text, megatron_text
from ..plan import read_plan
from . import options as opt
from .app import main
from .run import guard


@main.command(epilog=opt.epilog("export"))
@click.argument("plan_path", metavar="PLAN.json", type=click.Path(dir_okay=False))
@click.option("--to", "engine", required=True, type=click.Choice(list(TARGETS)),
              help="the serving engine (vllm, sglang) or, for training plans, megatron")
@click.option("--format", "fmt", type=click.Choice(["command", "yaml"]), default="command",
              show_default=True, help="a command line, or a YAML file for the engine's --config")
@click.option("--model-path", default=None,
              help="model name or path for the engine (default: the plan's model name)")
def export(plan_path, engine, fmt, model_path) -> None:
    """Print the vLLM / SGLang launch configuration or the Megatron-LM flags of a plan."""
    plan = guard(lambda: read_plan(plan_path))
    text = guard(lambda: _export(plan, engine, fmt, model_path, plan_path))
    click.echo(text.rstrip("\n"))


def _export(plan, engine, fmt, model_path, source) -> str:
    try:
        if engine == "megatron":
            return megatron_text(plan, fmt)
        return export_text(plan, engine, fmt, model_path)
    except KindError as exc:
        raise InputError(str(Path(source)), "", str(exc)) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(str(Path(source)), "", f"not an autopar plan: missing {exc}") from None

