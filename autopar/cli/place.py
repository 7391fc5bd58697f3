"""`autopar place`: the expert maps an engine loads (SGLang, vLLM, TensorRT-LLM) from a
measured per-layer expert load file, and whether installing them is worth a rebalance."""

from __future__ import annotations

import json

import click

from .. import api
from ..export.placement_maps import MAP_ENGINES
from ..plan import write_atomic
from ..plan.files import check_target
from . import options as opt
from .app import main
from .run import Interruptible, guard


@main.command(epilog=opt.epilog("place"))
@click.argument("loads", metavar="LOADS", type=click.Path(dir_okay=False))
@click.option("--ep", type=click.IntRange(1, 100_000), required=True,
              help="expert-parallel GPUs the experts are placed over")
@click.option("--gpus-per-node", type=click.IntRange(1, 100_000), default=None,
              help="GPUs per NVLink domain (default: the --hw file's, else 8)")
@click.option("--spare-slots", type=click.IntRange(0, 1024), default=0, show_default=True,
              help="redundant expert slots per GPU beyond ceil(experts / EP)")
@click.option("--placement-budget", type=float, default=1.0, show_default=True,
              metavar="SECONDS", callback=opt._placement_budget_value,
              help="seconds for all layers: the anytime placement, then CP-SAT in what is "
                   "left (0: anytime only)")
@click.option("--to", "engine", type=click.Choice(list(MAP_ENGINES)), default="sglang",
              show_default=True, help="the engine whose map is written")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="write the engine's map file here (default: inside the JSON on stdout)")
@click.option("--current", type=click.Path(dir_okay=False), default=None,
              help="the placement running now, as a map file of any of the three engines "
                   "(default: the engine's default map)")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None,
              help="model file: expert sizes and FLOPs for the rebalance verdict")
@click.option("--hw", "hw_path", type=click.Path(dir_okay=False), default=None,
              help="hardware file: GPU peak and links for the verdict (default: an H100 "
                   "node with a 400 Gb/s NIC per GPU)")
@click.option("--horizon", type=click.IntRange(1, 10**9), default=3000, show_default=True,
              help="steps the new placement runs before the next rebalance (vLLM's default "
                   "EPLB interval)")
@click.option("--tokens-per-step", type=click.FloatRange(0, 1e15, min_open=True),
              default=None, help="routed tokens (tokens x top-k) per MoE layer per step "
                                 "(default: the file's counts over its recorded passes)")
def place(loads, ep, gpus_per_node, spare_slots, placement_budget, engine, out, current,
          model_path, hw_path, horizon, tokens_per_step) -> None:
    """Place every MoE layer of LOADS and print the result as JSON (stdout); the verdict on
    a rebalance goes to stderr as one line."""
    if out is not None:
        guard(lambda: check_target(out))

    def work():
        return api.place(loads, ep, gpus_per_node, spare_slots, placement_budget, engine,
                         model_path, hw_path, current, horizon, tokens_per_step,
                         out or "FILE")

    with Interruptible() as run:
        res = guard(lambda: run.run(work))
        text, suffix = res.pop("map_text"), res.pop("map_suffix")
        if out is not None:
            guard(lambda: write_atomic(out, text))
            res["map_file"] = out
        else:
            res["map"] = json.loads(text) if suffix == ".json" else text
    click.echo(json.dumps(res, indent=1))
    worst = max(x["max_over_mean"] for x in res["layers"])
    click.echo(f"autopar: placed {len(res['layers'])} MoE layers over EP {ep} in "
               f"{res['placement_s']:.2f} s: max/mean {worst:.4f} at worst", err=True)
    if res["rebalance"]:
        click.echo(f"autopar: {res['rebalance']['verdict']}", err=True)
