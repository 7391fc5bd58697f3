"""`autopar recommend`: the fewest whole nodes of each GPU type that meet a throughput or
serving target, the layout there, the runner-up type, and cost against throughput."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..sweep import plots
from ..sweep.cost import cost_key
from ..sweep.report import document, text, write
from ..sweep.sizing import recommend as run_recommend
from ..sweep.target import parse_target
from . import options as opt
from .app import main
from .run import EXIT_INFEASIBLE, guard


@main.command(epilog=opt.epilog("recommend"))
@click.option("--model", "model_path", required=True, type=click.Path(),
              help="model YAML (with its workload), HF config.json or checkpoint folder")
@click.option("--hw", "hw_path", default=None, type=click.Path(dir_okay=False),
              help="hardware YAML: its nodes and inter-node link (default: nodes of 8 of the "
                   "first --gpu type, its NVLink, one 400 Gb/s NIC per GPU)")
@click.option("--target", required=True,
              help="KEY=VALUE pairs: one of tokens_per_s, tokens_per_day (training, or a "
                   "serving workload's output tokens), requests_per_s (serving); serving "
                   "limits ttft_ms, tpot_ms. E.g. 'requests_per_s=150,tpot_ms=50'")
@opt.latency_targets
@click.option("--gpu", "gpu_types", default=None,
              help="GPU types to compare, e.g. H100,H200 (catalogue names or a unique "
                   "prefix; default: the hardware file's); each on the file's nodes and "
                   "inter-node link, with its own NVLink bandwidth")
@click.option("--price", "prices", default=None,
              help="US$ per GPU-hour by type, e.g. H100=2.5,H200=3.2 (your prices: autopar "
                   "keeps none); adds US$ per million tokens and ranks by deployment cost")
@click.option("--max-nodes", type=click.IntRange(1, 100_000), default=32, show_default=True,
              help="the largest size tried per GPU type")
@click.option("--time-limit", "time_limit", type=click.FloatRange(0.01, 3600), default=10.0,
              show_default=True, help="seconds per size solved")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="GPU types searched at once, in processes (each solve single-threaded)")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="folder for recommend.json / .md, the chosen plans and cost.png")
@click.option("--json", "as_json", is_flag=True, help="print the answer as JSON")
@opt.framework
def recommend(model_path, hw_path, target, ttft_ms, tpot_ms, gpu_types, prices, max_nodes,
              time_limit, workers, out, as_json, framework) -> None:
    """The fewest GPUs (whole nodes) and the layout that meet a target, per GPU type.

    Sizes double from one node until one meets the target, then bisect; the answer's
    one-node-fewer size is always solved and shown failing (docs/studies.md)."""
    t = guard(lambda: parse_target(target, "--target", ttft_ms, tpot_ms))
    rec = guard(lambda: run_recommend(model_path, hw_path, t, gpu_types, prices, max_nodes,
                                      time_limit, workers, framework=framework))
    title = f"{Path(model_path).stem} on {Path(hw_path).stem if hw_path else 'default nodes'}"
    click.echo(json.dumps(document(rec), indent=1) if as_json else text(rec))
    if out:
        folder = Path(out)
        paths = guard(lambda: write(rec, folder, title))
        if plots.missing():
            click.echo(plots.EXTRA_LINE, err=True)
        else:
            png = plots.cost_png(rec.rows, folder / "cost.png",
                                 f"{title}: cost against throughput (prices as given)",
                                 cost_key(rec.rows), plots.tokens_label(rec.rows))
            paths += [png] if png else []
        if not as_json:
            click.echo("written: " + ", ".join(str(p) for p in paths[:2] + paths[-1:]))
    sys.exit(0 if rec.met else EXIT_INFEASIBLE)
