"""Command line: a thin shell over `autopar.api`. Errors are one line and a non-zero exit."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from .. import api
from ..cost.calibration import parse_calibration
from ..errors import AutoparError, InputError
from ..plan import write_atomic
from ..plan.files import check_target, default_plan_path, workload_label
from ..plan.report import summary
from ..serve.plan import wants_serving
from ..spec import load_hardware, load_model, parse_workload, read_data
from . import options as opt
from .serving_flags import apply_targets, serving_options, serving_summary, solve_kwargs

EXIT_INFEASIBLE = 3


def _workload_from_flags(base, source: str, kind, batch, seq_len, phase, input_len, output_len,
                         expert_load, spare_slots, precision=None):
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
                        output_len=base.output_len, ttft_ms=base.ttft_ms,
                        tpot_ms=base.tpot_ms)
        data.update(expert_load=base.expert_load, spare_slots=base.spare_slots,
                    causal=base.causal)
        if base.precision:
            data["precision"] = base.precision
    if kind:
        if base is not None and kind != base.kind:
            data = {"expert_load": data.get("expert_load", "uniform")}
        data["kind"] = kind
    flags = {"seq_len": seq_len, "phase": phase, "input_len": input_len,
             "output_len": output_len, "expert_load": expert_load, "spare_slots": spare_slots,
             "precision": precision}
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


@main.command(epilog=opt.epilog("solve"))
@opt.model_hw
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="plan JSON path (default results/<model>-<hw>-<workload>.json, workload: "
                   "training, prefill, decode or serving)")
@click.option("--json", "as_json", is_flag=True, help="print the plan JSON to stdout")
@click.option("--kind", type=click.Choice(["training", "inference"]), default=None,
              help="workload kind (default: the model file's workload section)")
@click.option("--batch", type=click.IntRange(1, 10_000_000), default=None,
              help="global batch (training) or concurrent sequences (inference)")
@click.option("--seq-len", type=click.IntRange(1, 10_000_000), default=None,
              help="training: tokens per sample")
@click.option("--phase", type=click.Choice(["prefill", "decode", "both"]), default=None,
              help="inference: one prefill, one decode step, or whole requests (serving)")
@opt.request_lengths
@click.option("--spare-slots", type=click.IntRange(0, 1024), default=None,
              help="extra expert slots per GPU for replicas of hot experts (default: searched "
                   "under skew)")
@opt.degree_pins
@click.option("--micro-batch", type=click.IntRange(1, 10_000_000), default=None,
              help="pin the micro-batch size (samples)")
@click.option("--recompute", type=click.Choice(["none", "selective", "full"]), default=None,
              help="pin activation recompute (selective: the attention core only)")
@click.option("--zero", type=click.IntRange(0, 3), default=None,
              help="pin the ZeRO stage (1 optimizer states, 2 + gradients, 3 + weights)")
@click.option("--sequence-parallel/--no-sequence-parallel", default=None,
              help="pin Megatron sequence parallelism on or off")
@click.option("--num-micro-batches", type=click.IntRange(1, 10_000_000), default=None,
              help="gradient-accumulation steps per replica")
@click.option("--virtual-stages", type=click.IntRange(1, 10_000), default=None,
              help="interleaved 1F1B: model chunks per pipeline stage")
@click.option("--overlap-grad-reduce/--no-overlap-grad-reduce", default=None,
              help="DP gradient reduction behind the backward (default on)")
@click.option("--tp-comm-overlap/--no-tp-comm-overlap", default=None,
              help="TP collectives behind the GEMMs (needs sequence parallel; default off)")
@click.option("--flash-attention/--no-flash-attention", default=True, show_default=True,
              help="fused attention kernel; off: unfused masked softmax (software switch)")
@click.option("--async-tp-allreduce/--no-async-tp-allreduce", default=True, show_default=True,
              help="backward TP all-reduce behind the weight-gradient GEMM (Megatron since "
                   "late 2021; software switch)")
@click.option("--fused-grad-accumulation/--no-fused-grad-accumulation", default=True,
              show_default=True, help="gradient accumulation inside the weight-gradient GEMM "
                                      "(Megatron since 2022; software switch)")
@click.option("--precision", type=click.Choice(["bf16", "fp16", "fp8"]), default=None,
              help="GEMM precision (fp8 where the GPU has fp8 tensor cores)")
@opt.calibration
@opt.time_limit
@opt.solver_controls
@click.option("--quiet", is_flag=True, help="no table and no progress on the terminal")
@serving_options
def solve(model_path, hw_path, out, as_json, kind, batch, seq_len, phase, input_len,
          output_len, expert_load, spare_slots, tp, pp, dp, ep, etp, micro_batch, recompute,
          zero, sequence_parallel, num_micro_batches, virtual_stages, overlap_grad_reduce,
          tp_comm_overlap, flash_attention, async_tp_allreduce, fused_grad_accumulation,
          precision, calibration, time_limit, seed, workers, quiet, **serving) -> None:
    """Find the fastest layout of MODEL on HW and write its deployment plan."""

    def run():
        mf = load_model(model_path)
        wl = _workload_from_flags(mf.workload, "command line", kind, batch, seq_len, phase,
                                  input_len, output_len, expert_load, spare_slots, precision)
        wl = apply_targets(wl, serving)
        if wl is None:
            raise InputError(model_path, "workload",
                             "no workload section; pass --kind and --batch/--seq-len etc.")
        pins = {k: v for k, v in dict(tp=tp, pp=pp, dp=dp, ep=ep, etp=etp,
                                      micro_batch=micro_batch, recompute=recompute, zero=zero,
                                      sequence_parallel=sequence_parallel,
                                      num_micro_batches=num_micro_batches,
                                      virtual_stages=virtual_stages,
                                      overlap_grad_reduce=overlap_grad_reduce,
                                      overlap_tp_comm=tp_comm_overlap).items()
                if v is not None}
        calib = parse_calibration(read_data(calibration), calibration) if calibration else None
        hw = load_hardware(hw_path)
        target = None
        if out or not as_json:  # refuse a bad destination before the search, not after it
            label = workload_label(wl.kind, wl.phase, wants_serving(wl) or any(
                solve_kwargs(serving).values()))
            target = check_target(out or default_plan_path(mf.model.name, hw.name, label))
        plan = api.solve(replace(mf, workload=wl), hw, pins=pins, time_limit_s=time_limit,
                         seed=seed, workers=workers, calibration=calib, progress=progress,
                         flash_attention=flash_attention, async_tp_allreduce=async_tp_allreduce,
                         fused_grad_accumulation=fused_grad_accumulation,
                         **solve_kwargs(serving))
        return plan, target, plan.to_json()

    progress = None if quiet else Progress()
    with Interruptible() as stop:
        plan, path, text = _guard(lambda: stop.run(run, progress))
        if progress:
            progress("writing the plan")
            progress.done()
        stop.writing = (path, text)
        if as_json:
            click.echo(text)
            if path:
                _guard(lambda: write_atomic(path, text))
            return
        _guard(lambda: write_atomic(path, text))
        if not quiet:
            click.echo(summary(plan.data))
            if "serving" in plan.data:
                click.echo(serving_summary(plan.data))
        click.echo(f"plan written to {path}", err=True)


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: a BaseException, so no `except Exception` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Interruptible:
    """SIGINT / SIGTERM stop the whole run: exit 128 + signal (130 / 143), one line, nothing
    written over the output (a plan is only renamed into place at the end, and write_atomic
    removes its temp file when interrupted).

    The work runs in a worker thread so that the main thread, which Python runs signal
    handlers on, stays free to receive them while CP-SAT solves (the solvers are told not to
    catch SIGINT themselves, which would end only the current solve and reset the handler).
    The handlers are installed for the `with` block only (and only on the main thread)."""

    def __init__(self) -> None:
        self.saved: dict[int, Any] = {}
        self.done = threading.Event()  # not Thread.is_alive(): an interrupted join() makes
        self.busy = False              # it report a running thread as stopped (bpo-45274)
        self.writing: tuple[Path | None, str] | None = None  # (path, text) once writing

    def __enter__(self) -> Interruptible:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        for sig in self.saved:  # a second signal must not interrupt the clean exit
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    def __exit__(self, kind, exc, tb) -> bool:
        for sig, old in self.saved.items():
            signal.signal(sig, old)
        if not isinstance(exc, Interrupted):
            return False
        click.echo(f"autopar: interrupted by {exc}; {self._written()}", err=True)
        code = 128 + exc.signum
        if self.busy and not self.done.is_set():
            sys.stdout.flush()  # the search is still running (maybe in C++): leave without it
            sys.stderr.flush()
            os._exit(code)
        sys.exit(code)

    def _written(self) -> str:
        """What the output holds now: a signal after the rename finds the plan in place."""
        path, text = self.writing or (None, "")
        try:
            whole = path is not None and Path(path).read_text(encoding="utf-8") == text + "\n"
        except (OSError, UnicodeDecodeError):
            whole = False
        return f"the plan was already written to {path}" if whole else "nothing written"

    def run(self, fn: Callable[[], Any], progress: Progress | None = None) -> Any:
        """fn() on a worker thread; the main thread waits, prints the progress ticker and
        takes the signals. fn's exception is raised here."""
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["value"] = fn()
            except BaseException as e:  # handed to the main thread
                box["error"] = e
            finally:
                self.done.set()

        self.busy = True
        self.done.clear()
        threading.Thread(target=work, name="autopar-solve", daemon=True).start()
        while not self.done.wait(0.2):
            if progress:
                progress.tick()
        if "error" in box:
            raise box["error"]
        return box["value"]


class Progress:
    """Progress on stderr for long runs only: silent for the first second, then at most one
    line a second (rewritten in place on a terminal). Calls set the current phase (and print
    when a line is due); `tick()`, which the waiting main thread calls several times a
    second, prints the phase again when nothing else did, so a long CP-SAT call or plan
    build is never silent for more than about a second."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.start = time.monotonic()
        self.last = self.start
        self.every = every_s
        self.shown = False
        self.tty = sys.stderr.isatty()
        self.phase = "starting"
        self.lock = threading.Lock()  # called from the worker, ticked from the main thread

    def __call__(self, msg: str) -> None:
        self.phase = msg
        self.tick()

    def tick(self) -> None:
        with self.lock:
            now = time.monotonic()
            if now - self.last < self.every:
                return
            self.last = now
            self.shown = True
            line = f"[{now - self.start:6.1f} s] {self.phase}"
            click.echo(f"\r{line}\x1b[K" if self.tty else line, err=True, nl=not self.tty)

    def done(self) -> None:
        if self.shown and self.tty:
            click.echo("", err=True)


@main.command(epilog=opt.epilog("check"))
@click.argument("plan_path", metavar="PLAN.json", type=click.Path(dir_okay=False))
@click.option("--hw", "hw_path", type=click.Path(dir_okay=False), default=None,
              help="hardware YAML (default: the plan's inputs)")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None,
              help="model YAML or HF config.json (default: the plan's inputs)")
@click.option("--json", "as_json", is_flag=True, help="print the findings as JSON")
def check(plan_path, hw_path, model_path, as_json) -> None:
    """Recompute PLAN.json from its inputs and list every inconsistency."""
    import json

    from ..check.verify import check_plan, exit_code, format_findings

    def run():
        return check_plan(read_data(plan_path), model_path, hw_path,
                          base_dir=Path(plan_path).parent, source=plan_path)

    findings = _guard(run)
    if as_json:
        errors = sum(x.severity == "error" for x in findings)
        click.echo(json.dumps({"plan": plan_path, "errors": errors,
                               "warnings": len(findings) - errors,
                               "findings": [x.to_dict() for x in findings]}, indent=1))
    else:
        click.echo(format_findings(findings))
    sys.exit(exit_code(findings))


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


from . import serving as cli_serving  # noqa: E402,F401  (registers `frontier` and `export`)

if __name__ == "__main__":  # `python -m autopar.cli`: run the package's copy, which has
    from autopar.cli.main import main as _main  # every command registered (`python -m autopar`)

    _main(prog_name="autopar")
