"""Every shell and Python block in README.md and docs/ runs as written, so a README that lies
fails CI. Each document's blocks run in order in a fresh folder holding the project's
`problems/` (later blocks may read what earlier ones wrote, as a reader's would). A command
is expected to exit 0 unless its comment says `exits N`. Two things are left to the suite
itself: `pip install` (the environment under test is already installed) and `pytest` (this
very suite); solves and frontiers get a short `--time-limit` where the block sets none."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from autopar.cost.calibration import parse_calibration

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
SHORT_LIMIT = "2"
# a plain `autopar ...` line (no pipe, redirect, glob or variable) runs in-process through
# click's runner, as the shell would run it, without a fresh interpreter's start-up each
PLAIN = re.compile(r"autopar [^|;&<>`$()*?~\\]*")


def blocks(doc: Path) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(doc.read_text())]


def commands(block: str) -> list[tuple[str, int]]:
    """Logical lines of a shell block (continuations joined), each with its expected exit
    status, after the two substitutions the module docstring names."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        code, _, comment = line.partition("#")
        code = code.strip()
        if not code:
            continue
        code = re.sub(r"^pip install \S+( \S+)* && ", "", code)
        if code.startswith(("pip install", "python -m pytest")):
            continue
        if re.match(r"autopar (solve|frontier)\b", code) and "--time-limit" not in code:
            code += f" --time-limit {SHORT_LIMIT}"
        want = re.search(r"\bexits (\d+)", comment)
        out.append((code, int(want.group(1)) if want else 0))
    return out


def test_blocks_are_found():
    """The extraction itself: the README has its quick start, usage and library blocks."""
    kinds = [k for k, _ in blocks(ROOT / "README.md")]
    assert kinds.count("bash") >= 4 and "python" in kinds
    quick = commands(blocks(ROOT / "README.md")[0][1])
    assert quick == [("autopar solve --hw problems/hw/seed-3gpu.yaml --model "
                      "problems/models/seed-moe.yaml --time-limit 2", 0)]


@pytest.fixture
def workdir(tmp_path: Path) -> tuple[Path, dict]:
    """A reader's folder: the project's problems/, and `autopar` on PATH as this Python's."""
    (tmp_path / "problems").symlink_to(ROOT / "problems")
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    shim = bin_dir / "autopar"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m autopar "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("AUTOPAR_DEBUG", None)
    return tmp_path, env


def run_command(cmd: str, cwd: Path, env: dict) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of one shell line run in `cwd`: a plain `autopar`
    line in-process (an exception other than the exit is re-raised: a traceback fails the
    test), anything else by bash."""
    if not PLAIN.fullmatch(cmd):
        r = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=300)
        return r.returncode, r.stdout, r.stderr
    from click.testing import CliRunner

    from autopar.cli import main

    try:
        runner = CliRunner(mix_stderr=False)  # click 8.1; later versions always split
    except TypeError:
        runner = CliRunner()
    here = Path.cwd()
    os.chdir(cwd)
    try:
        r = runner.invoke(main, shlex.split(cmd)[1:], prog_name="autopar")
    finally:
        os.chdir(here)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.stdout, r.stderr


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_every_block_runs(doc: Path, workdir):
    if doc.name == "verify.md":
        pytest.importorskip("torch")  # the `verify` extra (.ci/run installs it)
    cwd, env = workdir
    ran = 0
    for kind, text in blocks(doc):
        if kind in ("bash", "sh"):
            for cmd, want in commands(text):
                code, out, err = run_command(cmd, cwd, env)
                assert code == want, (f"{doc.name}: `{cmd}` exited {code}, expected {want}\n"
                                      f"{out[-2000:]}\n{err[-2000:]}")
                assert "Traceback" not in err and "internal error" not in err
                ran += 1
        elif kind == "python":
            r = subprocess.run([sys.executable, "-c", text], cwd=cwd, env=env,
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, f"{doc.name}: python block failed\n{r.stderr[-3000:]}"
            ran += 1
        elif kind == "yaml" and doc.name == "calibration.md":
            parse_calibration(yaml.safe_load(text), f"{doc.name} yaml block")
            ran += 1
    if doc.name in ("README.md", "serving.md"):
        assert ran, f"{doc.name}: no runnable block found"
