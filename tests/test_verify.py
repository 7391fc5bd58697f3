"""`autopar verify`: the seed plan runs on 3 CPU processes and matches one process; a plan
whose shards do not cover a tensor fails naming the layer and the tensor; the comparison
catches a wrong gradient; without torch the command names the extra to install.

A TP=2 x EP=2 x PP=2 plan runs here on 8 processes too (~12 s); the Mixtral plan, the
uneven-replica plans and the rest run in `benchmarks/verify.py` (results/verify.md)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
from conftest import PROBLEMS, ROOT

import autopar
from autopar.verify import ShardError, read_layout

torch = pytest.importorskip("torch")  # the `verify` extra; .ci/run installs it


@pytest.fixture(scope="module")
def seed_plan():
    return autopar.solve(PROBLEMS / "models/seed-moe.yaml", PROBLEMS / "hw/seed-3gpu.yaml",
                         time_limit_s=5, seed=0).data


@pytest.fixture(scope="module")
def seed_run(seed_plan):
    from autopar.verify.run import distributed, reference

    lay = read_layout(seed_plan)
    return lay, reference(lay, 0), distributed(lay, 0)[0]


@pytest.fixture(scope="module")
def mini_plan():
    return autopar.solve(PROBLEMS / "models/mini-moe.yaml", PROBLEMS / "hw/h100-8x.yaml",
                         pins={"tp": 2, "pp": 2, "ep": 2, "etp": 1}, time_limit_s=5,
                         seed=0).data


def test_seed_plan_runs_on_three_processes_and_matches_one(seed_plan, seed_run):
    from autopar.verify.compare import TOLERANCE, compare

    lay, ref, parts = seed_run
    assert seed_plan["strategy"]["pp"] == 3 and len(lay.gpus) == 3
    assert [len(s) for s in lay.stage_layers] == [1, 1, 1]  # one layer per stage
    assert lay.small.experts == 63 and lay.small.top_k == 2
    assert (lay.small.heads, lay.small.kv_heads) == (32, 8)
    report = compare(lay, ref, parts, "seed", 0.0)
    assert report.passed, report.text()
    assert report.gradients.rel < TOLERANCE and report.outputs.rel < TOLERANCE
    assert report.gradients.ref_max > 0 and report.outputs.ref_max > 0
    # every weight of the small model is held by some process and compared
    held = {ix[0] for g in lay.gpus for ix in __import__(
        "autopar.verify.shard", fromlist=["x"]).local_index(lay, g).values()}
    assert held == set(ref["grads"])
    assert report.calls["pp send"] == 2 * 2 * lay.micro_batches  # 2 boundaries, fwd + bwd


def test_a_wrong_gradient_or_output_fails_naming_the_tensor(seed_run):
    from autopar.verify.compare import compare

    lay, ref, parts = seed_run
    bad = copy.deepcopy(parts)
    name = next(k for k in bad[1]["grads"] if k.endswith(".q"))
    bad[1]["grads"][name][0, 0] += 1e-6
    report = compare(lay, ref, bad, "seed", 0.0)
    assert not report.passed and report.gradients.name == f"{name} on GPU 1"
    bad = copy.deepcopy(parts)
    lo = next(iter(bad[2]["logits"]))
    bad[2]["logits"][lo][0, 0, 0] += 1e-3
    assert not compare(lay, ref, bad, "seed", 0.0).passed


def test_tp_plan_reads_its_shards(mini_plan):
    lay = read_layout(mini_plan)
    assert (lay.tp, lay.pp, lay.dp, lay.ep, lay.etp, lay.edp) == (2, 2, 2, 2, 1, 2)
    s = lay.small
    assert s.moe[s.layers.index(0)] is False and s.shared and s.tie
    g0, g1 = lay.gpus[0], lay.gpus[1]
    assert (g0.spans["L1.q"], g1.spans["L1.q"]) == ((0, 8), (8, 16))
    assert (g0.spans["L1.kv"], g1.spans["L1.kv"]) == ((0, 2), (2, 4))
    # the shared experts' FC1 / FC2 halves, scaled onto the small width
    assert g0.spans["L1.shared_fc1"] == (0, s.shared_ffn // 2)
    assert g1.spans["L1.shared_fc2"] == (s.shared_ffn // 2, s.shared_ffn)
    assert g0.experts[1][0] != g1.experts[1][0]  # ETP=1: EP over the TP ranks


def test_kv_heads_shared_by_tp_ranks_get_one_gradient_group(tmp_path):
    import yaml

    from autopar.verify.shard import groups

    model = {"model": {"name": "d", "layers": 2, "hidden": 256, "heads": 8, "kv_heads": 2,
                       "head_dim": 32, "ffn_hidden": 512, "gated_mlp": True, "vocab": 1000},
             "workload": {"kind": "training", "global_batch": 4, "seq_len": 256}}
    hw = {"name": "four", "gpu": {"type": "H100-SXM5-80GB"}, "nodes": 1, "gpus_per_node": 4}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(model))
    (tmp_path / "h.yaml").write_text(yaml.safe_dump(hw))
    plan = autopar.solve(tmp_path / "m.yaml", tmp_path / "h.yaml", pins={"tp": 4, "pp": 1},
                         time_limit_s=5).data
    lay = read_layout(plan)
    assert [g.spans["L0.kv"] for g in lay.gpus] == [(0, 1), (0, 1), (1, 2), (1, 2)]
    assert sorted(groups(lay).kv.values()) == [[0, 1], [2, 3]]


def test_replicas_are_reached_by_the_plans_routing_rule(tmp_path):
    """Hot experts replicated over two nodes: a GPU sends an expert's tokens only to the
    replicas on its own node when there are any, round robin over them; else to all."""
    import yaml

    from autopar.verify.shard import groups, routing

    hw = {"name": "two", "gpu": {"name": "g", "memory_gb": 64, "tflops": {"bf16": 400},
                                 "hbm_tbps": 1.6}, "nodes": 2, "gpus_per_node": 2,
          "intra_node": {"bandwidth_gbps": 100, "latency_us": 5},
          "inter_node": {"bandwidth_gbps": 25, "latency_us": 10}}
    (tmp_path / "h.yaml").write_text(yaml.safe_dump(hw))
    wl = autopar.spec.Workload("training", 64, 1024, expert_load="zipf:1.2", spare_slots=1)
    plan = autopar.solve(PROBLEMS / "models/seed-moe.yaml", tmp_path / "h.yaml", wl,
                         pins={"pp": 1, "ep": 4}, time_limit_s=5).data
    lay = read_layout(plan)
    L = lay.stage_layers[0][0]
    members = groups(lay).ep[(0, 0)]
    held = {g.gpu: set(g.experts[L][0]) for g in lay.gpus}
    both = [e for e in range(63) if any(e in held[i] for i in (0, 1))
            and any(e in held[i] for i in (2, 3))]
    alone = [e for e in range(63) if e in held[2] and not any(e in held[i] for i in (0, 1))]
    assert both and alone
    route = routing(lay, lay.gpus[0], L, members, {})  # GPU 0 is on node 0
    for e in both:  # only the node-0 copies
        assert {members[k[0]] for k in route.replicas[e]} <= {0, 1}
    for e in alone:
        assert [members[k[0]] for k in route.replicas[e]] == [2]


def _drop(plan: dict, name: str, tp_rank: int = 1) -> dict:
    bad = copy.deepcopy(plan)
    pat = next(p for p in bad["gpus"]["shards"] if p["ranks"]["tp_rank"] == tp_rank)
    pat["components"] = [c for c in pat["components"] if c["name"] != name]
    return bad


def test_a_dropped_shard_fails_naming_layer_and_tensor(mini_plan):
    with pytest.raises(ShardError, match=r"layer 0: qkv: heads \[8, 16\) of 16 on no GPU"):
        read_layout(_drop(mini_plan, "qkv"))
    with pytest.raises(ShardError, match=r"layer 1: shared_fc1: columns \[512, 1024\) of 1024"):
        read_layout(_drop(mini_plan, "shared_fc1"))
    with pytest.raises(ShardError, match=r"stage 0: embedding: vocab \[16000, 32000\)"):
        read_layout(_drop(mini_plan, "embedding"))
    bad = copy.deepcopy(mini_plan)
    bad["gpus"]["experts"][1]["experts"][0]["experts"].remove(5)
    with pytest.raises(ShardError, match=r"layer 1: expert 5: on no GPU of the EP group"):
        read_layout(bad)


def test_shards_that_do_not_meet_fail(mini_plan):
    bad = copy.deepcopy(mini_plan)  # FC2's row cut moved by one: covered, but not FC1's
    for k, key in ((0, "end"), (1, "start")):
        fc2 = next(c for c in bad["gpus"]["shards"][k]["components"] if c["name"] == "fc2")
        fc2["shard"][key] -= 1
    with pytest.raises(ShardError, match=r"layer 0: fc2: GPU 0 holds rows \[0, 1407\) but fc1"):
        read_layout(bad)
    bad = copy.deepcopy(mini_plan)
    qkv = next(c for c in bad["gpus"]["shards"][0]["components"] if c["name"] == "qkv")
    qkv["shard"]["kv_heads"] = {"start": 2, "end": 4, "of": 4, "copies": 1}
    with pytest.raises(ShardError, match=r"layer 0: qkv: .*grouped-query attention"):
        read_layout(bad)


def test_unreadable_shards_are_one_input_error(mini_plan):
    bad = copy.deepcopy(mini_plan)
    qkv = next(c for c in bad["gpus"]["shards"][0]["components"] if c["name"] == "qkv")
    qkv["shard"]["start"] = "zero"
    with pytest.raises(autopar.InputError, match=r"plan: gpus: unreadable shard description"):
        read_layout(bad)
    bad = copy.deepcopy(mini_plan)
    bad["inputs"]["model"]["mla"] = {"kv_lora_rank": 512, "q_lora_rank": 1536,
                                     "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
                                     "v_head_dim": 128}
    with pytest.raises(autopar.InputError, match=r"inputs.model.mla: MLA attention is not"):
        read_layout(bad)


def test_cli_broken_plan_exits_1_naming_the_tensor(mini_plan, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(_drop(mini_plan, "out")))
    r = subprocess.run([sys.executable, "-m", "autopar", "verify", str(path)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("\n") == 1 and "layer 0: out: rows [512, 1024) of 1024" in r.stderr


def test_without_torch_the_command_names_the_extra(seed_plan, tmp_path):
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(seed_plan))
    code = ("import sys; sys.modules['torch'] = None\n"
            "from autopar.cli import main; main(['verify', sys.argv[1]])")
    r = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "autopar: error: autopar verify needs torch (CPU build): pip install 'autopar[verify]'"]


def test_tp_ep_pp_plan_verifies_on_eight_processes(mini_plan):
    """TP=2 x EP=2 x PP=2 (DP=2, ETP=1: EP over the TP ranks, EDP=2), a dense first layer,
    a shared expert and tied embeddings: ~12 s, most of it eight processes importing torch."""
    lay = read_layout(mini_plan)
    assert lay.stage_layers == ((0, 1), (6,)) and lay.micro_batches == 2
    report = autopar.verify_plan(mini_plan)
    assert report.passed and report.processes == 8, report.text()
    m = lay.micro_batches
    # 4 GPUs a stage, each micro-batch forward from stage 0 and its gradient back from 1
    assert report.calls["pp send"] == 4 * m * 2
    # dispatch + combine of the one MoE layer each stage keeps, on all 8 GPUs
    assert report.calls["ep all-to-all"] == 8 * m * 2
    # forward all-reduces: stage 0 embedding + layer 0 (attention, MLP) + layer 1
    # (attention, shared expert) = 5; stage 1 layer 6 (attention, shared expert) = 2
    assert report.calls["tp all-reduce"] == 4 * m * (5 + 2)
    assert report.calls["expert grad all-reduce"] == 8  # one buffer a GPU and MoE layer
