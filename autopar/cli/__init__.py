"""The command line, a thin shell over `autopar.api`: one module per command (`solve`,
`check`, `frontier`, `export`, `place`, `calibrate`, `sweep`, `scale`, `recommend`, `verify`,
`trace`, `explain`, `plot`), the options they share (`options`), how a command runs (`run`:
one-line errors, signals, progress). `main` is the `autopar` entry point."""

from . import (  # noqa: F401, I001
    calibrate, check, explain, export, frontier, place, plot, recommend, scale, solve, sweep,
    trace, verify)
from .app import main

__all__ = ["main"]
