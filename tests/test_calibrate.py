"""`autopar calibrate`: GEMM CSVs, nccl-tests output and aiconfigurator-core's tables become a
calibration file that `--calibration` reads back."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from autopar.cli import main
from autopar.cost import measured
from autopar.cost.calibration import parse_calibration
from autopar.errors import InputError
from autopar.spec import read_data

AIC = Path(__file__).parent / "data" / "aiconfigurator"
# nccl-tests output with {op} and {host} (rank 3's) to fill in
NCCL = (Path(__file__).parent / "data" / "nccl-tests-template.txt").read_text()


def nccl_text(op: str = "all_reduce", host: str = "node01", header: bool = True) -> str:
    text = NCCL.replace("{op}", op).replace("{host}", host)
    return text if header else text.replace(f"# Collective test starting: {op}_perf\n", "")


def test_nccl_tests_output_gives_size_and_out_of_place_busbw():
    link, rows = measured.read_nccl_tests(nccl_text(), "ar.txt")
    assert link == "intra"
    assert rows == [{"op": "all_reduce", "group": 4, "bytes": b, "busbw_gbps": v}
                    for b, v in ((1048576, 52.23), (16777216, 264.85), (268435456, 338.31))]
    link, rows = measured.read_nccl_tests(nccl_text("all_gather", "node02"), "ag.txt")
    assert link == "inter" and {r["op"] for r in rows} == {"all_gather"}


def test_nccl_tests_output_without_an_op_needs_one():
    with pytest.raises(InputError, match="OP=FILE"):
        measured.read_nccl_tests(nccl_text(header=False), "ar.txt")
    _, rows = measured.read_nccl_tests(nccl_text(header=False), "ar.txt", "reduce_scatter")
    assert rows[0]["op"] == "reduce_scatter"


CSV = "m,n,k,dtype,time_us\n16,1024,1024,bf16,8.0\n256,1024,1024,bfloat16,20.5\n"


@pytest.mark.parametrize("text, where", [
    ("m,n,dtype,time_us\n1,2,bf16,3\n", "line 1: header lacks column 'k'"),
    ("m,n,k,dtype,time_us\n16,1024,1024,bf16,8\n16,x,1024,bf16,8\n", "line 3, field n"),
    ("m,n,k,dtype,time_us\n16,1024,1024,int3,8\n", "line 2, field dtype"),
    ("m,n,k,dtype,time_us\n16,1024,1024,bf16,-1\n", "line 2, field time_us"),
    ("m,n,k,dtype,time_us\n16,1024\n", "line 2: 2 fields"),
])
def test_gemm_csv_errors_are_one_line_naming_file_line_and_field(tmp_path, text, where):
    (tmp_path / "g.csv").write_text(text)
    r = CliRunner().invoke(main, ["calibrate", "--gemm-csv", str(tmp_path / "g.csv"),
                                  "--out", str(tmp_path / "c.yaml")])
    assert r.exit_code == 2, r.output
    line = r.output.strip()
    assert "\n" not in line and f"g.csv: {where}" in line and "Traceback" not in line
    assert not (tmp_path / "c.yaml").exists()


def test_calibrate_round_trip(tmp_path):
    (tmp_path / "g.csv").write_text(CSV)
    (tmp_path / "ar.txt").write_text(nccl_text())
    (tmp_path / "rs.txt").write_text(nccl_text(header=False))
    out = tmp_path / "calib.yaml"
    r = CliRunner().invoke(main, ["calibrate", "--gemm-csv", str(tmp_path / "g.csv"),
                                  "--nccl", str(tmp_path / "ar.txt"),
                                  "--nccl", f"reduce_scatter={tmp_path / 'rs.txt'}",
                                  "--gpu", "H100-SXM5-80GB", "--out", str(out)])
    assert r.exit_code == 0, r.output
    c = parse_calibration(read_data(out), str(out))
    t = c.kernels.gemm["bf16"]
    assert t.time_s(16, 1024, 1024) == pytest.approx(8e-6)
    assert t.time_s(256, 1024, 1024) == pytest.approx(20.5e-6)
    assert c.busbw("intra", 4, 16777216, "reduce_scatter") == pytest.approx(264.85e9)
    assert c.busbw("intra", 4, 268435456, "all_reduce") == pytest.approx(338.31e9)
    assert c.busbw("intra", 4, 268435456, "all_gather") is None
    assert "H100-SXM5-80GB" in read_data(out)["notes"]


def test_from_aiconfigurator_reads_its_tables(tmp_path):
    out = tmp_path / "calib.yaml"
    r = CliRunner().invoke(main, ["calibrate", "--from-aiconfigurator", "h100_sxm",
                                  "--aiconfigurator-data", str(AIC), "--out", str(out)])
    assert r.exit_code == 0, r.output
    c = parse_calibration(read_data(out), str(out))
    assert set(c.kernels.gemm) == {"bf16", "fp8_block"}  # the blockwise recipe's GEMMs
    assert len(c.kernels.gemm["bf16"].rows) == 4  # m = 17 is not a power of two
    assert len(c.kernels.gemm["fp8_block"].rows) == 4
    assert c.kernels.gemm["bf16"].time_s(256, 4096, 1024) == pytest.approx(7.1061e-6,
                                                                           rel=1e-4)
    # all_reduce of 268435456 half elements on 8 GPUs in 2.11106 ms: 2 x 7/8 x S / t
    assert c.busbw("intra", 8, 2 * 268435456, "all_reduce") == pytest.approx(
        2 * 7 / 8 * 2 * 268435456 / 2.11106e-3, rel=1e-5)
    assert set(c.kernels.collectives) == {("all_reduce", "intra"), ("all_gather", "intra")}


def test_from_aiconfigurator_without_the_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(measured, "aiconfigurator_root", lambda: None)
    r = CliRunner().invoke(main, ["calibrate", "--from-aiconfigurator", "h100_sxm",
                                  "--out", str(tmp_path / "c.yaml")])
    assert r.exit_code == 2
    assert r.output.strip().endswith("pip install 'autopar[calibrate]'")
    assert not (tmp_path / "c.yaml").exists()


def test_calibrate_refuses_a_file_the_reader_could_not_read_back(tmp_path):
    """20,000 GEMM rows are over the reader's 200,000 values: one line, nothing written
    (`--all-shapes` from aiconfigurator wrote such a file)."""
    rows = "\n".join(f"{m},{n},4096,bf16,{10 + m % 7}.5" for m in range(1, 201)
                     for n in range(1, 101))
    (tmp_path / "g.csv").write_text("m,n,k,dtype,time_us\n" + rows + "\n")
    out = tmp_path / "c.yaml"
    r = CliRunner().invoke(main, ["calibrate", "--gemm-csv", str(tmp_path / "g.csv"),
                                  "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert r.output.strip().startswith("autopar: error: --out: the tables hold")
    assert "200,000" in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))


def test_calibrate_checks_out_before_reading(tmp_path):
    """A device as --out is refused before the (missing) table is read."""
    r = CliRunner().invoke(main, ["calibrate", "--gemm-csv", str(tmp_path / "missing.csv"),
                                  "--out", "/dev/null"])
    assert r.exit_code == 2 and "/dev/null: not a regular file" in r.output, r.output
