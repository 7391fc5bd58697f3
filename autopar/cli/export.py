"""`autopar export`: a serving plan's vLLM, SGLang or TensorRT-LLM launch configuration, or a
training plan's Megatron-LM flags or torchtitan job config."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError
from ..export import TARGETS, KindError, export_target
from ..plan import read_plan
from . import options as opt
from .app import main
from .run import guard


@main.command(epilog=opt.epilog("export"))
@click.argument("plan_path", metavar="PLAN.json", type=click.Path(dir_okay=False))
@click.option("--to", "engine", required=True, type=click.Choice(list(TARGETS)),
              help="the serving engine (vllm, sglang, trtllm) or, for training plans, megatron or "
              "torchtitan")
@click.option("--format", "fmt", type=click.Choice(["command", "yaml", "toml"]),
              default="command", show_default=True,
              help="a command line, or the engine's config file alone: YAML (vLLM, SGLang, "
              "TensorRT-LLM; Megatron's flags), TOML (torchtitan)")
@click.option("--model-path", default=None,
              help="model name or path for the engine (default: the plan's model name)")
def export(plan_path, engine, fmt, model_path) -> None:
    """Print the launch configuration of a plan for a serving engine or training framework."""
    plan = guard(lambda: read_plan(plan_path))
    text = guard(lambda: _export(plan, engine, fmt, model_path, plan_path))
    click.echo(text.rstrip("\n"))


def _export(plan, engine, fmt, model_path, source) -> str:
    try:
        if isinstance(plan, dict) and "mixed_groups" in plan:  # one job over GPU groups
            from ..export.mixed import mixed_export

            return mixed_export(plan, engine, fmt)
        return export_target(plan, engine, fmt, model_path)
    except KindError as exc:
        raise InputError(str(Path(source)), "", str(exc)) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(str(Path(source)), "", f"not an autopar plan: missing {exc}") from None

