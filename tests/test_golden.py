"""Behaviour is pinned: the plan of every bundled problem and the training-validation
predictions equal, byte for byte, the golden files `tests/golden/make.py` wrote (solve times
aside). A refactor passes untouched; a change meant to move figures re-runs make.py and
shows its diff in review."""

from __future__ import annotations

import difflib
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "tests" / "golden"))
import make  # noqa: E402

GOLDEN = make.HERE


@pytest.fixture(scope="module")
def produced() -> dict[str, str]:
    return make.outputs()


def test_every_golden_file_is_produced(produced):
    assert sorted(produced) == sorted(p.stem for p in GOLDEN.glob("*.json"))


@pytest.mark.parametrize("stem", sorted(p.stem for p in GOLDEN.glob("*.json")))
def test_output_equals_the_golden_file(stem, produced):
    want = (GOLDEN / f"{stem}.json").read_text()
    got = produced[stem]
    if got != want:
        diff = "".join(list(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                                 f"golden/{stem}.json", "now", n=2))[:60])
        pytest.fail(f"{stem} differs from its golden file:\n{diff}")


def test_scrub_drops_only_run_times():
    doc = {"solver": {"status": "OPTIMAL", "solve_time_s": 1.5}, "metrics": {"step_time_s": 2}}
    assert make.scrub(doc) == {"solver": {"status": "OPTIMAL"}, "metrics": {"step_time_s": 2}}
