"""The `autopar` command group; each command registers itself from its own module."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="autopar")
def main() -> None:
    """autopar: auto-parallelism search for dense and MoE transformers."""
