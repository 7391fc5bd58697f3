"""ZeRO-3 / FSDP as it runs [fsdp]: per-unit gathers and reduce-scatters, what prefetch hides,
the per-call latency at DP scale, the check's recomputation, and the calibration rows."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import PROBLEMS

from autopar.api import make_problem, solve
from autopar.check.verify import check_plan
from autopar.cli import main
from autopar.cost.evaluate import evaluate
from autopar.cost.layer import MoEState
from autopar.cost.strategy import Strategy
from autopar.errors import InputError
from autopar.plan import PHASES
from autopar.spec import ModelSpec, Workload, parse_hardware

VALIDATION = Path(__file__).resolve().parents[1] / "benchmarks" / "validation"
REFERENCE = next((d / "shared" / "reference" / "calibration-2025.yaml"
                  for d in Path(__file__).resolve().parents
                  if (d / "shared" / "reference" / "calibration-2025.yaml").is_file()), None)


def hardware(nodes: int, per_node: int):
    return parse_hardware({
        "name": f"t-{nodes}x{per_node}", "gpu": {"memory_gb": 80, "tflops": {"bf16": 100},
                                                 "hbm_tbps": 1.0},
        "nodes": nodes, "gpus_per_node": per_node, "intra_node": {"bandwidth_gbps": 100},
        "inter_node": {"bandwidth_gbps": 25, "latency_us": 8}}, "test")


MODEL = ModelSpec("dense", 4, 1024, 8, 8, 128, 4096, False, 1000)


def _stage(gather: str, dp: int = 8, mb: int = 8, recompute: str = "none"):
    hw = hardware(dp // 8 or 1, min(dp, 8))
    p = make_problem(MODEL, hw, Workload("training", dp * mb, 2048), zero3_gather=gather)
    s = Strategy(dp, 1, 1, dp, micro_batch=mb, num_micro_batches=1, recompute=recompute,
                 zero=3)
    ev = evaluate(p, s, [0, MODEL.layers], [MoEState()] * MODEL.layers)
    return ev, ev.stages[0].zero3


def test_prefetch_hides_all_but_the_lead():
    """A large micro-batch gives every unit more compute than its gather: prefetch exposes
    only the first gather of each pass and the last reduce-scatter (under one unit's worth),
    on demand waits for every gather."""
    ev, z = _stage("prefetch")
    link = z.gathers * (z.gather_dp + z.gather_edp) + z.reduce
    assert 0 < z.exposed < 0.5 * link
    _, od = _stage("on-demand")
    assert od.exposed_gather == pytest.approx(od.gathers * (od.gather_dp + od.gather_edp))
    assert z.calls == MODEL.layers + 2  # one coalesced call a unit (layers, embedding, head)
    assert od.calls > 4 * z.calls  # one a tensor: weights, biases, LayerNorm scale and shift


def test_on_demand_latency_grows_with_dp():
    """Per-tensor calls pay (n - 1) alpha each: the same bytes over 64 GPUs cost far more
    than over 8, while the prefetched, coalesced gathers barely move."""
    _, small = _stage("on-demand", dp=8)
    _, big = _stage("on-demand", dp=64)
    assert big.exposed_gather > 3 * small.exposed_gather
    assert big.calls == small.calls  # the same tensors: only the latency per call grew


def test_recompute_refetches_on_demand_only():
    _, od = _stage("on-demand", recompute="full")
    _, pf = _stage("prefetch", recompute="full")
    assert (od.gathers, pf.gathers) == (3, 2)


@pytest.mark.parametrize("gather", ["prefetch", "on-demand"])
def test_plan_phases_add_up_and_check_recomputes(gather):
    hw = hardware(2, 4)
    plan = json.loads(solve(MODEL, hw, Workload("training", 16, 512), pins={
        "zero": 3, "tp": 1, "pp": 1}, time_limit_s=5, zero3_gather=gather).to_json())
    t = plan["timing"]
    assert plan["inputs"]["options"]["zero3_gather"] == gather
    assert sum(t[k] for k in PHASES) == pytest.approx(t["step_time_s"], rel=1e-9)
    assert t["param_gather_exposed_s"] > 0 and t["dp_exposed_s"] == 0
    parts = {c.get("part") for c in plan["communication"] if c["group"] == "dp"}
    assert parts == {"parameters", "gradients"}
    assert not [x for x in check_plan(plan) if x.severity == "error"]
    # a plan hiding what nothing can hide, or stating one gather per stage, fails the check
    hidden = copy.deepcopy(plan)
    for st in hidden["timing"]["per_stage"]:
        st["per_micro_batch_s"] -= st["param_gather_s"]
        st["param_gather_s"] = 0.0
    paths = {x.path for x in check_plan(hidden) if x.severity == "error"}
    assert any(p.endswith("param_gather_s") for p in paths)
    lumped = copy.deepcopy(plan)
    c = next(c for c in lumped["communication"] if c.get("part") == "parameters")
    c["calls_per_step"] = 2
    paths = {x.path for x in check_plan(lumped) if x.severity == "error"}
    assert any(p.endswith("calls_per_step") for p in paths)


def test_zero3_gather_is_validated_and_a_cli_switch(tmp_path):
    with pytest.raises(InputError, match="zero3_gather"):
        make_problem(MODEL, hardware(1, 8), Workload("training", 8, 512), zero3_gather="lazy")
    out = tmp_path / "plan.json"
    r = CliRunner().invoke(main, ["solve", "--model", str(PROBLEMS / "models" /
                                                          "mixtral-8x7b.yaml"),
                                  "--hw", str(PROBLEMS / "hw" / "h100-8x.yaml"), "--zero", "3",
                                  "--zero3-gather", "on-demand", "--out", str(out), "--quiet",
                                  "--time-limit", "10"])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["inputs"]["options"]["zero3_gather"] == "on-demand"


def test_non_zero3_plans_do_not_state_it():
    plan = json.loads(solve(MODEL, hardware(1, 8), Workload("training", 16, 512),
                            pins={"zero": 1}, time_limit_s=5).to_json())
    assert "zero3_gather" not in plan["inputs"]["options"]


# ------------------------------------------------------------------ calibration rows
@pytest.fixture(scope="module")
def sc21():
    if REFERENCE is None:
        pytest.skip("no ../shared/reference/calibration-2025.yaml")
    sys.path.insert(0, str(VALIDATION))
    import zero3_fsdp

    rows = [zero3_fsdp.zero3_row(r) for r in zero3_fsdp.records(REFERENCE)]
    return rows, zero3_fsdp.ptdp_rows()


def test_sc21_zero3_rows_within_the_issue_targets(sc21):
    """The three ZeRO-3 calibration rows, pinned, on demand: mean |error| <= 10 %, max 20 %
    (prefetch, the modern default, misses them by 39-330 %)."""
    rows, _ = sc21
    errs = [abs(x.error) for x in rows]
    assert len(rows) == 3
    assert sum(errs) / 3 <= 0.10 and max(errs) <= 0.20


@pytest.mark.parametrize("gpus", [
    pytest.param(384, marks=pytest.mark.xfail(strict=True, reason="measured gap 6 % (153 vs "
                                              "144); the ZeRO-3 row is predicted 9 % fast")),
    768, 1536])
def test_ranking_ptdp_vs_zero3_as_measured(sc21, gpus):
    """SC'21 Table 2: at each GPU count PTD-P (TP 8 x PP 12) beat ZeRO-3; autopar orders
    the two the same way."""
    rows, ptdp = sc21
    z3 = next(x for x in rows if x.gpus == gpus)
    published, predicted = ptdp[gpus]
    assert published > z3.published
    assert predicted > z3.predicted


def test_sc21_prefetch_would_not_explain_the_rows(sc21):
    """The modern default on the same rows: communication hidden, far faster than measured."""
    rows, _ = sc21
    sys.path.insert(0, str(VALIDATION))
    import zero3_fsdp

    recs = zero3_fsdp.records(REFERENCE)
    pre = [zero3_fsdp.zero3_row(r, "prefetch") for r in recs]
    assert all(q.error > 0.3 for q in pre)
    assert all(q.predicted > x.predicted for q, x in zip(pre, rows, strict=True))
