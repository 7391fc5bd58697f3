"""The command line, a thin shell over `autopar.api`: one module per command (`solve`,
`check`, `frontier`, `export`, `calibrate`, `sweep`), the options they share (`options`), how a
command runs (`run`: one-line errors, signals, progress). `main` is the `autopar` entry
point."""

from . import calibrate, check, export, frontier, solve, sweep  # noqa: F401  (each registers its command)
from .app import main

__all__ = ["main"]
