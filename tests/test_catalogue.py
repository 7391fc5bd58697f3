"""Every GPU in the catalogue loads through the hardware reader with sourced, plausible
figures, and a small model solves on a node of 8 of it into a plan that `check` passes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import ROOT, TINY_MODEL

from autopar.api import solve
from autopar.check.verify import check_plan, format_findings
from autopar.cli import main
from autopar.spec import GB, gpu_catalogue, parse_hardware

# the parts issue 13 asks the catalogue to carry, besides the ones it had
REQUIRED = {"A100-SXM4-80GB", "A100-SXM4-40GB", "H100-SXM5-80GB", "H800-SXM5-80GB",
            "H200-SXM-141GB", "H20", "L40S", "B200", "B300", "GB200", "GB300", "MI300X"}
NAMES = sorted(set(gpu_catalogue()) | REQUIRED)
NEW_IN_ISSUE_13 = ["A100-SXM4-40GB", "H20", "L40S", "B300", "GB200", "GB300"]
# what `_read_gpu` reads, plus free-text notes; a misspelt key would be dropped silently
KEYS = {"memory_gb", "tflops", "hbm_tbps", "nvlink_gbps", "gemm_tflops", "nvlink_domain",
        "nvlink_topology",
        "allreduce_busbw_gbps", "sources", "notes", "sms"}

MODEL = {"model": {**TINY_MODEL["model"], "layers": 4, "heads": 8, "kv_heads": 8,
                   "hidden": 128},
         "workload": {"kind": "training", "global_batch": 8, "seq_len": 64}}


def node_of_8(name: str) -> dict:
    return {"name": f"8x {name}", "gpu": {"type": name}, "nodes": 1, "gpus_per_node": 8}


@pytest.mark.parametrize("name", NAMES)
def test_entry_loads_with_sources_and_plausible_figures(name):
    entry = gpu_catalogue().get(name)
    assert entry is not None, f"{name} is missing from the catalogue"
    assert set(entry) <= KEYS, set(entry) - KEYS
    hw = parse_hardware(node_of_8(name), "test")
    gpu = hw.gpu
    assert gpu.sources and all(isinstance(s, str) and s.strip() for s in gpu.sources)
    bf16 = gpu.peak_flops["bf16"] / 1e12
    assert 100 <= bf16 <= 5000, bf16  # dense 16-bit peaks: L40S 362 ... GB300 2500
    assert 16 <= gpu.memory_bytes / GB <= 400
    assert 0.5 <= gpu.hbm_bytes_per_s / 1e12 <= 20
    if "fp8" in gpu.peak_flops:  # dense fp8 is twice dense bf16 on every part listed
        assert gpu.peak_flops["fp8"] == pytest.approx(2 * gpu.peak_flops["bf16"], rel=0.02)
    # the intra-node link defaults to the part's own (NVLink, Infinity Fabric or PCIe)
    assert 10 <= hw.intra.bytes_per_s / GB <= 1000
    assert hw.intra.bytes_per_s / GB == entry["nvlink_gbps"]
    assert gpu.sms == entry.get("sms") and (gpu.sms is None or 50 <= gpu.sms <= 400)


@pytest.mark.parametrize("name", NAMES)
def test_small_model_solves_on_8_and_passes_check(name, write_yaml):
    model = write_yaml("m.yaml", MODEL)
    hw = write_yaml("hw.yaml", node_of_8(name))
    plan = solve(model, hw, time_limit_s=2.0, seed=0, workers=1)
    data = json.loads(plan.to_json())
    found = [x for x in check_plan(data) if x.severity == "error"]
    assert not found, format_findings(found)
    assert data["inputs"]["hardware"]["gpu"]["sources"] == gpu_catalogue()[name]["sources"]


@pytest.mark.parametrize("name", NEW_IN_ISSUE_13)
def test_check_cli_passes_a_plan_on_a_new_part(name, write_yaml, tmp_path):
    """The plan file of a part added for issue 13 passes `autopar check` from the shell."""
    model = write_yaml("m.yaml", MODEL)
    hw = write_yaml("hw.yaml", node_of_8(name))
    out = tmp_path / "plan.json"
    run = CliRunner().invoke(main, ["solve", "--model", str(model), "--hw", str(hw),
                                    "--time-limit", "2", "--workers", "1", "--quiet",
                                    "--out", str(out)])
    assert run.exit_code == 0, run.output
    run = CliRunner().invoke(main, ["check", str(out)])
    assert run.exit_code == 0, run.output


def test_readme_names_every_catalogue_part():
    readme = (ROOT / "README.md").read_text()
    assert [n for n in gpu_catalogue() if f"`{n}`" not in readme] == []
