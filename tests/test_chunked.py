"""Aggregated serving under an engine's token budget (serving-chunked, serving-queue) and
two-batch overlap (serving-tbo): the schedule, the old model at budget 0, the mixed
iteration, the queue, the overlap switch, its launch flags, and `check`'s recomputation."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
from click.testing import CliRunner
from conftest import PROBLEMS

from autopar.api import check as plan_check
from autopar.api import make_problem, solve
from autopar.check.serving import serving_mismatches
from autopar.cli import main
from autopar.errors import InputError
from autopar.serve.chunked import default_budget, legacy_times, schedule
from autopar.serve.evaluate import Evaluator, Layout, point
from autopar.spec import GPUSpec, load_model, parse_workload

SEED_HW = PROBLEMS / "hw" / "seed-3gpu.yaml"
SEED_SERVE = PROBLEMS / "models" / "seed-moe-serve.yaml"
H100 = PROBLEMS / "hw" / "h100-8x.yaml"
QWEN = PROBLEMS / "models" / "qwen3-30b-a3b.yaml"
EP3 = Layout(1, 1, 3, 3, 1)


def _errors(plan: dict) -> list:
    return [f for f in plan_check(plan) if f.severity == "error"]


def _problem(budget=None, tbo=None, path=SEED_SERVE, hw=SEED_HW):
    mf = load_model(path)
    wl = replace(mf.workload, phase="both", ttft_ms=None, tpot_ms=None, token_budget=budget,
                 two_batch_overlap=tbo)
    return make_problem(replace(mf, workload=wl), hw)


def test_default_budget_follows_vllm_per_gpu():
    big = GPUSpec("H100-SXM", 80e9, {"bf16": 1e15}, 3e12)
    assert default_budget(big) == 8192
    assert default_budget(replace(big, name="A100-80GB")) == 2048  # vLLM's A100 exception
    assert default_budget(replace(big, memory_bytes=64e9)) == 2048


def test_schedule_spreads_prompts_and_refuses_what_the_budget_cannot_hold():
    s = schedule(per_replica=100, micro_batches=1, isl=4000, osl=1001, budget=2048)
    assert s.room == 1948 and s.chunks == 3  # ceil(4000 / 1948)
    assert s.chunk == 1334  # one prompt's share per iteration: ceil(4000 / 3)
    assert s.offered == pytest.approx(400.0) and s.share == pytest.approx(400 / 1334)
    assert s.utilization == pytest.approx(400 / 1948)
    crowded = schedule(per_replica=1500, micro_batches=1, isl=4000, osl=1001, budget=8192)
    assert crowded.chunk == 6000 and crowded.share == pytest.approx(1.0)  # every iteration
    assert schedule(2048, 1, 100, 100, 2048) is None  # the decode tokens fill the budget
    assert schedule(1000, 1, 4000, 1001, 5000) is None  # prompts offered reach the room


def test_budget_zero_is_the_whole_prefill_model():
    p = _problem(budget=0)
    ev = Evaluator(p)
    pt = point(ev, EP3, 64)
    it = pt.iteration
    assert it["token_budget"] == 0 and "mixed" not in it
    dec = ev.phase(EP3, "decode", 64)
    pre = ev.prefill(EP3, dec.bounds)
    ttft, tpot = legacy_times(dec.stage_busy, pre.stage_busy, 1, 64, p.workload.output_len)
    if not it["two_batch_overlap"]:
        assert (pt.ttft_s, pt.tpot_s) == pytest.approx((ttft, tpot), rel=1e-12)


def test_mixed_iteration_shares_one_pass_and_a_smaller_budget_delays_first_tokens():
    ev = {b: Evaluator(_problem(budget=b, tbo=False)) for b in (512, 2048)}
    small, large = (point(ev[b], EP3, 64) for b in (512, 2048))
    dec = ev[2048].phase(EP3, "decode", 64)
    pre = ev[2048].prefill(EP3, dec.bounds)
    sch = large.iteration["schedule"]
    mix = sum(n * (c + a) for n, c, a in large.iteration["mixed"][0]["layers"]) \
        + large.iteration["mixed"][0]["other_s"]
    # more than a decode step, less than the decode step plus its chunk's prefill alone
    assert dec.latency < mix < dec.latency + sch["chunk"] / 1024 * pre.latency
    assert small.iteration["schedule"]["chunks"] > sch["chunks"]
    assert small.ttft_s > large.ttft_s
    assert large.ttft_s > large.iteration["chunks_s"] + large.iteration["queue_s"]


def test_queue_grows_with_the_load():
    ev = Evaluator(_problem(budget=2048, tbo=False))
    q = [point(ev, EP3, b).iteration["queue_s"] for b in (16, 128, 256)]
    assert q[0] < q[1] < q[2]


def test_two_batch_overlap_pinned_on_reaches_the_launch_and_passes_check():
    mf = load_model(SEED_SERVE)
    wl = replace(mf.workload, phase="both", two_batch_overlap=True, token_budget=2048)
    plan = solve(replace(mf, workload=wl), SEED_HW, pins={"ep": 3, "dp": 3, "tp": 1},
                 time_limit_s=20)
    it = plan.data["serving"]["point"]["iteration"]
    assert it["two_batch_overlap"] is True and "serving-tbo" in plan.data["serving"]["formulas"]
    assert plan.data["launch"]["sglang"]["args"]["enable-two-batch-overlap"] is True
    assert plan.data["launch"]["sglang"]["args"]["chunked-prefill-size"] == 2048
    assert plan.data["launch"]["vllm"]["args"]["max-num-batched-tokens"] == 2048
    assert plan.data["launch"]["vllm"]["exact"] is False
    assert not _errors(plan.data)
    off = replace(wl, two_batch_overlap=False)
    plan = solve(replace(mf, workload=off), SEED_HW, pins={"ep": 3, "dp": 3, "tp": 1},
                 time_limit_s=20)
    assert "enable-two-batch-overlap" not in plan.data["launch"]["sglang"]["args"]
    assert plan.data["serving"]["point"]["iteration"]["two_batch_overlap"] is False


@pytest.fixture(scope="module")
def searched():
    plan = solve(SEED_SERVE, SEED_HW, time_limit_s=20)
    return plan.data


def test_check_recomputes_the_serving_times(searched):
    assert serving_mismatches(searched) == []
    bad = copy.deepcopy(searched)
    it = bad["serving"]["point"]["iteration"]
    key = "tbo_mixed" if it["two_batch_overlap"] else "mixed"
    it[key][0]["other_s"] *= 1.5
    fields = {x[0] for x in serving_mismatches(bad)}
    assert "serving.point.ttft_s" in fields
    bad = copy.deepcopy(searched)
    bad["serving"]["point"]["iteration"]["token_budget"] = 4096
    assert any(x[0].endswith("token_budget") for x in serving_mismatches(bad))
    if "tbo_decode" in searched["serving"]["point"]["iteration"]:
        bad = copy.deepcopy(searched)
        it = bad["serving"]["point"]["iteration"]
        it["two_batch_overlap"] = not it["two_batch_overlap"]
        assert any(x[0].endswith("two_batch_overlap") for x in serving_mismatches(bad))
    bad = copy.deepcopy(searched)
    bad["serving"]["point"]["tpot_s"] *= 0.9
    bad["metrics"]["tpot_s"] *= 0.9
    assert any(x.path == "metrics.tpot_s" for x in _errors(bad))


def test_workload_fields_are_range_checked():
    base = {"kind": "inference", "batch": 4, "phase": "both", "input_len": 8,
            "output_len": 8}
    assert parse_workload({**base, "token_budget": 0}, "w.yaml").token_budget == 0
    assert parse_workload({**base, "two_batch_overlap": True}, "w.yaml").two_batch_overlap
    with pytest.raises(InputError, match="token_budget"):
        parse_workload({**base, "token_budget": -1}, "w.yaml")
    with pytest.raises(InputError, match="two_batch_overlap"):
        parse_workload({**base, "two_batch_overlap": "yes"}, "w.yaml")
    with pytest.raises(InputError, match="token_budget"):
        parse_workload({"kind": "training", "global_batch": 1, "seq_len": 8,
                        "token_budget": 8}, "w.yaml")


def test_cli_token_budget(tmp_path):
    out = tmp_path / "p.json"
    r = CliRunner().invoke(main, ["solve", "--hw", str(SEED_HW), "--model", str(SEED_SERVE),
                                  "--phase", "both", "--token-budget", "512",
                                  "--no-two-batch-overlap", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    it = json.loads(out.read_text())["serving"]["point"]["iteration"]
    assert it["token_budget"] == 512 and it["two_batch_overlap"] is False
    r = CliRunner().invoke(main, ["solve", "--hw", str(SEED_HW), "--model",
                                  str(PROBLEMS / "models" / "seed-moe.yaml"),
                                  "--token-budget", "512"])
    assert r.exit_code != 0 and "token-budget" in r.output
