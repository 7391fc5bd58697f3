"""Measured kernel tables (autopar.cost.kernels): GEMM time by (m, n, k) per dtype and bus
bandwidth per collective op, interpolated in log space, clamped, with the flat fractions as
the fallback; plans name the source and pass `autopar check`."""

from __future__ import annotations

import json
import math

import pytest

from autopar.api import solve
from autopar.check.verify import check_plan, format_findings
from autopar.cost.calibration import Calibration, parse_calibration
from autopar.cost.comm import all_gather, all_reduce, all_to_all, group_link, reduce_scatter
from autopar.errors import InputError
from autopar.spec import GB, GPUSpec, HardwareSpec, LinkSpec, ModelSpec, Workload

PEAK = 1e15
NV = LinkSpec(400e9, 2e-6)


def hw(gpus: int = 8) -> HardwareSpec:
    gpu = GPUSpec("g", 80 * GB, {"bf16": PEAK, "fp8": 2 * PEAK}, 3e12, gemm_eff=0.8,
                  nvlink_eff=0.8)
    return HardwareSpec("h", gpu, 1, gpus, NV, LinkSpec(50e9, 5e-6), reserved_bytes=0.0)


def gemm_rows(dtype: str = "bf16") -> list[dict]:
    """m in {16, 256}, n = k = 1024: 10% and 40% of the peak."""
    out = []
    for m, eff in ((16, 0.1), (256, 0.4)):
        t = 2 * m * 1024 * 1024 / (eff * PEAK)
        out.append({"m": m, "n": 1024, "k": 1024, "dtype": dtype, "time_us": t * 1e6})
    return out


def calib(**extra) -> Calibration:
    return parse_calibration({"gemm_table": gemm_rows(), **extra}, "cal.yaml")


def test_gemm_table_is_exact_on_measured_shapes_and_log_linear_between():
    c = calib()
    assert c.gemm_eff(16, 1024, 1024, "bf16", PEAK) == pytest.approx(0.1)
    assert c.gemm_eff(256, 1024, 1024, "bf16", PEAK) == pytest.approx(0.4)
    # m = 64 is halfway in log m: the geometric mean of the two rates
    assert c.gemm_eff(64, 1024, 1024, "bf16", PEAK) == pytest.approx(math.sqrt(0.1 * 0.4))


def test_gemm_table_clamps_the_rate_outside_the_measured_range():
    c = calib()
    assert c.gemm_eff(4096, 1024, 1024, "bf16", PEAK) == pytest.approx(0.4)
    assert c.gemm_eff(2, 1024, 1024, "bf16", PEAK) == pytest.approx(0.1)
    assert c.gemm_eff(256, 8192, 64, "bf16", PEAK) == pytest.approx(0.4)  # n, k clamp too
    assert c.kernels.gemm["bf16"].time_s(512, 1024, 1024) == pytest.approx(
        2 * 512 * 1024 * 1024 / (0.4 * PEAK))


def test_gemm_table_fills_missing_corners_from_the_measured_ones():
    rows = gemm_rows() + [{"m": 256, "n": 4096, "k": 1024, "dtype": "bf16",
                           "time_us": 2 * 256 * 4096 * 1024 / (0.8 * PEAK) * 1e6}]
    c = parse_calibration({"gemm_table": rows}, "cal.yaml")
    # (16, 4096) was not measured: the cell's three measured corners carry the weight
    assert 0.1 < c.gemm_eff(64, 2048, 1024, "bf16", PEAK) < 0.8
    assert c.gemm_eff(256, 4096, 1024, "bf16", PEAK) == pytest.approx(0.8)


def test_a_dtype_without_a_table_keeps_the_curve():
    c = calib()
    curve = Calibration(gemm_peak=c.gemm_peak)
    assert c.gemm_eff(256, 1024, 1024, "fp8", 2 * PEAK) == curve.gemm_eff(256, 1024, 1024)
    assert c.gemm_source("bf16") == "table" and c.gemm_source("fp8") == "curve"


def test_table_efficiency_never_exceeds_the_peak():
    rows = [{"m": 4096, "n": 4096, "k": 4096, "dtype": "bf16",
             "time_us": 2 * 4096**3 / (1.3 * PEAK) * 1e6}]  # a faster GPU's table
    c = parse_calibration({"gemm_table": rows}, "cal.yaml")
    assert c.gemm_eff(4096, 4096, 4096, "bf16", PEAK) == 1.0


@pytest.mark.parametrize("bad, field", [
    ({"gemm_table": [{"m": 1, "n": 2, "k": 3, "dtype": "int3", "time_us": 1}]},
     r"gemm_table\[0\]\.dtype: 'int3' is not one of"),
    ({"gemm_table": [{"m": 0, "n": 2, "k": 3, "dtype": "bf16", "time_us": 1}]},
     r"gemm_table\[0\]\.m: 0 is out of range"),
    ({"gemm_table": gemm_rows() + gemm_rows()[:1]},
     r"gemm_table\[2\]\.m: two measurements of bf16 16x1024x1024"),
    ({"collectives": {"intra": [{"op": "broadcast", "group": 8, "bytes": 1e6,
                                 "busbw_gbps": 9}]}},
     r"collectives\.intra\[0\]\.op: 'broadcast' is not one of"),
])
def test_bad_tables_name_the_field(bad, field):
    with pytest.raises(InputError, match=field):
        parse_calibration(bad, "cal.yaml")


# --------------------------------------------------------------------------- collectives
def coll_calib() -> Calibration:
    rows = [{"op": "all_gather", "group": g, "bytes": b, "busbw_gbps": v}
            for g, b, v in ((2, 1e6, 40), (2, 1e8, 160), (8, 1e6, 20), (8, 1e8, 80))]
    rows += [{"op": "alltoall", "group": 8, "bytes": 1e6, "busbw_gbps": 100}]
    return parse_calibration({"collectives": {"intra": rows}}, "cal.yaml")


def test_collective_tables_interpolate_in_size_and_group_per_op():
    c = coll_calib()
    assert c.busbw("intra", 8, 1e8, "all_gather") == pytest.approx(80e9)
    assert c.busbw("intra", 8, 1e7, "all_gather") == pytest.approx(40e9)  # halfway in log
    assert c.busbw("intra", 4, 1e8, "all_gather") == pytest.approx(math.sqrt(160 * 80) * 1e9)
    assert c.busbw("intra", 16, 1e9, "all_gather") == pytest.approx(80e9)  # clamped
    assert c.busbw("intra", 8, 1e8, "all_reduce") is None  # not measured: alpha-beta


def test_comm_times_use_the_op_table_and_fall_back_elsewhere():
    c = coll_calib().resolve(hw().gpu)
    g = group_link(hw(), list(range(8)))
    assert all_gather(1e8, g, c) == pytest.approx(7 / 8 * 1e8 / 80e9)
    assert reduce_scatter(1e8, g, c) == pytest.approx(7 / 8 * 1e8 / (400e9 * 0.8) + 7 * 2e-6)
    assert all_reduce(1e8, g, c) == pytest.approx(2 * 7 / 8 * 1e8 / (400e9 * 0.8) + 14 * 2e-6)
    assert all_to_all(1e6, g, hw(), c) == pytest.approx(7 / 8 * 1e6 / 100e9)


def test_legacy_collective_rows_still_serve_every_ring_op():
    c = parse_calibration({"collectives": {"intra": [
        {"group": 8, "bytes": 1e6, "busbw_gbps": 60}]}}, "cal.yaml")
    assert c.busbw("intra", 8, 1e6, "reduce_scatter") == pytest.approx(60e9)
    assert c.busbw("intra", 8, 1e6, "alltoall") is None


# --------------------------------------------------------------------------- plans
MODEL = ModelSpec("dense", 2, 1024, 8, 8, 128, 4096, False, 1000)
WL = Workload("training", 8, 256)


def _plan(calibration: Calibration | None) -> dict:
    plan = solve(MODEL, hw(), WL, pins={"tp": 2, "pp": 1, "dp": 4}, time_limit_s=2, seed=0,
                 workers=1, calibration=calibration)
    return json.loads(plan.to_json())


def test_plan_names_the_gemm_source_and_passes_check():
    rows = [{"m": m, "n": n, "k": k, "dtype": "bf16",
             "time_us": 2 * m * n * k / (0.3 * PEAK) * 1e6}
            for m in (256, 2048) for n in (512, 4096) for k in (512, 4096)]
    c = parse_calibration({"gemm_table": rows}, "cal.yaml")
    base, tabled = _plan(None), _plan(c)
    echo = tabled["inputs"]["calibration"]
    assert echo["gemm_source"] == {"bf16": "table"} and echo["gemm_shapes"] == {"bf16": 8}
    assert "gemm_source" not in base["inputs"]["calibration"]
    assert tabled["metrics"]["step_time_s"] > base["metrics"]["step_time_s"]  # 0.3 < 0.8
    from test_schema import SCHEMA, undeclared

    assert undeclared(tabled, SCHEMA) == set() and undeclared(base, SCHEMA) == set()
    found = check_plan(tabled)
    assert not [x for x in found if x.severity == "error"], format_findings(found)


def test_an_unmeasured_grid_node_is_interpolated_along_its_grid_lines():
    """m = 64 is on the grid (another n measured it) but not at n = 1024: the m line through
    it (16 and 256: 0.2 at the log midpoint) dominates, the n line's one-sided 0.4 pulls a
    little; the nearest shape alone would say 0.1."""
    rows = gemm_rows() + [{"m": 64, "n": 8192, "k": 1024, "dtype": "bf16",
                           "time_us": 2 * 64 * 8192 * 1024 / (0.4 * PEAK) * 1e6}]
    c = parse_calibration({"gemm_table": rows}, "cal.yaml")
    assert 0.2 < c.gemm_eff(64, 1024, 1024, "bf16", PEAK) < 0.25
