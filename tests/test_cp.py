"""Context parallelism [cp-attention]: rank layout, tokens and memory per GPU, the KV exchange
and its overlap, the gradient group, the search's CP degrees, pins and `autopar check`."""

from __future__ import annotations

import copy
import json

import pytest

from autopar.api import make_problem, solve
from autopar.check.recompute import Layout
from autopar.check.verify import check_plan, format_findings
from autopar.cost.evaluate import evaluate
from autopar.cost.layer import MoEState, layer_cost, strategy_groups
from autopar.cost.strategy import Strategy, StrategyError
from autopar.errors import InputError
from autopar.schema.gpus import _coords
from autopar.search.degrees import SearchOptions, enumerate_strategies
from autopar.spec import ModelSpec, Workload, parse_hardware


def hardware(nodes: int, per_node: int, memory_gb: float = 80):
    return parse_hardware({
        "name": f"test-{nodes}x{per_node}",
        "gpu": {"memory_gb": memory_gb, "tflops": {"bf16": 400}, "hbm_tbps": 3.0},
        "nodes": nodes, "gpus_per_node": per_node,
        "intra_node": {"bandwidth_gbps": 450}, "inter_node": {"bandwidth_gbps": 50}}, "test")


DENSE = ModelSpec("dense", 4, 1024, 16, 4, 64, 4096, True, 1000)
MOE = ModelSpec("moe", 2, 512, 8, 8, 64, 1024, True, 300, experts=8, top_k=2,
                expert_ffn_hidden=256)


def problem(model=DENSE, hw=None, seq=16384, batch=8):
    return make_problem(model, hw or hardware(2, 8), Workload("training", batch, seq))


def errors(findings):
    return [x for x in findings if x.severity == "error"]


def test_rank_order_is_tp_then_cp_then_dp_and_the_checker_agrees():
    """Megatron's order: TP fastest, then CP, DP, PP; the cost model, the checker and the
    plan reader place every GPU alike, and the gradient group is DP x CP GPUs."""
    s = Strategy(32, tp=2, pp=2, dp=2, cp=4)
    lay = Layout.from_strategy({**s.to_dict(), "num_gpus": 32, "stage_layers": [[0, 1], [2, 3]]})
    coords = _coords(s.to_dict())
    for g in range(32):
        assert s.coords(g) == lay.coords(g) == coords(g)
    assert s.cp_group(5) == [1, 3, 5, 7] and s.coords(5)["cp_rank"] == 2
    assert s.rank(1, 1, 0, 3) == 16 + (1 * 4 + 3) * 2
    assert s.dp_group(3) == [1, 3, 5, 7, 9, 11, 13, 15]  # DP x CP, one TP rank
    assert sorted(map(sorted, lay.groups("cp")))[0] == [0, 2, 4, 6]
    assert all(len(x) == 8 for x in lay.groups("dp"))
    with pytest.raises(StrategyError):
        Strategy(32, tp=2, pp=2, dp=2, cp=2)  # 2 x 2 x 2 x 2 != 32
    assert "cp" not in Strategy(4, tp=4).to_dict()  # plans without CP read as before


def test_a_cp_rank_runs_its_share_of_the_tokens_and_keeps_its_share_of_activations():
    p = problem()
    g1, g2 = (strategy_groups(p, s) for s in (Strategy(2, tp=2), Strategy(4, tp=2, cp=2)))
    one = layer_cost(p, Strategy(2, tp=2, sequence_parallel=True), 0, MoEState(), g1)
    two = layer_cost(p, Strategy(4, tp=2, cp=2, sequence_parallel=True), 0, MoEState(), g2)
    assert two.act_bytes == pytest.approx(one.act_bytes / 2)
    assert two.flops_fwd == pytest.approx(one.flops_fwd / 2)
    assert two.tp_bytes == pytest.approx(one.tp_bytes / 2)
    assert one.cp_link == 0.0 and two.cp_link > 0


def test_the_ring_hides_behind_attention_at_long_sequences_and_not_at_short_ones():
    """p2p: each of cp - 1 transfers hides behind 1/cp of the attention kernel; the kernel
    grows with the sequence squared, the transfer linearly. all_gather hides nothing."""
    def cp_cost(seq, kind="p2p", hw=None):
        p = problem(seq=seq, hw=hw)
        s = Strategy(8, tp=1, cp=8, cp_comm=kind)
        return layer_cost(p, s, 0, MoEState(), strategy_groups(p, s))

    slow_net = hardware(8, 1)  # every CP neighbour across the 50 GB/s NIC
    long, short = cp_cost(131072, hw=slow_net), cp_cost(2048, hw=slow_net)
    assert long.cp_fwd + long.cp_bwd < 0.05 * long.cp_link
    assert short.cp_fwd > 0 and short.cp_bwd > 0
    ag = cp_cost(131072, "all_gather", slow_net)
    assert ag.cp_fwd + ag.cp_bwd == pytest.approx(ag.cp_link)


def test_the_gradient_group_spans_dp_x_cp_and_zero_shards_over_it():
    p = problem()
    ev1 = evaluate(p, Strategy(8, tp=2, dp=4, zero=1, num_micro_batches=2), [0, 4],
                   [MoEState()] * 4)
    ev2 = evaluate(p, Strategy(8, tp=2, dp=2, cp=2, zero=1, num_micro_batches=4), [0, 4],
                   [MoEState()] * 4)
    assert strategy_groups(p, ev2.strategy)["dp"].size == 4
    assert ev2.stages[0].memory.optimizer == pytest.approx(ev1.stages[0].memory.optimizer)
    assert ev2.stages[0].dp_sync == pytest.approx(ev1.stages[0].dp_sync)


def test_experts_fold_over_tp_x_cp_x_dp():
    s = Strategy(16, tp=2, cp=4, dp=2, ep=8)
    assert s.edp == 2 and len(s.ep_group(0)) == 8


def test_the_search_tries_cp_only_for_long_training_sequences():
    def cps(seq, kind="training", pins=None):
        w = Workload(kind, 8, seq) if kind == "training" else Workload(
            "inference", 8, phase="prefill", input_len=seq)
        p = make_problem(DENSE, hardware(2, 8), w)
        return {s.cp for s in enumerate_strategies(p, SearchOptions(pins=pins or {}))}

    assert cps(4096) == {1}
    assert cps(16384) == {1, 2, 4}  # each rank keeps >= 4096 tokens
    assert cps(131072) == {1, 2, 4, 8, 16}  # up to the 16 GPUs
    assert cps(16384, "inference") == {1}
    assert cps(4096, pins={"cp": 2}) == {2}  # a pin overrides the token floor


def test_bad_cp_pins_are_one_line_input_errors():
    for pins, word in (({"cp": 3}, "chunks"), ({"cp_comm": "ring"}, "cp_comm"),
                       ({"cp": 0}, ">= 1")):
        with pytest.raises(InputError, match=word):
            solve(DENSE, hardware(2, 8), Workload("training", 8, 8192), pins=pins)
    with pytest.raises(InputError, match="training"):
        solve(DENSE, hardware(2, 8), Workload("inference", 8, phase="prefill", input_len=512),
              pins={"cp": 2})


@pytest.mark.parametrize("kind", ["p2p", "all_gather", "a2a"])
@pytest.mark.parametrize("model", [DENSE, MOE], ids=["dense", "moe"])
def test_cp_plans_pass_check_and_a_wrong_cp_figure_is_caught(kind, model):
    plan = json.loads(solve(model, hardware(2, 8), Workload("training", 4, 16384),
                            pins={"cp": 4, "cp_comm": kind, "recompute": "selective"},
                            time_limit_s=5).to_json())
    assert plan["strategy"]["cp"] == 4 and plan["strategy"]["cp_comm"] == kind
    found = check_plan(plan)
    assert not errors(found), format_findings(found)
    t = plan["timing"]
    assert "cp_comm_exposed_s" in t and "cp_comm_s" in t["per_stage"][0]
    bad = copy.deepcopy(plan)
    c = next(x for x in bad["communication"] if x["group"] == "cp")
    c["bytes_per_call"] *= 2
    c["bytes_per_step"] *= 2
    assert any(x.path.startswith("communication") for x in errors(check_plan(bad)))
    bad = copy.deepcopy(plan)
    bad["strategy"]["cp"] = 2
    assert errors(check_plan(bad))


def test_cp_pays_where_attention_dominates():
    """At 128k tokens a 70B-class layer's activations do not fit one 8-GPU TP group without
    CP; the search takes CP and the plan fits."""
    m = ModelSpec("big", 8, 8192, 64, 8, 128, 28672, True, 128256)
    plan = json.loads(solve(m, hardware(4, 8), Workload("training", 4, 131072),
                            time_limit_s=20).to_json())
    assert plan["strategy"].get("cp", 1) > 1
    assert not errors(check_plan(plan))


def test_fp8_cp_plan_passes_check():
    """The fp8 casts follow a CP rank's tokens in the cost model and in the checker alike."""
    from conftest import PROBLEMS

    from autopar.spec import load_hardware

    w = Workload("training", 8, 16384, precision="fp8")
    plan = json.loads(solve(DENSE, load_hardware(PROBLEMS / "hw" / "h100-8x.yaml"), w,
                            pins={"cp": 4, "zero": 3}, time_limit_s=5).to_json())
    assert plan["strategy"]["cp"] == 4
    found = check_plan(plan)
    assert not errors(found), format_findings(found)
