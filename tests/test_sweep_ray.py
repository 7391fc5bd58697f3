"""`autopar sweep --ray`: the same points as Ray tasks on a local Ray instance give the same
rows as the worker processes (skipped where the optional ray extra is not installed: it is
not in the test extra, too heavy for CI)."""

from __future__ import annotations

import importlib.util
import shutil

import pytest
from click.testing import CliRunner
from conftest import PROBLEMS

from autopar.cli import main
from autopar.errors import InputError
from autopar.sweep import sweep

HAS_RAY = importlib.util.find_spec("ray") is not None
STUDY = ("model: ../models/seed-moe.yaml\nhardware: ../hw/seed-3gpu.yaml\ntime_limit_s: 5\n"
         "grid:\n  hardware.gpus_per_node: [1, 3, 4]\n  workload.global_batch: [32, 64]\n")


def _study(tmp):
    for sub, name in (("models", "seed-moe.yaml"), ("hw", "seed-3gpu.yaml")):
        (tmp / sub).mkdir(exist_ok=True)
        shutil.copy(PROBLEMS / sub / name, tmp / sub / name)
    (tmp / "studies").mkdir(exist_ok=True)
    path = tmp / "studies" / "s.yaml"
    path.write_text(STUDY)
    return path


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "solve_s"} for r in rows]


@pytest.mark.skipif(not HAS_RAY, reason="ray is not installed (the optional ray extra, "
                    "pip install 'autopar[ray]'; not in the test extra: too heavy for CI)")
def test_local_ray_rows_are_the_process_rows(tmp_path):
    study = _study(tmp_path)
    local = sweep(study, tmp_path / "local", workers=2)
    remote = sweep(study, tmp_path / "ray", workers=2, ray="")
    assert len(remote) == 6 and _strip(remote) == _strip(local)
    assert sum(r["status"] == "solved" for r in remote) >= 2  # not only refusals
    lines = (tmp_path / "ray" / "points.jsonl").read_text().splitlines()
    assert len(lines) == 6  # each point once
    assert sorted((tmp_path / "ray" / "plans").iterdir()) and all(
        (tmp_path / "ray" / "plans" / f"{r['key']}.json").is_file()
        for r in remote if r["status"] == "solved")


@pytest.mark.skipif(HAS_RAY, reason="ray is installed: the missing-extra message is moot")
def test_without_ray_the_option_is_one_line_naming_the_extra(tmp_path):
    with pytest.raises(InputError, match=r"--ray: needs ray.*autopar\[ray\]"):
        sweep(_study(tmp_path), tmp_path / "out", ray="")
    r = CliRunner().invoke(main, ["sweep", str(_study(tmp_path)), "--out",
                                  str(tmp_path / "o2"), "--ray", "--quiet"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "autopar[ray]" in r.output
    assert not (tmp_path / "o2" / "points.jsonl").exists()
