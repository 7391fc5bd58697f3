"""The command line as a user meets it: every option explained, exit codes in the help,
default output names that do not collide, and --out checked before any work is done."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import ONE_GPU, PROBLEMS, TINY_MODEL

from autopar.cli import main
from autopar.cli.options import EXIT_CODES


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_option_has_help_and_exit_codes_are_listed(name):
    cmd = main.commands[name]
    bare = [p.opts[0] for p in cmd.params if isinstance(p, click.Option) and not p.help]
    assert not bare, f"{name}: options without help: {bare}"
    out = CliRunner().invoke(main, [name, "--help"], terminal_width=200).output
    assert "Exit codes:" in out
    for code in EXIT_CODES[name].split(";"):
        assert code.split()[0] in out.split("Exit codes:")[1]


SEED = ["--hw", str(PROBLEMS / "hw/seed-3gpu.yaml"), "--time-limit", "2", "--quiet"]


def _solve(args, **kw):
    return CliRunner().invoke(main, ["solve", *args], catch_exceptions=False, **kw)


def test_default_names_carry_the_workload(tmp_path, monkeypatch):
    """The seed model trained and served (same model name) get two files, not one."""
    monkeypatch.chdir(tmp_path)
    for model in ("seed-moe.yaml", "seed-moe-serve.yaml"):
        r = _solve(["--model", str(PROBLEMS / "models" / model), *SEED])
        assert r.exit_code == 0, r.output
    names = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert names == ["seed-moe-seed-3gpu-serving.json", "seed-moe-seed-3gpu-training.json"]


@pytest.mark.parametrize("name", ["../../escape", "/tmp/abs/evil", "a\0b/../c", "..", "-x y"])
def test_default_name_is_one_safe_file_under_results(tmp_path, monkeypatch, write_yaml, name):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    model = write_yaml("m.yaml", {**TINY_MODEL, "model": {**TINY_MODEL["model"], "name": name}})
    hw = write_yaml("hw.yaml", ONE_GPU)
    r = _solve(["--model", str(model), "--hw", str(hw), "--time-limit", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    written = [p for p in tmp_path.rglob("*.json")]
    assert len(written) == 1 and written[0].parent == work / "results", written
    assert written[0].name.endswith("-one-training.json")
    assert not written[0].name.startswith((".", "-"))


def _no_search(monkeypatch):
    import autopar.api

    def refuse(*a, **k):
        raise AssertionError("the search ran before --out was checked")
    monkeypatch.setattr(autopar.api, "solve", refuse)


@pytest.mark.parametrize("kind", ["device", "fifo", "directory", "under-a-file", "proc"])
def test_out_must_be_a_regular_file_checked_before_the_solve(tmp_path, monkeypatch, kind):
    _no_search(monkeypatch)
    target = {"device": Path("/dev/null"), "fifo": tmp_path / "fifo",
              "directory": tmp_path / "dir", "under-a-file": tmp_path / "file" / "p.json",
              "proc": Path("/proc/autopar-plan.json")}[kind]
    if kind == "fifo":
        os.mkfifo(target)
    if kind == "directory":
        target.mkdir()
    if kind == "under-a-file":
        (tmp_path / "file").write_text("keep")
    r = CliRunner().invoke(main, ["solve", "--model", str(PROBLEMS / "models/seed-moe.yaml"),
                                  *SEED, "--out", str(target)])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert lines[-1].startswith(("autopar: error:", "Error:")) and "Traceback" not in r.output
    if kind == "fifo":
        assert stat.S_ISFIFO(os.stat(target).st_mode)
    if kind == "under-a-file":
        assert (tmp_path / "file").read_text() == "keep"


def test_plans_are_written_with_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        out = tmp_path / "p.json"
        r = _solve(["--model", str(PROBLEMS / "models/seed-moe.yaml"), *SEED, "--out", str(out)])
        assert r.exit_code == 0, r.output
        assert stat.S_IMODE(out.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_frontier_png_without_matplotlib_says_so_before_any_work(tmp_path, monkeypatch):
    import importlib.util

    import autopar.cli.frontier

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))

    def refuse(*a, **k):
        raise AssertionError("the frontier was searched before the extra was checked")
    monkeypatch.setattr(autopar.cli.frontier, "serving_search", refuse)
    out = tmp_path / "f.json"
    r = CliRunner().invoke(main, ["frontier", "--model",
                                  str(PROBLEMS / "models/mixtral-8x7b-serve.yaml"), "--hw",
                                  str(PROBLEMS / "hw/h100-8x.yaml"), "--out", str(out),
                                  "--png", str(tmp_path / "f.png")])
    assert r.exit_code == 2
    assert r.output.strip() == ("autopar: error: --png: needs matplotlib, which is not "
                                "installed: pip install 'autopar[plot]'")
    assert not out.exists()
