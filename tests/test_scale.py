"""`autopar scale`: one point per GPU count over whole nodes, and the efficiency arithmetic."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from conftest import PROBLEMS

from autopar.cli import main
from autopar.errors import InputError
from autopar.sweep.scale import efficiencies, parse_sizes, scale_study

SEED = (PROBLEMS / "models" / "seed-moe.yaml", PROBLEMS / "hw" / "seed-3gpu.yaml")


def test_sizes_become_whole_nodes_of_the_base_hardware():
    st = scale_study(*SEED, parse_sizes("12, 3,6"))
    assert [p.overrides["gpus"] for p in st.points] == [3, 6, 12]
    assert [(p.hardware["nodes"], p.hardware["gpus_per_node"]) for p in st.points] == [
        (1, 3), (2, 3), (4, 3)]
    assert parse_sizes("2")[0] == 2 and scale_study(*SEED, [2]).points[0].hardware[
        "gpus_per_node"] == 2  # less than a node: a smaller node
    with pytest.raises(InputError, match="whole nodes"):
        scale_study(*SEED, [3, 4])
    for bad in ("", "a,b", "0,3"):
        with pytest.raises(InputError, match="--gpus"):
            parse_sizes(bad)


def test_efficiency_is_per_gpu_throughput_over_the_smallest_solved_size():
    rows = [{"status": "infeasible", "tokens_per_s_per_gpu": None},
            {"status": "solved", "tokens_per_s_per_gpu": 100.0},
            {"status": "solved", "tokens_per_s_per_gpu": 80.0}]
    assert [r["scaling_efficiency"] for r in efficiencies(rows)] == [None, 1.0, 0.8]


def test_the_command_prints_each_size(tmp_path):
    r = CliRunner().invoke(main, ["scale", "--model", str(SEED[0]), "--hw", str(SEED[1]),
                                  "--gpus", "3,6", "--out", str(tmp_path / "s"),
                                  "--time-limit", "5"])
    assert r.exit_code == 0, r.output
    lines = [x for x in r.output.splitlines() if "GPUs" in x]
    assert len(lines) == 2 and "100.0%" in lines[0]
    assert (tmp_path / "s" / "summary.csv").read_text().count("\n") == 3
