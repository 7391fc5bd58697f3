"""How a command runs: errors as one line and an exit code (`guard`), SIGINT / SIGTERM as
exit 130 / 143 with nothing written (`Interruptible`), and progress on stderr (`Progress`)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import AutoparError

EXIT_INFEASIBLE = 3


def guard(fn):
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

