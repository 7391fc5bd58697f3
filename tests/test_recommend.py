"""`autopar recommend`: the target syntax, the bisection, and answers checked against
independent solves (the size meets the target, one node fewer does not)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import PROBLEMS

import autopar
from autopar.cli import main
from autopar.errors import InputError
from autopar.sweep.cost import with_costs
from autopar.sweep.sizing import fewest_nodes
from autopar.sweep.target import parse_gpus, parse_prices, parse_target, resolve_gpu

SERVE = PROBLEMS / "models" / "seed-moe-serve.yaml"
TRAIN = PROBLEMS / "models" / "seed-moe.yaml"
SEED_NODE = {"name": "seed-2x", "gpu": {"name": "seed-64g", "memory_gb": 64,
                                        "tflops": {"bf16": 400}, "hbm_tbps": 1.6},
             "nodes": 1, "gpus_per_node": 2,
             "intra_node": {"bandwidth_gbps": 100, "latency_us": 5},
             "inter_node": {"bandwidth_gbps": 25, "latency_us": 10}}


def test_target_syntax():
    t = parse_target("requests_per_s=150, ttft_ms=2000", tpot_ms=50)
    assert (t.metric, t.value, t.ttft_ms, t.tpot_ms) == ("requests_per_s", 150, 2000, 50)
    day = parse_target("tokens_per_day=8.64e9")
    assert day.metric == "tokens_per_s" and day.value == pytest.approx(1e5)
    for bad, field in (("requests_per_s=abc", "requests_per_s"), ("rps=3", "rps"),
                       ("tokens_per_s=1,requests_per_s=2", "requests_per_s"),
                       ("ttft_ms=100", "no throughput"), ("tokens_per_s=-1", "tokens_per_s"),
                       ("tokens_per_s=nan", "tokens_per_s"), ("tokens_per_s", "not KEY=VALUE"),
                       ("tokens_per_s=1,tokens_per_s=2", "given twice")):
        with pytest.raises(InputError, match=field) as e:
            parse_target(bad)
        assert "\n" not in str(e.value) and str(e.value).startswith("--target")
    with pytest.raises(InputError, match="given by --ttft-ms too"):
        parse_target("requests_per_s=1,ttft_ms=5", ttft_ms=6)


def test_gpu_types_and_prices():
    assert resolve_gpu("H100") == "H100-SXM5-80GB" and resolve_gpu("h200") == "H200-SXM-141GB"
    assert parse_gpus("H100,B200") == ["H100-SXM5-80GB", "B200"]
    with pytest.raises(InputError, match="ambiguous"):
        resolve_gpu("A100")
    with pytest.raises(InputError, match="unknown GPU type"):
        resolve_gpu("H999")
    assert parse_prices("H100=2.5,H200=3.2") == {"H100-SXM5-80GB": 2.5, "H200-SXM-141GB": 3.2}
    with pytest.raises(InputError, match="--price: H100"):
        parse_prices("H100=cheap")


@pytest.mark.parametrize("need", [1, 2, 3, 5, 6, 7, 8, 9, 17])
def test_bisection_finds_the_first_size_and_solves_its_lower_neighbour(need):
    t = parse_target("tokens_per_s=10")
    calls = []

    def evaluate(n):
        calls.append(n)
        return {"status": "solved", "throughput_tokens_per_s": 10.0 if n >= need else 1.0}

    n, tried = fewest_nodes(evaluate, t, 32)
    assert n == need and (need == 1 or not t.met(tried[need - 1]))
    assert len(calls) == len(set(calls)) <= 2 * 6  # no size twice; about 2 log2 sizes
    none, tried = fewest_nodes(evaluate, t, need - 1) if need > 1 else (None, {})
    assert none is None and (need == 1 or max(tried) == need - 1)


def _independent(tmp_path, model, nodes, **wl):
    """The plan of `nodes` nodes of the seed node, by autopar.solve on a file of its own."""
    import yaml

    hw = dict(SEED_NODE, nodes=nodes)
    path = tmp_path / f"hw{nodes}.yaml"
    path.write_text(yaml.safe_dump(hw))
    mf = autopar.load_model(model)
    from dataclasses import replace
    w = replace(mf.workload, **wl) if wl else mf.workload
    try:
        return autopar.solve(mf, path, w, time_limit_s=20, seed=0, workers=1).data
    except autopar.InfeasibleError:
        return None


def test_serving_answer_meets_the_target_and_one_node_fewer_does_not(write_yaml, tmp_path):
    hw = write_yaml("seed2.yaml", SEED_NODE)
    rec = autopar.recommend(SERVE, hw, "requests_per_s=180", max_nodes=8, time_limit_s=20)
    a = rec.answers[0]
    assert rec.met and a.gpu == "seed-64g" and a.nodes and a.nodes > 1
    assert (rec.target.ttft_ms, rec.target.tpot_ms) == (2000, 50)  # the workload's limits
    plan = _independent(tmp_path, SERVE, a.nodes)
    pt = plan["serving"]["point"]
    assert pt["requests_per_s"] >= 180 and pt["tpot_s"] <= 0.050 and pt["ttft_s"] <= 2.0
    assert pt["requests_per_s"] == pytest.approx(a.row["requests_per_s"], rel=1e-9)
    fewer = _independent(tmp_path, SERVE, a.nodes - 1)
    assert fewer is None or fewer["serving"]["point"]["requests_per_s"] < 180
    assert a.below is not None and not rec.target.met(a.below)


def test_training_answer_by_tokens_per_day(write_yaml, tmp_path):
    hw = write_yaml("seed2.yaml", SEED_NODE)
    rec = autopar.recommend(TRAIN, hw, "tokens_per_day=8.64e9", max_nodes=8,
                            time_limit_s=20)  # 100,000 tokens/s
    a = rec.answers[0]
    assert a.nodes and a.nodes > 1
    plan = _independent(tmp_path, TRAIN, a.nodes)
    assert plan["metrics"]["throughput_tokens_per_s"] >= 1e5
    fewer = _independent(tmp_path, TRAIN, a.nodes - 1)
    assert fewer is None or fewer["metrics"]["throughput_tokens_per_s"] < 1e5
    with pytest.raises(InputError, match="latency limits are for serving"):
        autopar.recommend(TRAIN, hw, "tokens_per_s=1,tpot_ms=5", max_nodes=2)


def test_a_target_no_size_meets_is_an_answer_with_the_most_reached(write_yaml):
    hw = write_yaml("seed2.yaml", SEED_NODE)
    r = CliRunner().invoke(main, ["recommend", "--model", str(SERVE), "--hw", str(hw),
                                  "--target", "requests_per_s=1e6", "--max-nodes", "2",
                                  "--time-limit", "10", "--json"])
    assert r.exit_code == 3, r.output
    doc = json.loads(r.output)
    ans = doc["answers"][0]
    assert ans["nodes"] is None and "the most reached up to 2 nodes" in ans["why_not"]
    assert ans["best_reached"]["num_gpus"] == 4  # the larger size reaches more
    bad = CliRunner().invoke(main, ["recommend", "--model", str(SERVE), "--hw", str(hw),
                                    "--target", "requests_per_s=fast"])
    assert bad.exit_code == 2 and bad.output.strip().count("\n") == 0
    assert "--target: requests_per_s: a number" in bad.output


def test_inputs_refused_before_any_solve(write_yaml):
    one = {k: v for k, v in SEED_NODE.items() if k != "inter_node"}
    with pytest.raises(InputError, match="inter_node"):
        autopar.recommend(SERVE, write_yaml("one.yaml", one), "requests_per_s=1")
    hw = write_yaml("seed2.yaml", SEED_NODE)
    with pytest.raises(InputError, match="framework: 'bogus' is not a framework"):
        autopar.recommend(SERVE, hw, "requests_per_s=1", framework="bogus")
    with pytest.raises(InputError, match="a requests/s target needs an inference workload"):
        autopar.recommend(TRAIN, hw, "requests_per_s=1,tpot_ms=50")
    with pytest.raises(InputError, match="--max-nodes"):
        autopar.recommend(SERVE, hw, "requests_per_s=1", max_nodes=0)


def test_cost_per_million_tokens_and_the_frontier():
    rows = [{"status": "solved", "gpu": "H100-SXM5-80GB", "num_gpus": 8,
             "throughput_tokens_per_s": 1000.0},
            {"status": "solved", "gpu": "H200-SXM-141GB", "num_gpus": 8,
             "throughput_tokens_per_s": 1500.0},
            {"status": "solved", "gpu": "H200-SXM-141GB", "num_gpus": 16,
             "throughput_tokens_per_s": 2400.0},
            {"status": "infeasible", "gpu": "H100-SXM5-80GB", "num_gpus": None}]
    out = with_costs(rows, "H100=2,H200=2.9")
    gh = 8 / (1000 * 3600) * 1e6
    assert out[0]["gpu_hours_per_mtok"] == pytest.approx(gh)
    assert out[0]["usd_per_mtok"] == pytest.approx(2 * gh)
    # H200 at 8: 2.9 x 8 / 1500 < 2 x 8 / 1000 per token, and faster: H100 at 8 is dominated
    assert [r.get("cost_frontier") for r in out] == [False, True, True, None]
    plain = with_costs(rows)  # no prices: the frontier on GPU-hours
    assert plain[0].get("usd_per_mtok") is None
    assert [r.get("cost_frontier") for r in plain] == [False, True, True, None]


def test_recommend_ranks_types_and_names_the_runner_up(write_yaml, monkeypatch):
    """Two catalogue types on the same node file: the ranking follows the prices given."""
    import importlib

    R = importlib.import_module("autopar.sweep.sizing")  # autopar.sweep is the function

    def fake(base, gpu, target, max_nodes):
        nodes = {"H100-SXM5-80GB": 3, "H200-SXM-141GB": 2}[gpu]
        row = {"status": "solved", "gpu": gpu, "num_gpus": nodes * 8, "layout": "dp",
               "requests_per_s": 10.0, "output_tokens_per_s": 1e4, "tpot_s": 0.01}
        return R.TypeAnswer(gpu, 8, nodes, {nodes: row})

    monkeypatch.setattr(R, "answer_type", fake)
    filled = []
    monkeypatch.setattr(R, "_solve_row", lambda base, gpu, n: filled.append((gpu, n)) or {
        "status": "infeasible", "gpu_type": gpu, "nodes": n})
    hw = PROBLEMS / "hw" / "h100-4node.yaml"
    model = PROBLEMS / "models" / "qwen3-30b-a3b.yaml"
    rec = R.recommend(model, hw, "requests_per_s=5,tpot_ms=50", "H100,H200")
    assert [a.gpu for a in rec.ranked] == ["H200-SXM-141GB", "H100-SXM5-80GB"]  # fewer GPUs
    # the cost table has each type at each size either searched: the others filled in
    assert sorted(filled) == [("H100-SXM5-80GB", 2), ("H200-SXM-141GB", 3)]
    assert len(rec.rows) == 4 and rec.answers[0].nodes == 3  # the answers are unchanged
    rec = R.recommend(model, hw, "requests_per_s=5,tpot_ms=50", "H100,H200",
                      "H100=1,H200=2")  # 24 x 1 < 16 x 2 per hour
    assert [a.gpu for a in rec.ranked] == ["H100-SXM5-80GB", "H200-SXM-141GB"]
    with pytest.raises(InputError, match="--price: B200: not one of"):
        R.recommend(model, hw, "requests_per_s=5,tpot_ms=50", "H100", "B200=1")


def test_the_committed_qwen3_answer_holds_together():
    """results/recommend-qwen3-30b-a3b: each answer meets its target, one node fewer does
    not, the costs are the rows' arithmetic at the stated prices, and the plans check."""
    res = PROBLEMS.parent / "results" / "recommend-qwen3-30b-a3b"
    doc = json.loads((res / "recommend.json").read_text())
    t = parse_target(doc["target"]["stated"])
    assert doc["ranked"] == ["H200-SXM-141GB", "H100-SXM5-80GB"]
    for a in doc["answers"]:
        assert t.met(a["row"]) and not t.met(a["one_node_fewer"])
        assert a["row"]["num_gpus"] == 8 * a["nodes"]
    for r in doc["rows"]:
        gh = r["num_gpus"] / (r["output_tokens_per_s"] * 3600) * 1e6
        price = doc["prices_usd_per_gpu_hour"][r["gpu"]]
        assert r["usd_per_mtok"] == pytest.approx(gh * price, rel=1e-12)
    for plan in sorted((res / "plans").glob("*.json")):
        assert not [f for f in autopar.check(plan) if f.severity == "error"], plan.name


def test_sizes_cut_short_by_the_time_limit_are_said_so():
    from autopar.sweep.report import text
    from autopar.sweep.sizing import Recommendation, TypeAnswer

    t = parse_target("tokens_per_s=10")
    rows = {1: {"status": "solved", "gpu": "x", "gpu_type": "x", "num_gpus": 8,
                "layout": "dp=8", "throughput_tokens_per_s": 5.0, "cut_short": True},
            2: {"status": "solved", "gpu": "x", "gpu_type": "x", "num_gpus": 16,
                "layout": "dp=16", "throughput_tokens_per_s": 11.0}}
    a = TypeAnswer("x", 8, 2, rows)
    rec = Recommendation(t, [a], 4, {}, [a], with_costs(list(rows.values())))
    out = text(rec)
    assert "cut 1 of the 2 sizes' searches short" in out
    assert "5.0 on 8 GPUs" in out and "Recommended: 16 x x (2 nodes, dp=16)" in out
    rows[1].pop("cut_short")
    rec = Recommendation(t, [a], 4, {}, [a], with_costs(list(rows.values())))
    assert "short" not in text(rec)


def test_without_a_hardware_file_the_default_nodes_are_used_and_named():
    """`--gpu` alone plans on `spec.hardware.default_nodes`: the same answer as the bundled
    file of those very nodes (8 H100 on NVLink, a 400 Gb/s NIC per GPU), and it says so."""
    kw = {"gpus": "H100", "max_nodes": 3, "time_limit_s": 5}
    bare = autopar.recommend(TRAIN, None, "tokens_per_s=6e5", **kw)
    filed = autopar.recommend(TRAIN, PROBLEMS / "hw/h100-4node.yaml", "tokens_per_s=6e5", **kw)
    assert bare.answers[0].num_gpus == filed.answers[0].num_gpus
    assert [r["step_time_s"] for r in bare.rows] == [r["step_time_s"] for r in filed.rows]
    assert "default nodes (8 x H100-SXM5-80GB" in bare.hardware
    r = CliRunner().invoke(main, ["recommend", "--model", str(TRAIN), "--target",
                                  "tokens_per_s=6e5"])
    assert r.exit_code == 2 and "--hw: give a hardware file, or the GPU types (--gpu)" \
        in r.output
