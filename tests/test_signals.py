"""SIGINT and SIGTERM stop the whole run, in a real `autopar solve` subprocess: exit 130 /
143 with one line, the file at --out byte-identical, no temp file left. CP-SAT used to catch
SIGINT itself (ending one solve and writing a FEASIBLE plan with exit 0), and a signal while
the plan was written could leave a `.tmp` file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import PROBLEMS, ROOT

OLD = b"an existing plan: must stay byte-identical\n"
BIG = ["--model", str(PROBLEMS / "models" / "deepseek-v3-train.yaml"),
       "--hw", str(PROBLEMS / "hw" / "h800-256node.yaml")]
SEED = ["--model", str(PROBLEMS / "models" / "seed-moe.yaml"),
        "--hw", str(PROBLEMS / "hw" / "seed-3gpu.yaml"), "--quiet"]
CODES = [(signal.SIGINT, 130), (signal.SIGTERM, 143)]

# Instrumented entry point: announces each CP-SAT solve on stderr (so the test can signal
# while one is in flight), or signals itself just before / after the plan is renamed into
# place. The signal is real either way; only the moment is arranged.
DRIVER = """
import os, signal, sys
from ortools.sat.python import cp_model
mode, sig = sys.argv[1], getattr(signal, sys.argv[2])
if mode == "cpsat":
    real_solve = cp_model.CpSolver.solve
    def solve(self, *a, **k):
        print("cp-sat solving", file=sys.stderr, flush=True)
        return real_solve(self, *a, **k)
    cp_model.CpSolver.solve = solve
else:
    real_replace = os.replace
    def replace(src, dst):
        if mode == "before-rename":
            os.kill(os.getpid(), sig)
        real_replace(src, dst)
        if mode == "after-rename":
            os.kill(os.getpid(), sig)
    os.replace = replace
from autopar.cli import main
main(sys.argv[3:], prog_name="autopar")
"""


def _start(args: list[str], driver: tuple[str, str] | None = None,
           command: str = "solve") -> subprocess.Popen:
    cmd = ([sys.executable, "-c", DRIVER, *driver] if driver
           else [sys.executable, "-m", "autopar.cli"])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([*cmd, command, *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _signal_at(proc: subprocess.Popen, marker: str, sig: int) -> tuple[int, str, float]:
    """Send `sig` once a stderr line starts with `marker`; (exit code, stderr, seconds from
    the signal to the exit)."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith(marker):
            break
    else:
        proc.wait()
        pytest.fail(f"the run ended (exit {proc.returncode}) before {marker!r}: {seen}")
    t0 = time.monotonic()
    proc.send_signal(sig)
    rest = proc.communicate(timeout=30)[1]
    return proc.returncode, "".join(seen) + rest, time.monotonic() - t0


def _assert_untouched(tmp_path, out) -> None:
    assert out.read_bytes() == OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no .tmp left


def _assert_one_line(err: str, sig: int) -> None:
    last = err.strip().splitlines()[-1]
    assert last == f"autopar: interrupted by {signal.Signals(sig).name}; nothing written"
    assert "Traceback" not in err


@pytest.mark.parametrize(("sig", "code"), CODES)
def test_a_signal_during_the_search_stops_it(tmp_path, sig, code):
    """Sent at the first progress line (a second in, while layouts are being bounded)."""
    out = tmp_path / "plan.json"
    out.write_bytes(OLD)
    proc = _start([*BIG, "--time-limit", "20", "--out", str(out)])
    rc, err, took = _signal_at(proc, "[", sig)
    assert rc == code, err
    _assert_one_line(err, sig)
    _assert_untouched(tmp_path, out)
    assert took < 3.0  # the run stopped; it did not finish its search first


@pytest.mark.parametrize(("sig", "code"), CODES)
def test_a_signal_while_cpsat_solves_stops_the_run_not_just_the_solve(tmp_path, sig, code):
    """One stage model of DeepSeek-V3 on 2,048 GPUs (about 1.5 s of CP-SAT), signalled
    while it runs."""
    out = tmp_path / "plan.json"
    out.write_bytes(OLD)
    proc = _start([*BIG, "--tp", "2", "--pp", "32", "--ep", "8", "--time-limit", "20",
                   "--out", str(out), "--quiet"], ("cpsat", signal.Signals(sig).name))
    rc, err, took = _signal_at(proc, "cp-sat solving", sig)
    assert rc == code, err
    _assert_one_line(err, sig)
    _assert_untouched(tmp_path, out)
    assert took < 1.0  # not after the solve has run to its end


@pytest.mark.parametrize(("sig", "code"), CODES)
def test_a_signal_while_the_plan_is_written_leaves_out_and_no_temp_file(tmp_path, sig, code):
    out = tmp_path / "plan.json"
    out.write_bytes(OLD)
    proc = _start([*SEED, "--time-limit", "2", "--out", str(out)],
                  ("before-rename", signal.Signals(sig).name))
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == code, err
    _assert_one_line(err, sig)
    _assert_untouched(tmp_path, out)


def test_a_signal_once_the_plan_is_in_place_still_exits_143_with_a_whole_plan(tmp_path):
    """Past the rename the plan is complete: the exit code still says the run was
    interrupted, and what --out holds is the whole new plan, not part of one."""
    out = tmp_path / "plan.json"
    out.write_bytes(OLD)
    proc = _start([*SEED, "--time-limit", "2", "--out", str(out)],
                  ("after-rename", "SIGTERM"))
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == ("autopar: interrupted by SIGTERM; the plan was "
                                            f"already written to {out}")
    assert json.loads(out.read_text())["solver"]["status"] in ("OPTIMAL", "FEASIBLE")
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_frontier_too_exits_143_and_leaves_out_alone(tmp_path):
    out = tmp_path / "frontier.json"
    out.write_bytes(OLD)
    proc = _start(["--model", str(PROBLEMS / "models" / "seed-moe-serve.yaml"), "--hw",
                   str(PROBLEMS / "hw" / "seed-3gpu.yaml"), "--out", str(out)],
                  ("before-rename", "SIGTERM"), command="frontier")
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143, err
    _assert_one_line(err, signal.SIGTERM)
    _assert_untouched(tmp_path, out)
