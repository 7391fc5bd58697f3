"""A study's cost columns (GPU-hours and, at its stated prices, US$ per million tokens, the
cost frontier) and the plot extra's PNGs next to the table."""

from __future__ import annotations

import csv
import importlib.machinery
import importlib.util
import shutil
from pathlib import Path

import pytest
from conftest import PROBLEMS

from autopar.errors import InputError
from autopar.sweep import load_study, plots, sweep

HAS_PLOT = importlib.util.find_spec("matplotlib") is not None


def _study(tmp: Path, body: str) -> Path:
    for sub, name in (("models", "seed-moe.yaml"), ("hw", "h100-4node.yaml")):
        (tmp / sub).mkdir(exist_ok=True)
        shutil.copy(PROBLEMS / sub / name, tmp / sub / name)
    (tmp / "studies").mkdir(exist_ok=True)
    path = tmp / "studies" / "s.yaml"
    path.write_text("model: ../models/seed-moe.yaml\nhardware: ../hw/h100-4node.yaml\n"
                    "time_limit_s: 5\n" + body)
    return path


GRID = ("grid:\n  hardware.gpu.type: [H100-SXM5-80GB, H200-SXM-141GB]\n"
        "  hardware.nodes: [1, 2]\nprices: {H100: 2.0, H200: 3.0}\n")


def test_cost_columns_follow_from_the_rows_and_the_stated_prices(tmp_path):
    rows = sweep(_study(tmp_path, GRID), tmp_path / "out", workers=2)
    solved = [r for r in rows if r["status"] == "solved"]
    assert len(solved) == 4
    for r in solved:
        gh = r["num_gpus"] / (r["throughput_tokens_per_s"] * 3600) * 1e6
        assert r["gpu_hours_per_mtok"] == pytest.approx(gh, rel=1e-12)
        price = 2.0 if r["gpu"].startswith("H100") else 3.0
        assert r["usd_per_mtok"] == pytest.approx(gh * price, rel=1e-12)
    front = [r for r in solved if r["cost_frontier"]]
    for r in solved:  # a point off the frontier has one at least as fast and cheaper
        dominated = any(o["throughput_tokens_per_s"] >= r["throughput_tokens_per_s"]
                        and o["usd_per_mtok"] < r["usd_per_mtok"] for o in front if o is not r)
        assert r["cost_frontier"] != dominated
    fastest = max(solved, key=lambda r: r["throughput_tokens_per_s"])
    assert fastest["cost_frontier"]
    table = list(csv.DictReader(open(tmp_path / "out" / "summary.csv")))
    assert {"gpu_hours_per_mtok", "usd_per_mtok", "cost_frontier"} <= set(table[0])
    if HAS_PLOT:
        for png in ("cost.png", "breakdown.png"):
            data = (tmp_path / "out" / png).read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_bad_prices_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="prices: H999: unknown GPU type"):
        load_study(_study(tmp_path, "prices: {H999: 1}\n"))
    with pytest.raises(InputError, match="prices: H100: a number"):
        load_study(_study(tmp_path, "prices: {H100: cheap}\n"))
    with pytest.raises(InputError, match="s.yaml: prices: a mapping"):
        load_study(_study(tmp_path, "prices: [1, 2]\n"))


def test_without_matplotlib_the_plots_are_one_line_and_no_png(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from autopar.cli import main

    monkeypatch.setattr(plots.importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else
                        importlib.machinery.PathFinder.find_spec(name))
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["sweep", str(_study(tmp_path, "")), "--out", str(out),
                                  "--quiet"])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines().count(plots.EXTRA_LINE) == 1
    assert "pip install 'autopar[plot]'" in plots.EXTRA_LINE
    assert (out / "summary.csv").is_file() and not list(out.glob("*.png"))
