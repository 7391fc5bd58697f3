"""Command line: a thin shell over `autopar.api`. Errors are one line and a non-zero exit."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import click

from . import api
from .calibration import parse_calibration
from .errors import AutoparError, InputError
from .report import summary
from .spec import load_model, parse_workload, read_data

EXIT_INFEASIBLE = 3


def _workload_from_flags(base, source: str, kind, batch, seq_len, phase, input_len, output_len,
                         expert_load, spare_slots):
    data = {}
    if base is not None:
        data = {"kind": base.kind}
        if base.kind == "training":
            data.update(global_batch=base.batch, seq_len=base.seq_len,
                        optimizer={"grad_dtype": base.grad_dtype,
                                   "master_dtype": base.master_dtype,
                                   "state_dtype": base.state_dtype})
        else:
            data.update(batch=base.batch, phase=base.phase, input_len=base.input_len,
                        output_len=base.output_len)
        data.update(expert_load=base.expert_load, spare_slots=base.spare_slots,
                    causal=base.causal)
    if kind:
        if base is not None and kind != base.kind:
            data = {"expert_load": data.get("expert_load", "uniform")}
        data["kind"] = kind
    flags = {"seq_len": seq_len, "phase": phase, "input_len": input_len,
             "output_len": output_len, "expert_load": expert_load, "spare_slots": spare_slots}
    if batch is not None:
        data["global_batch" if data.get("kind") == "training" else "batch"] = batch
    data.update({k: v for k, v in flags.items() if v is not None})
    if not data:
        return None
    if data.get("kind") != "training":
        data.pop("optimizer", None)
    return parse_workload(data, source)


@click.group()
@click.version_option(package_name="autopar")
def main() -> None:
    """autopar: auto-parallelism search for dense and MoE transformers."""


@main.command()
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="model YAML (with an optional workload section) or HF config.json")
@click.option("--hw", "hw_path", required=True, type=click.Path(dir_okay=False),
              help="hardware YAML")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="plan JSON path (default results/<model>-<hw>.json)")
@click.option("--json", "as_json", is_flag=True, help="print the plan JSON to stdout")
@click.option("--kind", type=click.Choice(["training", "inference"]), default=None)
@click.option("--batch", type=click.IntRange(1, 10_000_000), default=None,
              help="global batch (training) or concurrent sequences (inference)")
@click.option("--seq-len", type=click.IntRange(1, 10_000_000), default=None)
@click.option("--phase", type=click.Choice(["prefill", "decode"]), default=None)
@click.option("--input-len", type=click.IntRange(1, 10_000_000), default=None)
@click.option("--output-len", type=click.IntRange(0, 10_000_000), default=None)
@click.option("--expert-load", default=None, help="uniform | zipf:S[:SEED] | FILE")
@click.option("--spare-slots", type=click.IntRange(0, 1024), default=None)
@click.option("--tp", type=click.IntRange(1, 100_000), default=None)
@click.option("--pp", type=click.IntRange(1, 100_000), default=None)
@click.option("--dp", type=click.IntRange(1, 100_000), default=None)
@click.option("--ep", type=click.IntRange(1, 100_000), default=None)
@click.option("--etp", type=click.IntRange(1, 100_000), default=None)
@click.option("--micro-batch", type=click.IntRange(1, 10_000_000), default=None)
@click.option("--recompute", type=click.Choice(["none", "selective", "full"]), default=None)
@click.option("--zero", type=click.IntRange(0, 3), default=None)
@click.option("--sequence-parallel/--no-sequence-parallel", default=None)
@click.option("--calibration", type=click.Path(dir_okay=False), default=None,
              help="YAML of measured efficiencies overriding the defaults")
@click.option("--time-limit", type=click.FloatRange(0.01, 86_400), default=10.0,
              show_default=True, help="seconds for the whole search")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True)
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True)
@click.option("--quiet", is_flag=True, help="no table on the terminal")
def solve(model_path, hw_path, out, as_json, kind, batch, seq_len, phase, input_len,
          output_len, expert_load, spare_slots, tp, pp, dp, ep, etp, micro_batch, recompute,
          zero, sequence_parallel, calibration, time_limit, seed, workers, quiet) -> None:
    """Find the fastest layout of MODEL on HW and write its deployment plan."""
    def run():
        mf = load_model(model_path)
        wl = _workload_from_flags(mf.workload, "command line", kind, batch, seq_len, phase,
                                  input_len, output_len, expert_load, spare_slots)
        if wl is None:
            raise InputError(model_path, "workload",
                             "no workload section; pass --kind and --batch/--seq-len etc.")
        pins = {k: v for k, v in dict(tp=tp, pp=pp, dp=dp, ep=ep, etp=etp,
                                      micro_batch=micro_batch, recompute=recompute, zero=zero,
                                      sequence_parallel=sequence_parallel).items()
                if v is not None}
        calib = parse_calibration(read_data(calibration), calibration) if calibration else None
        progress = None
        if not quiet and not as_json and sys.stderr.isatty():
            def progress(msg: str) -> None:
                click.echo(f"\r{msg}", err=True, nl=False)
        plan = api.solve(replace(mf, workload=wl), hw_path, pins=pins, time_limit_s=time_limit,
                         seed=seed, workers=workers, calibration=calib, progress=progress)
        if progress:
            click.echo("", err=True)
        return plan

    plan = _guard(run)
    if as_json:
        click.echo(plan.to_json())
        if out:
            plan.write(out)
        return
    path = Path(out) if out else Path("results") / f"{plan.data['name']}.json"
    _guard(lambda: plan.write(path))
    if not quiet:
        click.echo(summary(plan.data))
    click.echo(f"plan written to {path}", err=True)


def _guard(fn):
    """Run fn; turn autopar errors (and file-system errors) into one line and an exit code."""
    try:
        return fn()
    except AutoparError as exc:
        click.echo(f"autopar: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        click.echo(f"autopar: error: {exc.filename or ''}: {exc.strerror or exc}", err=True)
        sys.exit(2)
    except Exception as exc:  # a bug: one line, the traceback only on request
        if os.environ.get("AUTOPAR_DEBUG"):
            raise
        click.echo(f"autopar: internal error: {type(exc).__name__}: {exc} "
                   "(set AUTOPAR_DEBUG=1 for the traceback)", err=True)
        sys.exit(70)


if __name__ == "__main__":
    main()
