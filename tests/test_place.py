"""`autopar place`: the engines' load formats, the maps each engine loads (round trips), the
rebalance verdict's arithmetic on a hand case, and bad files as one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autopar import api
from autopar.errors import InputError
from autopar.export.placement_maps import check_layout, read_map, split_gpus
from autopar.search.placement import PlacementProblem
from autopar.search.placement.rebalance import ExpertCost, fill_slots, rebalance
from autopar.spec import load_model
from autopar.spec.engine_loads import read_engine_loads

DATA = Path(__file__).parent / "data" / "place"
MODEL = str(DATA / "tiny-moe.yaml")
ROOT = Path(__file__).parent.parent

# the vLLM snapshot's per-layer logical loads; the other fixtures hold the same or their parts
VLLM_ROWS = [[78, 22, 11, 9, 22, 17, 5, 4], [15, 13, 14, 15, 13, 14, 16, 12],
             [3, 4, 5, 8, 11, 12, 15, 96]]


# ------------------------------------------------------------------------------ readers
def test_sglang_json_sums_passes_and_drops_dense_rows():
    ml = read_engine_loads(str(DATA / "sglang_logical_count.json"))
    assert ml.fmt == "sglang-json"
    assert ml.layer_ids == (1, 2, 3) and ml.total_layers == 4  # layer 0 is all zero: dense
    assert ml.steps == 2  # the third pass is an unfilled ring-buffer slot
    assert ml.counts[0].tolist() == [78, 22, 11, 9, 22, 17, 5, 4]
    assert np.allclose(ml.per_step()[2], np.array([3, 4, 5, 8, 11, 12, 15, 96]) / 2)


def test_sglang_npy_reads_the_same_counts():
    a = read_engine_loads(str(DATA / "sglang_logical_count.npy"))
    b = read_engine_loads(str(DATA / "sglang_logical_count.json"))
    assert a.fmt == "sglang-npy" and a.steps == 1  # 2-D: no pass axis
    assert a.layer_ids == b.layer_ids and np.array_equal(a.counts, b.counts)


def test_vllm_snapshot_and_window():
    snap = read_engine_loads(str(DATA / "vllm_eplb_snapshot.json"))
    assert snap.fmt == "vllm-eplb" and snap.layer_ids is None
    assert snap.counts.tolist() == VLLM_ROWS
    win = read_engine_loads(str(DATA / "vllm_load_window.json"))
    assert win.fmt == "vllm-window" and win.steps == 2
    # the redundant slots 8 and 9 hold experts 0 and 1: their tokens count for those
    assert win.counts.tolist() == VLLM_ROWS


def test_autopar_csv():
    ml = read_engine_loads(str(DATA / "autopar_loads.csv"))
    assert ml.fmt == "autopar-csv" and ml.counts.tolist() == VLLM_ROWS


@pytest.mark.parametrize("name, text, needle", [
    ("a.pt", "x", "torch / pickle file is not read"),
    ("a.json", '{"logical_count": [[1, -3]]}', "logical_count[0][1]: count must be >= 0"),
    ("a.json", '{"logical_count": [[1, 2], [3]]}', "ragged"),
    ("a.json", '{"logical_count": [[1, 2]], "extra": 1}', "extra: unknown key"),
    ("a.json", '{"logical_count": [[0, 0]]}', "no routed tokens"),
    ("a.json", '{"expert_load_window": [[[1, 2]]]}', "physical_to_logical_map: missing"),
    ("a.json", '{"per_layer_stats": [{"layer": 1, "logical_load": [1]}]}', "out of order"),
    ("a.json", '{"balancedness": 0.9}', "no load table"),
    ("a.csv", "layer,expert,tokens\n0,99999,1\n", "above the limits"),
    ("a.csv", "layer,expert,tokens\n0,0,1\n0,2,1\n", "missing"),
])
def test_bad_load_files_are_one_line_errors(tmp_path, name, text, needle):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(InputError) as exc:
        read_engine_loads(str(p))
    msg = str(exc.value)
    assert needle in msg and "\n" not in msg and msg.startswith(str(p))


def test_npy_of_objects_is_refused(tmp_path):
    p = tmp_path / "obj.npy"
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="not a .npy array"):
        read_engine_loads(str(p))


# ------------------------------------------------------------------------------ maps
def _placed(engine: str, tmp_path: Path, spare: int = 1) -> tuple[dict, Path]:
    out = tmp_path / f"map-{engine}"
    res = api.place(str(DATA / "sglang_logical_count.json"), ep=4, gpus_per_node=2,
                    spare_slots=spare, placement_budget_s=0, engine=engine, model=MODEL,
                    map_path=str(out))
    out.write_text(res["map_text"])
    return res, out


@pytest.mark.parametrize("engine", ["sglang", "vllm", "trtllm"])
def test_map_round_trip(engine, tmp_path):
    """Parse the emitted file back: every physical slot a logical expert, each expert at
    least once, none twice on a GPU, and exactly the placement reported per layer."""
    res, path = _placed(engine, tmp_path)
    got = read_map(str(path))
    assert got.engine == engine
    ids = [x["layer"] for x in res["layers"]]
    assert ids == [1, 2, 3]
    keys = ids if got.keyed_by == "layer" else list(range(len(ids)))
    for k, layer in zip(keys, res["layers"], strict=True):
        gpus = split_gpus(got.rows[k], 4, str(path), f"layer {k}")
        check_layout(gpus, 8, str(path), f"layer {k}")
        assert gpus == layer["gpus"]
        assert all(len(g) == res["slots_per_gpu"] == 3 for g in gpus)
    if engine == "sglang":  # one row per model layer; the dense one gets the trivial map
        assert len(got.rows) == 4 and got.rows[0] == [i % 8 for i in range(12)]
        assert res["args"]["ep-num-redundant-experts"] == 12 - 8
    if engine == "vllm":
        cfg = json.loads(res["args"]["eplb-config"])
        assert cfg["num_redundant_experts"] == 4 == 1 * 4  # spare slots x EP
    if engine == "trtllm":
        assert got.extra["num_slots"] == 12


def test_trtllm_options_file_is_followed_only_beside_it(tmp_path):
    _, path = _placed("trtllm", tmp_path)
    opts = tmp_path / "extra_llm_api_options.yaml"
    opts.write_text(f"moe_config:\n  backend: WideEP\n  load_balancer: {path.name}\n")
    assert read_map(str(opts)).engine == "trtllm"
    sub = tmp_path / "sub"
    sub.mkdir()
    bad = sub / "opts.yaml"
    bad.write_text(f"moe_config:\n  load_balancer: ../{path.name}\n")
    with pytest.raises(InputError, match="outside"):
        read_map(str(bad))


def test_bad_current_map_is_refused(tmp_path):
    p = tmp_path / "cur.json"
    row = [0, 0, 1, 2, 3, 4, 5, 6, 7, 1, 2, 3]  # GPU 0 holds expert 0 twice
    p.write_text(json.dumps({"physical_to_logical_map": [row] * 4}))
    with pytest.raises(InputError, match="holds expert 0 twice"):
        api.place(str(DATA / "sglang_logical_count.json"), ep=4, gpus_per_node=2,
                  spare_slots=1, placement_budget_s=0, model=MODEL, current=str(p))


def test_fill_slots_fills_without_a_duplicate():
    p = PlacementProblem((50.0, 9.0, 8.0, 7.0, 6.0, 5.0), 2, 2, 4, 1)  # cap 3 + 1 = 4
    filled = fill_slots(p, [[0, 1, 5], [0, 2, 3, 4]])
    assert all(len(g) == 4 and len(set(g)) == 4 for g in filled)
    assert filled[1] == (0, 2, 3, 4)
    # GPU 0's free slot takes the expert it lacks whose replicas would then carry least:
    # 2, 3, 4 would carry 8 / 2, 7 / 2, 6 / 2: expert 4
    assert filled[0] == (0, 1, 4, 5)


# ------------------------------------------------------------------------------ verdict
def test_verdict_arithmetic_by_hand():
    """Two single-GPU nodes, loads 30/20/5/5 per step. Current {0,1},{2,3}: the busiest GPU
    carries 50; new {0,2},{1,3}: 35. Saving = 15 tokens x 2 FLOPs / 1000 FLOP/s = 0.03 s a
    step. GPU 0 gains expert 2 and GPU 1 expert 1, each 100 bytes from the other node over
    the 50 B/s link: 2 s, in parallel. Break-even 2 / 0.03 = 66.7 steps."""
    p = PlacementProblem((30.0, 20.0, 5.0, 5.0), 2, 1, 2, 0)
    cost = ExpertCost(flops_per_token=2.0, bytes_per_expert=100.0)
    cur, new = [[[0, 1], [2, 3]]], [[[0, 2], [1, 3]]]
    v = rebalance([p], cur, new, cost, 1000.0, 1000.0, 50.0, horizon_steps=100)
    assert v.step_saving_s == pytest.approx(0.03)
    assert v.move_cost_s == pytest.approx(2.0)
    assert (v.moved_experts, v.moved_bytes) == (2, 200.0)
    assert v.break_even_steps == pytest.approx(200 / 3)
    assert v.worth_it and v.line().startswith("worth a rebalance")
    short = rebalance([p], cur, new, cost, 1000.0, 1000.0, 50.0, horizon_steps=50)
    assert not short.worth_it and short.line().startswith("not worth")
    # one node of both GPUs: the copies come over the 1000 B/s intra link
    one = PlacementProblem((30.0, 20.0, 5.0, 5.0), 2, 2, 2, 0)
    assert rebalance([one], cur, new, cost, 1e3, 1e3, 50.0, 100).move_cost_s == \
        pytest.approx(0.1)
    # no change: nothing saved, nothing moved, never worth it
    same = rebalance([p], cur, cur, cost, 1e3, 1e3, 50.0, 100)
    assert (same.step_saving_s, same.moved_experts, same.worth_it) == (0.0, 0, False)


def test_expert_cost_from_the_model():
    m = load_model(MODEL).model
    c = ExpertCost.of(m)
    # gated (the default): three 512 x 256 matrices per expert, bf16
    assert c.bytes_per_expert == 3 * 512 * 256 * 2
    assert c.flops_per_token == 2 * 3 * 512 * 256
    assert ExpertCost.of(m, training=True).flops_per_token == 3 * c.flops_per_token


def test_place_reports_both_numbers_against_the_default_map(tmp_path):
    res, _ = _placed("sglang", tmp_path)
    r = res["rebalance"]
    assert r["current"].startswith("the engine default map")
    assert r["step_saving_s"] > 0 and r["move_cost_s"] > 0
    assert r["new_max_over_mean"] < r["current_max_over_mean"]


def test_current_without_model_is_an_error(tmp_path):
    _, path = _placed("sglang", tmp_path)
    with pytest.raises(InputError, match="needs --model"):
        api.place(str(DATA / "sglang_logical_count.json"), ep=4, placement_budget_s=0,
                  current=str(path))


def test_cli_place_writes_the_map_and_prints_the_verdict(tmp_path):
    out = tmp_path / "sglang-map.json"
    r = subprocess.run([sys.executable, "-m", "autopar", "place",
                        str(DATA / "vllm_eplb_snapshot.json"), "--ep", "4", "--gpus-per-node",
                        "2", "--spare-slots", "1", "--placement-budget", "0", "--to", "sglang",
                        "--model", MODEL, "--out", str(out)], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["map_file"] == str(out) and doc["loads"]["format"] == "vllm-eplb"
    assert [x["layer"] for x in doc["layers"]] == [1, 2, 3]  # the model's MoE layers
    assert read_map(str(out)).engine == "sglang"
    assert "rebalance" in r.stderr.splitlines()[-1]
    bad = subprocess.run([sys.executable, "-m", "autopar", "place", str(out), "--ep", "4"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_autopar_json_profile(tmp_path):
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"layers": VLLM_ROWS}))
    ml = read_engine_loads(str(p))
    assert ml.fmt == "autopar-json" and ml.counts.tolist() == VLLM_ROWS


def test_tokens_per_step_scales_the_saving_linearly(tmp_path):
    """The layer model is linear in tokens: twice the routed tokens per step, twice the
    saving; the move (weights only) does not change."""
    kw = dict(ep=4, gpus_per_node=2, spare_slots=1, placement_budget_s=0, model=MODEL)
    src = str(DATA / "vllm_eplb_snapshot.json")
    a = api.place(src, tokens_per_step=1000.0, **kw)["rebalance"]
    b = api.place(src, tokens_per_step=2000.0, **kw)["rebalance"]
    assert b["step_saving_s"] == pytest.approx(2 * a["step_saving_s"])
    assert b["move_cost_s"] == pytest.approx(a["move_cost_s"])


@pytest.mark.parametrize("kw, needle", [
    (dict(spare_slots=7), "would hold one expert twice"),  # 2 + 7 slots > 8 experts
    (dict(engine="tgi"), "--to"),
    (dict(placement_budget_s=-1), "--placement-budget"),
])
def test_bad_options_are_one_line_errors(kw, needle):
    with pytest.raises(InputError, match=needle):
        api.place(str(DATA / "vllm_eplb_snapshot.json"), **{"ep": 4, **kw})


@pytest.mark.parametrize("engine", ["sglang", "vllm", "trtllm"])
def test_own_map_as_current_moves_nothing(engine, tmp_path):
    """The anytime placement is deterministic: read back as --current (each engine's form),
    it is the new placement, so nothing moves and nothing is saved."""
    _, path = _placed(engine, tmp_path)
    res = api.place(str(DATA / "sglang_logical_count.json"), ep=4, gpus_per_node=2,
                    spare_slots=1, placement_budget_s=0, model=MODEL, current=str(path))
    r = res["rebalance"]
    assert (r["moved_experts"], r["move_cost_s"], r["step_saving_s"]) == (0, 0.0, 0.0)
    assert not r["worth_it"] and r["current"] == str(path)
