"""`autopar frontier`: tokens/s per GPU against tokens/s per user over every serving
layout and load, as a table, JSON and PNG."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import click

from ..api import make_problem
from ..errors import InfeasibleError, InputError
from ..plan import write_atomic
from ..plan.files import check_target, require_extra
from ..search import SearchOptions
from ..search.deadline import Deadline
from ..serve.disagg import disagg_search
from ..serve.evaluate import Evaluator
from ..serve.frontier import Targets, serving_search
from ..serve.plan import why_not_served
from ..serve.report import frontier_document, frontier_png, frontier_table
from ..spec import HardwareSpec, load_hardware, load_model
from ..spec.files import load_any_hardware
from ..spec.frameworks import load_framework
from ..spec.groups import MixedHardware, paced_by_slowest, refuse_mixed
from . import options as opt
from .app import main
from .run import Interruptible, guard
from .serving_flags import apply_scheduler, scheduler_options


@main.command(epilog=opt.epilog("frontier"))
@opt.model_hw
@click.option("--json", "as_json", is_flag=True, help="print the frontier JSON to stdout")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="write the frontier JSON here")
@click.option("--png", type=click.Path(dir_okay=False), default=None,
              help="plot the frontier to this PNG (needs the plot extra)")
@click.option("--phase", type=click.Choice(["both", "decode", "prefill"]), default="both",
              show_default=True, help="what one frontier point is: whole requests, one decode "
                                      "step or one prefill")
@opt.request_lengths
@opt.latency_targets
@scheduler_options
@click.option("--disaggregate", is_flag=True, help="add the disaggregated frontier")
@opt.decode_hw
@opt.spare_slots
@opt.placement_budget
@opt.degree_pins
@opt.framework
@opt.calibration
@opt.time_limit
@opt.solver_controls
def frontier(model_path, hw_path, as_json, out, png, phase, input_len, output_len,
             expert_load, ttft_ms, tpot_ms, token_budget, two_batch_overlap, disaggregate,
             decode_hw, spare_slots, placement_budget, tp, pp, dp, ep, etp, framework,
             calibration, time_limit, seed, workers) -> None:
    """Tokens/s per GPU against tokens/s per user for every serving layout and load.

    --time-limit bounds the whole run; a search cut short gives the frontier of the layouts
    it costed (its JSON says `time_limit_reached`)."""
    deadline = Deadline.after(time_limit)

    def run():
        if png:  # say what is missing or unwritable before the search, not after it
            require_extra("matplotlib", "plot", "--png")
            check_target(png, "--png")
        if out:
            check_target(out)
        mf = load_model(model_path)
        base = mf.workload if mf.workload and mf.workload.kind == "inference" else None
        wl = opt.workload_from_flags(base, "command line", "inference",
                                  None if base else 1, None, phase, input_len,
                                  output_len, expert_load, spare_slots)
        wl = replace(wl, ttft_ms=wl.ttft_ms if ttft_ms is None else ttft_ms,
                     tpot_ms=wl.tpot_ms if tpot_ms is None else tpot_ms)
        wl = apply_scheduler(wl, token_budget, two_batch_overlap)
        calib = opt.read_calibration(calibration)
        hw, paced = frontier_hardware(hw_path, mf.model.dtype,
                                      calib is not None or bool(disaggregate or decode_hw))
        p = make_problem(replace(mf, workload=wl), hw, calibration=calib)
        pins = {k: v for k, v in dict(tp=tp, pp=pp, dp=dp, ep=ep, etp=etp).items()
                if v is not None}
        fw = load_framework(framework)
        if fw is not None:
            fw.check_kind(p.workload.kind)
        opts = SearchOptions(pins=pins, time_limit_s=time_limit, seed=seed, workers=workers,
                             framework=framework, placement_budget_s=placement_budget)
        targets = Targets(wl.ttft_ms, wl.tpot_ms)
        if (disaggregate or decode_hw) and phase != "both":
            raise InputError("command line", "--phase", "disaggregation needs phase both")
        dhw = load_hardware(decode_hw) if decode_hw else None
        split = disaggregate or decode_hw  # the aggregated search leaves the pools half
        res = serving_search(p, opts, targets, None, Evaluator(p, opts),
                             deadline.fraction(0.5 if split else 1.0), deadline.graced())
        if res.best is None:  # the answer, exit code and advice of `solve`
            raise InfeasibleError(*why_not_served(p, opts, res, targets, None, deadline))
        dis = disagg_search(p, opts, targets, dhw, deadline) if split else None
        return p, res, dis, paced

    with Interruptible() as stop:  # SIGINT / SIGTERM: exit 130 / 143, nothing written
        p, res, dis, paced = guard(lambda: stop.run(run))
        doc = frontier_document(p, res, dis)
        if out:
            text = json.dumps(doc, indent=1, allow_nan=False)
            stop.writing = (Path(out), text)
            guard(lambda: write_atomic(out, text))
        if png:
            guard(lambda: frontier_png(res, png, f"{p.model.name} on {p.hw.name}", dis))
        if as_json:
            click.echo(json.dumps(doc, indent=1))
        else:
            click.echo(frontier_table(res, dis))
            if paced:  # a mixed file: say what the points are priced on
                click.echo(f"on {p.hw.name}: every GPU priced as the slowest type, so each "
                           "point holds on every group (autopar solve adds the groups apart)")


def frontier_hardware(path: str, dtype: str, one_type_only: bool
                      ) -> tuple[HardwareSpec, bool]:
    """The hardware the frontier is drawn on, and whether it is a mixed file's: a one-type
    file as it is; a mixed file as the cluster paced by its slowest type (the uniform serving
    plan's, `serve.mixed`), whose every point holds on every group. A calibration or the
    pools refuse a mixed file."""
    hw = load_any_hardware(path)
    if not isinstance(hw, MixedHardware):
        return hw, False
    paced = paced_by_slowest(hw, dtype) if not one_type_only else None
    if paced is None:
        raise refuse_mixed(hw, "a calibration, --disaggregate or --decode-hw on the frontier")
    return paced, True
