"""`--calibration bundled`: the measured GEMM / NCCL tables shipped in autopar/data/kernels/."""

from __future__ import annotations

import csv
import fnmatch
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from autopar.api import make_problem
from autopar.cli import main
from autopar.cost.bundled import bundle_dir, bundled_calibration, bundled_index

ROOT = Path(__file__).resolve().parent.parent
GPUS = ("H100-SXM5-80GB", "H200-SXM-141GB", "B200")


def cal_peaks(gpu: str) -> dict:
    from autopar.spec import gpu_catalogue
    return gpu_catalogue()[gpu]["tflops"]


@pytest.mark.parametrize("gpu", GPUS)
def test_bundled_tables_reproduce_their_rows_and_interpolate_between(gpu):
    cal = bundled_calibration(gpu)
    with open(bundle_dir() / f"{gpu.lower()}-gemm.csv") as f:
        rows = list(csv.DictReader(f))
    # one per GEMM recipe, and NVFP4 where aiconfigurator measured it (Blackwell)
    fp4 = {"nvfp4"} if "fp4" in cal_peaks(gpu) else set()
    assert {r["dtype"] for r in rows} == {"bf16", "fp8", "fp8_block"} | fp4
    r = rows[len(rows) // 3]
    m, n, k, t = int(r["m"]), int(r["n"]), int(r["k"]), float(r["time_us"]) * 1e-6
    table = cal.kernels.gemm[r["dtype"]]
    assert table.time_s(m, n, k) == pytest.approx(t, rel=1e-9)
    lo, hi = sorted((table.time_s(m, n, k), table.time_s(m, n, 2 * k)))
    assert lo <= table.time_s(m, n, 1.5 * k) <= hi  # in between, not the nearest row
    with open(bundle_dir() / f"{gpu.lower()}-nccl.csv") as f:
        c = list(csv.DictReader(f))[40]
    got = cal.busbw(c["link"], int(c["group"]), float(c["bytes"]), c["op"])
    assert got == pytest.approx(float(c["busbw_gbps"]) * 1e9, rel=1e-9)
    assert cal.source.startswith("bundled: aiconfigurator-core 0.12.0 ")


def test_api_takes_bundled_by_name():
    p = make_problem(ROOT / "problems/models/mixtral-8x7b.yaml", ROOT / "problems/hw/h100-8x.yaml",
                     calibration="bundled")
    assert p.calib.source == "bundled: " + bundled_index()["H100-SXM5-80GB"][1]


@pytest.mark.parametrize("model, hw, extra", [
    ("mixtral-8x7b.yaml", "h100-8x.yaml", []),
    ("deepseek-v3.yaml", "h200-2node.yaml", ["--phase", "both"]),
])
def test_bundled_plans_name_their_source_and_pass_check(tmp_path, model, hw, extra):
    out = tmp_path / "plan.json"
    r = CliRunner().invoke(main, ["solve", "--model", f"problems/models/{model}", "--hw",
                                  f"problems/hw/{hw}", "--calibration", "bundled", "--quiet",
                                  "--time-limit", "20", "--workers", "1", "--out", str(out),
                                  *extra])
    assert r.exit_code == 0, r.output
    cal = json.loads(out.read_text())["inputs"]["calibration"]
    assert cal["source"].startswith("bundled: aiconfigurator-core 0.12.0 ")
    assert "table" in cal["gemm_source"].values()
    assert cal["collective_tables"]["all_reduce.intra"] > 0
    r = CliRunner().invoke(main, ["check", str(out)])
    assert r.exit_code == 0 and "0 errors" in r.output, r.output


def test_bundled_for_a_gpu_without_tables_is_one_line_and_exit_2():
    r = CliRunner().invoke(main, ["solve", "--model", "problems/models/llama3-70b.yaml", "--hw",
                                  "problems/hw/a100-2node.yaml", "--calibration", "bundled",
                                  "--quiet", "--time-limit", "5", "--workers", "1", "--json"])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "A100" in lines[0], r.output
    assert all(g in lines[0] for g in GPUS)


def test_package_data_ships_every_bundled_file():
    text = (ROOT / "pyproject.toml").read_text()  # no tomllib on Python 3.10
    line = re.search(r"^\[tool\.setuptools\.package-data\]\s*^autopar = \[(.*)\]$", text,
                     re.M).group(1)
    patterns = re.findall(r'"([^"]+)"', line)
    files = sorted(p.relative_to(ROOT / "autopar").as_posix()
                   for p in (ROOT / "autopar/data/kernels").iterdir())
    assert {"data/kernels/NOTICE.md", "data/kernels/index.csv"} <= set(files)
    assert [f for f in files if not any(fnmatch.fnmatch(f, p) for p in patterns)] == []
    assert set(bundled_index()) == set(GPUS)
