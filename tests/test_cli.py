"""The command line as a user meets it: every option explained, exit codes in the help,
default output names that do not collide, and --out checked before any work is done."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from autopar.cli import main
from autopar.cli_options import EXIT_CODES


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_option_has_help_and_exit_codes_are_listed(name):
    cmd = main.commands[name]
    bare = [p.opts[0] for p in cmd.params if isinstance(p, click.Option) and not p.help]
    assert not bare, f"{name}: options without help: {bare}"
    out = CliRunner().invoke(main, [name, "--help"], terminal_width=200).output
    assert "Exit codes:" in out
    for code in EXIT_CODES[name].split(";"):
        assert code.split()[0] in out.split("Exit codes:")[1]
