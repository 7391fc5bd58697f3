"""`autopar sweep`: a study's points are solved once each, written as they finish, resumed
after a kill, the same whatever the worker count; bad study files are one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import PROBLEMS

from autopar.cli import main
from autopar.errors import InputError
from autopar.sweep import load_study, sweep

ROOT = PROBLEMS.parent


def _study(tmp: Path, body: str) -> Path:
    """A study folder like problems/: models/, hw/ and studies/<name>.yaml."""
    for sub, name in (("models", "seed-moe.yaml"), ("hw", "seed-3gpu.yaml")):
        (tmp / sub).mkdir(exist_ok=True)
        shutil.copy(PROBLEMS / sub / name, tmp / sub / name)
    (tmp / "studies").mkdir(exist_ok=True)
    path = tmp / "studies" / "s.yaml"
    path.write_text("model: ../models/seed-moe.yaml\nhardware: ../hw/seed-3gpu.yaml\n" + body)
    return path


GRID = ("time_limit_s: 5\ngrid:\n  hardware.gpus_per_node: [1, 3, 4]\n"
        "  workload.global_batch: [32, 64]\n")


def test_a_grid_is_the_product_of_its_axes_each_point_stated_in_full(tmp_path):
    extra = "points:\n  - {hardware.gpus_per_node: 2, pins.tp: 2}\n"
    st = load_study(_study(tmp_path, GRID + extra))
    assert len(st.points) == 3 * 2 + 1
    assert len({p.key for p in st.points}) == len(st.points)  # distinct inputs, distinct keys
    last = st.points[-1]
    assert last.hardware["gpus_per_node"] == 2 and last.pins == {"tp": 2}
    assert {p.workload["global_batch"] for p in st.points[:6]} == {32, 64}
    assert "workload" not in last.model  # the point's workload is stated on its own


def test_rows_do_not_depend_on_the_worker_count_and_infeasible_points_are_rows(tmp_path):
    study = _study(tmp_path, GRID)
    one = sweep(study, tmp_path / "one", workers=1)
    two = sweep(study, tmp_path / "two", workers=2)
    strip = [{k: v for k, v in r.items() if k != "solve_s"} for r in one]
    assert strip == [{k: v for k, v in r.items() if k != "solve_s"} for r in two]
    infeasible = [r for r in one if r["status"] == "infeasible"]
    assert infeasible and all("64.0 GB" in r["reason"] for r in infeasible)  # 1 GPU: no fit
    solved = [r for r in one if r["status"] == "solved"]
    assert solved and all(r["throughput_tokens_per_s"] > 0 for r in solved)
    for r in solved:  # each solved point's plan is on disk, and it is the row's
        plan = json.loads((tmp_path / "one" / "plans" / f"{r['key']}.json").read_text())
        assert plan["metrics"]["step_time_s"] == r["step_time_s"]
    assert (tmp_path / "one" / "summary.md").read_text().count("\n| ") == len(one) + 1


def test_a_killed_sweep_resumes_with_every_point_exactly_once(tmp_path):
    study = _study(tmp_path, "time_limit_s: 5\ngrid:\n  hardware.gpus_per_node: [3, 4]\n"
                   "  workload.global_batch: [16, 32, 48, 64]\n")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "autopar", "sweep", str(study), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    lines = out / "points.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if lines.is_file() and len(lines.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(lines.read_text().splitlines())
    assert 2 <= before < 8, before  # killed halfway (the grid has 8 points)
    r = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    keys = [json.loads(x)["key"] for x in lines.read_text().splitlines()]
    assert len(keys) == 8 and len(set(keys)) == 8
    assert {p.key for p in load_study(study).points} == set(keys)


@pytest.mark.parametrize("body,needle", [
    ("grid:\n  hardware.nodes: 4\n", "grid.hardware.nodes: a non-empty list"),
    ("grid:\n  speed: [1, 2]\n", "an axis is model, hardware"),
    ("points:\n  - {model: ../../../../etc/passwd}\n", "outside"),
    ("time_limit_s: 0\n", "time_limit_s"),
    ("colour: blue\n", "colour"),
])
def test_bad_study_files_are_one_line_errors(tmp_path, body, needle):
    study = _study(tmp_path, body)
    with pytest.raises(InputError, match=needle):
        load_study(study)
    r = CliRunner().invoke(main, ["sweep", str(study), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and needle.split(":")[0] in r.output and "Traceback" not in r.output


def test_an_existing_sweep_needs_resume(tmp_path):
    study = _study(tmp_path, "grid:\n  workload.global_batch: [32]\n")
    r = CliRunner().invoke(main, ["sweep", str(study), "--out", str(tmp_path / "o"), "--quiet"])
    assert r.exit_code == 0, r.output
    again = CliRunner().invoke(main, ["sweep", str(study), "--out", str(tmp_path / "o")])
    assert again.exit_code == 2 and "--resume" in again.output
