"""DeepSeek's DualPipe / DualPipeV as a pipeline schedule (docs/cost-model.md [dualpipe]):
the bubble formula, the paired all-to-all, two copies of the weights, the asserts of the
reference code, the check's recomputation and the Megatron export's refusal."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from click.testing import CliRunner
from conftest import PROBLEMS
from test_property import Case, _hardware, _model, assert_generated_pass

import autopar
from autopar.check.verify import check_plan
from autopar.cli import main
from autopar.cost.evaluate import evaluate
from autopar.cost.layer import MoEState, Problem
from autopar.cost.pipeline import dualpipe_pipeline
from autopar.cost.strategy import Strategy, StrategyError
from autopar.errors import InputError
from autopar.search import SearchOptions, enumerate_strategies
from autopar.spec import Workload, load_hardware, load_model

MIXTRAL = PROBLEMS / "models" / "mixtral-8x7b.yaml"
HW = PROBLEMS / "hw" / "h100-4node.yaml"
CUT = [0, 8, 16, 24, 32]


@pytest.fixture(scope="module")
def problem() -> Problem:
    return Problem(load_model(MIXTRAL).model, load_hardware(HW),
                   Workload("training", batch=32, seq_len=4096))


def _eval(p: Problem, sched: str, m: int = 8, **kw):
    s = Strategy(32, tp=2, pp=4, dp=4, ep=8, num_micro_batches=m, sequence_parallel=True,
                 pipeline_schedule=sched, **kw)
    return evaluate(p, s, CUT, [MoEState()] * 32)


def test_bubble_formula_by_hand():
    # 4 stages: DualPipe (PP/2 - 1) = 1 x the largest F&B + B - 3W; DualPipeV folds 4 ranks
    # into 8 chunks: (8/2 - 1) = 3 x half a rank's (its 6 layers split 3 + 3; 5 -> 3 of 5)
    busy, back, w = [10.0, 12.0, 11.0, 9.0], [6.0, 7.0, 6.5, 5.0], [2.0, 2.5, 2.0, 1.0]
    pipe, bubble = dualpipe_pipeline(busy, back, w, [6, 6, 6, 5], 16, "dualpipe")
    assert bubble == pytest.approx(12 + 7 - 7.5)  # stage 1: 11.5 (stage 3: 11)
    assert pipe == pytest.approx(16 * 12 + 11.5)
    pipe, bubble = dualpipe_pipeline(busy, back, w, [6, 6, 6, 5], 16, "dualpipev")
    worst = max(0.5 * 11.5, 0.5 * 11.5, 0.5 * 11.5, 3 / 5 * 11)  # 6.6 on the 5-layer rank
    assert bubble == pytest.approx(3 * worst) and pipe == pytest.approx(16 * 12 + 3 * worst)
    # W so large that F&B + B - 3W < 0: no negative bubble
    assert dualpipe_pipeline([1.0] * 4, [1.0] * 4, [5.0] * 4, [1] * 4, 8, "dualpipe")[1] == 0


def test_evaluate_uses_the_stage_figures(problem):
    ev = _eval(problem, "dualpipe")
    terms = [st.busy + st.bwd - 3 * st.wgrad for st in ev.stages]
    assert ev.bubble == pytest.approx((4 / 2 - 1) * max(terms))
    slow = max(st.busy for st in ev.stages)
    step = 8 * slow + ev.bubble + max(st.dp_exposed for st in ev.stages) + max(
        st.optimizer for st in ev.stages)
    assert ev.step_time == pytest.approx(step)


def test_w_is_half_the_weighted_gemms_backward(problem):
    st = _eval(problem, "dualpipe").stages[1]
    lc = st.layer_costs[0]
    gemm_bwd = sum(2 * (c.time_s - c.ew_s) for c in lc.components if c.params > 0)
    assert lc.wgrad == pytest.approx(gemm_bwd / 2)
    assert 0 < lc.wgrad < lc.compute_bwd / 2  # attention core and elementwise are all B


def test_dualpipe_beats_1f1b_at_few_micro_batches(problem):
    one, dual = _eval(problem, "1f1b"), _eval(problem, "dualpipe")
    vee = _eval(problem, "dualpipev")
    assert dual.bubble < one.bubble / 2 and vee.bubble < one.bubble / 2
    assert dual.step_time < one.step_time and vee.step_time < one.step_time
    # the paired chunks hide part of the all-to-all
    a, b = one.stages[1].layer_costs[0], dual.stages[1].layer_costs[0]
    assert b.ep_fwd + b.ep_bwd < a.ep_fwd + a.ep_bwd


def test_memory_two_copies_and_pp_plus_one_in_flight(problem):
    one, dual, vee = (_eval(problem, x) for x in ("1f1b", "dualpipe", "dualpipev"))
    for k in range(4):
        mine, mirror = one.stages[k].memory, one.stages[3 - k].memory
        got = dual.stages[k].memory
        for f in ("weights", "gradients", "optimizer"):
            assert getattr(got, f) == pytest.approx(getattr(mine, f) + getattr(mirror, f))
        assert vee.stages[k].memory.weights == pytest.approx(mine.weights)
        assert dual.stages[k].optimizer == pytest.approx(one.stages[k].optimizer
                                                         + one.stages[3 - k].optimizer)
    # 1F1B's stage 0 holds p = 4 micro-batches; DualPipe p + 1 = 5 on every rank
    per_mb = [st.memory.activations / st.in_flight for st in one.stages]
    assert dual.stages[1].memory.activations == pytest.approx(5 * (per_mb[1] + per_mb[2]) / 2)
    assert vee.stages[1].memory.activations == pytest.approx(4.5 * per_mb[1])


@pytest.mark.parametrize("kw,word", [
    (dict(pp=3, dp=4, tp=2, num_gpus=24, num_micro_batches=6), "even pp"),
    (dict(num_micro_batches=6), "micro-batches >= 2 x pp (8)"),
    (dict(num_micro_batches=9), "and even"),
    (dict(virtual_stages=2), "virtual_stages 2"),
    (dict(a2a_overlap=True, virtual_stages=1), "a2a_overlap"),
    (dict(zero=3), "zero 3"),
    (dict(pipeline_schedule="zb1p"), "'zb1p'"),
])
def test_invalid_combinations_are_one_line_errors(kw, word):
    args = dict(num_gpus=32, tp=2, pp=4, dp=4, ep=8, num_micro_batches=8,
                pipeline_schedule="dualpipe") | kw
    with pytest.raises(StrategyError) as err:
        Strategy(**args)
    assert word in str(err.value) and "\n" not in str(err.value)
    if kw.get("num_micro_batches") == 9:  # DualPipeV takes an odd count
        Strategy(**(args | {"pipeline_schedule": "dualpipev"}))


def test_pins_are_checked_before_the_search():
    for pins, word in (({"pipeline_schedule": "dualpipe", "pp": 4, "num_micro_batches": 4},
                        "micro-batches >= 2 x pp"),
                       ({"pipeline_schedule": "gpipe"}, "not one of")):
        with pytest.raises(InputError, match=word):
            autopar.solve(MIXTRAL, HW, pins=pins, time_limit_s=5)
    serve = load_model(PROBLEMS / "models" / "mixtral-8x7b-serve.yaml")
    with pytest.raises(InputError, match="training schedule"):
        autopar.solve(serve, HW, pins={"pipeline_schedule": "dualpipev"}, time_limit_s=5)


def test_searched_only_where_valid(problem):
    ss = enumerate_strategies(problem, SearchOptions(pins={"tp": 2}))
    dual = [s for s in ss if s.dualpipe]
    assert dual and all(s.pp % 2 == 0 and s.ep > 1 and s.num_micro_batches >= 2 * s.pp
                        and s.virtual_stages == 1 and not s.a2a_overlap for s in dual)
    assert {s.pipeline_schedule for s in dual} == {"dualpipe", "dualpipev"}
    dense = Problem(load_model(PROBLEMS / "models" / "llama3-70b.yaml").model, problem.hw,
                    problem.workload)
    assert not any(s.dualpipe for s in enumerate_strategies(dense, SearchOptions()))
    no_sms = replace(problem, hw=replace(problem.hw, gpu=replace(problem.hw.gpu, sms=None)))
    assert not any(s.dualpipe for s in enumerate_strategies(no_sms, SearchOptions()))


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    out = {}
    for sched in ("dualpipe", "dualpipev"):
        path = tmp_path_factory.mktemp(sched) / "plan.json"
        r = CliRunner().invoke(main, ["solve", "--model", str(MIXTRAL), "--hw", str(HW),
                                      "--pp", "4", "--pipeline-schedule", sched, "--quiet",
                                      "--time-limit", "20", "--out", str(path)])
        assert r.exit_code == 0, r.output
        out[sched] = path
    return out


@pytest.mark.parametrize("sched", ["dualpipe", "dualpipev"])
def test_pinned_plan_passes_check_and_tampering_fails(plans, sched):
    data = json.loads(plans[sched].read_text())
    assert data["strategy"]["pipeline_schedule"] == sched
    assert data["timing"]["schedule"] == sched and data["timing"]["formula"] == "dualpipe"
    assert not [x for x in check_plan(data, MIXTRAL, HW) if x.severity == "error"]
    for path, scale in ((("timing", "bubble_s"), 0.5),
                        (("timing", "per_stage", 1, "weight_grad_s"), 0.2),
                        (("timing", "per_stage", 1, "weight_grad_s"), 3.0)):
        bad = json.loads(plans[sched].read_text())
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] *= scale
        found = [x.path for x in check_plan(bad, MIXTRAL, HW) if x.severity == "error"]
        assert any(x.startswith("timing") for x in found), (path, scale)


def test_dualpipe_plan_memory_has_both_copies(plans):
    data = json.loads(plans["dualpipe"].read_text())
    layers = data["strategy"]["stage_layers"]
    assert len(layers) == 4 and [b - a + 1 for a, b in layers] == [8] * 4  # the even cut
    bad = json.loads(plans["dualpipe"].read_text())
    for pat in bad["gpus"]["memory"]:  # a plan claiming one copy of the weights fails
        pat["memory"]["weights_bytes"] /= 2
    found = [x.path for x in check_plan(bad, MIXTRAL, HW) if x.severity == "error"]
    assert any("weights_bytes" in x for x in found)


def test_megatron_export_refuses(plans):
    r = CliRunner().invoke(main, ["export", str(plans["dualpipe"]), "--to", "megatron"])
    assert r.exit_code == 2 and "pipeline_schedule" in r.output
    assert len(r.output.strip().splitlines()) == 1


def generate_dualpipe(count: int = 16, seed: int = 21) -> list[Case]:
    """MoE training problems with a DualPipe schedule pinned, on GPUs with an SM count."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        per_node, nodes = rng.choice([2, 4, 8]), rng.choice([1, 2])
        n = per_node * nodes
        pp = rng.choice([x for x in (2, 4) if n % x == 0])
        m = _model(rng, rng.choice(["moe", "mla"]), rng.choice([4, 8]))
        hw = _hardware(rng, nodes, per_node, 80.0)
        hw = replace(hw, gpu=replace(hw.gpu, sms=rng.choice([78, 132])))
        nmb = 2 * pp * rng.choice([1, 2])
        sched = rng.choice(["dualpipe", "dualpipev"])
        pins = {"pipeline_schedule": sched, "pp": pp, "tp": 1, "micro_batch": 1,
                "num_micro_batches": nmb, "recompute": rng.choice(["none", "selective", "full"]),
                "zero": rng.choice([0, 1, 2])}
        w = Workload("training", n // pp * nmb, rng.choice([16, 32, 64]),
                     precision="fp8" if rng.random() < 0.3 else None)
        out.append(Case(i, m, hw, w, pins, 0.5))
    return out


def test_generated_dualpipe_plans_pass_check():
    assert_generated_pass(generate_dualpipe(), "DualPipe")
