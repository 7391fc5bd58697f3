"""The command line, a thin shell over `autopar.api`: one module per command (`solve`,
`check`, `frontier`, `export`, `place`, `calibrate`, `sweep`, `scale`, `trace`,
`explain`, `plot`), the options they share
(`options`), how a command runs (`run`: one-line errors, signals, progress). `main` is
the `autopar` entry point."""

from . import calibrate, check, export, frontier, place, scale, solve, sweep  # noqa: F401, I001
from . import explain, plot, trace  # noqa: F401
from .app import main

__all__ = ["main"]
