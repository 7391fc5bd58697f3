"""The expert all-to-all as engines run it (docs/cost-model.md [deepep, a2a-overlap]): each
option moves the time by what its formula says, keeps Megatron's rules, and survives check."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from math import comb

import pytest
from click.testing import CliRunner
from conftest import PROBLEMS

import autopar
from autopar.check.a2a import remote_domains
from autopar.cli import main
from autopar.cost import a2a
from autopar.cost.evaluate import in_flight
from autopar.cost.layer import MoEState, Problem, layer_cost, strategy_groups
from autopar.cost.strategy import Strategy, StrategyError
from autopar.spec import HardwareSpec, load_hardware, load_model

DSV3 = PROBLEMS / "models" / "deepseek-v3-train.yaml"
MIXTRAL = PROBLEMS / "models" / "mixtral-8x7b.yaml"


def _brute_remote(experts: int, k: int, nodes: int, limit: int) -> float:
    """Mean remote domains over every routing choice, token on domain 0."""
    per = experts // nodes
    chosen = list(itertools.combinations(range(nodes), limit or nodes))
    total = count = 0
    for doms in chosen:
        pool = [e for d in doms for e in range(d * per, (d + 1) * per)]
        for pick in itertools.combinations(pool, k):
            total += len({e // per for e in pick} - {0})
            count += 1
    return total / count


@pytest.mark.parametrize("experts,k,nodes,limit", [(8, 2, 4, 0), (8, 3, 4, 2), (12, 4, 3, 0),
                                                   (16, 4, 4, 2)])
def test_remote_domains_match_enumeration(experts, k, nodes, limit):
    want = _brute_remote(experts, k, nodes, limit)
    assert a2a.remote_nodes(experts, k, nodes, limit) == pytest.approx(want)
    assert remote_domains(experts, k, nodes, limit) == pytest.approx(want)  # check's own


def test_node_limit_and_dedup_cut_deepseek_v3_cross_node_copies():
    free, limited = a2a.remote_nodes(256, 8, 8), a2a.remote_nodes(256, 8, 8, 4)
    assert 8 * 7 / 8 > free > limited  # plain: 7 remote copies; dedup 4.63; node limit 3.18
    assert free == pytest.approx(8 * (1 - comb(224, 8) / comb(256, 8)) * 7 / 8)
    assert limited == pytest.approx(4 * (1 - comb(96, 8) / comb(128, 8)) * 7 / 8)
    assert a2a.remote_nodes(256, 8, 1) == 0.0


def _dsv3(nodes: int = 8) -> Problem:
    mf = load_model(DSV3)
    hw = load_hardware(PROBLEMS / "hw" / "h800-32node.yaml")
    hw = HardwareSpec(hw.name, hw.gpu, nodes, hw.gpus_per_node, hw.intra, hw.inter)
    return Problem(mf.model, hw, mf.workload)


def _moe_cost(p: Problem, **kw):
    s = Strategy(p.hw.num_gpus, tp=1, dp=p.hw.num_gpus, ep=p.hw.num_gpus, **kw)
    return layer_cost(p, s, 5, MoEState(), strategy_groups(p, s))


def test_deepep_moves_fewer_nic_bytes_than_the_plain_all_to_all():
    grouped = _dsv3(8)  # EP 64 over 8 nodes: NIC-bound
    p = replace(grouped, model=replace(grouped.model, router_groups=0, router_group_topk=0))
    plain, deep = _moe_cost(p), _moe_cost(p, moe_dispatcher="deepep")
    limited = _moe_cost(p, moe_dispatcher="deepep", a2a_node_limit=4)
    fp8 = _moe_cost(p, moe_dispatcher="deepep", a2a_node_limit=4, a2a_fp8=True)
    assert plain.ep_fwd > deep.ep_fwd > limited.ep_fwd > fp8.ep_fwd
    # the model's own 8 router groups, top 4, one group a node: node-limited to 4
    assert _moe_cost(grouped, moe_dispatcher="deepep").ep_fwd == pytest.approx(limited.ep_fwd)
    # the NIC part alone sets DeepEP's time here: S / k x R / (NIC x eff), dispatch + combine
    T = p.workload.seq_len
    S = T * 8 * 7168 * 2
    nic = p.hw.inter.bytes_per_s * p.calib.link("inter")
    one = S / 8 * a2a.remote_nodes(256, 8, 8, 4) / nic + p.hw.inter.latency_s
    assert limited.ep_fwd == pytest.approx(2 * one)
    assert fp8.ep_bytes == pytest.approx(T * 8 * 7168 * (1 + 1 / 32 + 2) / 2)


def test_deepep_inside_one_domain_is_the_nvlink_all_to_all():
    p = _dsv3(1)
    assert _moe_cost(p, moe_dispatcher="deepep").ep_fwd == pytest.approx(_moe_cost(p).ep_fwd)


def test_overlap_hides_behind_the_other_micro_batch_and_pays_the_sm_share():
    p = _dsv3(8)
    plain = _moe_cost(p, moe_dispatcher="deepep")
    over = _moe_cost(p, moe_dispatcher="deepep", a2a_overlap=True)
    assert over.ep_link == pytest.approx(plain.ep_link)  # the same transfers on the link
    exposed = over.ep_fwd + over.ep_bwd
    share = 20 / 132
    assert share * 2 * plain.ep_link * (1 - 1e-9) <= exposed < plain.ep_fwd + plain.ep_bwd
    assert over.compute_fwd == plain.compute_fwd  # the SM share is charged as exposed comm


def test_window_formula():
    assert a2a.window(1.0, 5.0, 0.0) == 0.0
    assert a2a.window(1.0, 5.0, 0.2) == pytest.approx(0.2)
    assert a2a.window(3.0, 1.0, 0.2) == pytest.approx(2.0)


def test_megatron_rules():
    with pytest.raises(StrategyError, match="full"):
        Strategy(8, dp=8, ep=8, recompute="full", a2a_overlap=True)
    with pytest.raises(StrategyError, match="interleaving"):
        Strategy(8, pp=2, dp=4, ep=4, num_micro_batches=4, a2a_overlap=True)
    with pytest.raises(StrategyError, match="ep > 1"):
        Strategy(8, dp=8, a2a_overlap=True)
    with pytest.raises(StrategyError, match="deepep"):
        Strategy(8, dp=8, ep=8, a2a_fp8=True)
    Strategy(8, pp=2, dp=4, ep=4, num_micro_batches=4, virtual_stages=2, a2a_overlap=True)


def test_overlap_holds_one_more_chunk():
    s = Strategy(8, pp=2, dp=4, ep=4, num_micro_batches=8, virtual_stages=2)
    o = Strategy(8, pp=2, dp=4, ep=4, num_micro_batches=8, virtual_stages=2, a2a_overlap=True)
    assert in_flight(o, 0, True) == pytest.approx(in_flight(s, 0, True) + 0.5)
    assert in_flight(Strategy(8, dp=8, ep=8, num_micro_batches=4, a2a_overlap=True), 0,
                     True) == 2


def test_defaults_stay_out_of_the_plan():
    d = Strategy(8, dp=8, ep=8).to_dict()
    assert not {"a2a_overlap", "moe_dispatcher", "a2a_fp8"} & set(d)
    assert Strategy(8, dp=8, ep=8, moe_dispatcher="deepep").to_dict()["moe_dispatcher"] == \
        "deepep"


@pytest.fixture(scope="module")
def deepep_plan():
    """Mixtral on two 4-GPU NVLink domains, EP 8 across both."""
    base = load_hardware(PROBLEMS / "hw" / "h100-8x.yaml")
    hw = HardwareSpec("h100-2x4", base.gpu, 2, 4, base.intra, base.inter)
    pins = {"pp": 1, "ep": 8, "etp": 1, "moe_dispatcher": "deepep", "a2a_fp8": True,
            "a2a_overlap": True}
    return autopar.solve(MIXTRAL, hw, pins=pins, time_limit_s=60)


def test_pinned_options_reach_the_plan_and_pass_check(deepep_plan):
    d = deepep_plan.data
    assert d["strategy"]["moe_dispatcher"] == "deepep" and d["strategy"]["a2a_overlap"]
    ep = [c for c in d["communication"] if c["group"] == "ep"]
    assert ep and ep[0]["overlap"] == "combined-1f1b"
    assert ep[0]["remote_domains_per_token"] == pytest.approx(a2a.remote_nodes(8, 2, 2))
    tokens = d["strategy"]["micro_batch"] * 4096 / d["strategy"]["tp"]
    assert ep[0]["bytes_per_call"] == pytest.approx(tokens * 2 * 4096 * (1 + 1 / 32 + 2) / 2)
    assert 0 < ep[0]["exposed_s"] < ep[0]["time_per_step_s"]
    assert [f for f in autopar.check(deepep_plan) if f.severity == "error"] == []


def test_check_catches_a_wrong_remote_count_and_a_refused_layout(deepep_plan):
    bad = json.loads(deepep_plan.to_json())
    for c in bad["communication"]:
        if c["group"] == "ep":
            c["remote_domains_per_token"] = 7.0
    bad["strategy"]["recompute"] = "full"
    where = {f.path for f in autopar.check(bad) if f.severity == "error"}
    assert any("remote_domains_per_token" in w for w in where)
    assert "strategy.a2a_overlap" in where


def test_search_weighs_the_overlap_and_the_cli_pins_it(tmp_path):
    out = tmp_path / "p.json"
    r = CliRunner().invoke(main, ["solve", "--model", str(MIXTRAL), "--hw",
                                  str(PROBLEMS / "hw" / "h100-8x.yaml"), "--quiet", "--out",
                                  str(out), "--no-a2a-overlap"])
    assert r.exit_code == 0, r.output
    off = json.loads(out.read_text())
    assert "a2a_overlap" not in off["strategy"]
    on = autopar.solve(MIXTRAL, PROBLEMS / "hw" / "h100-8x.yaml", time_limit_s=60)
    assert on.data["strategy"].get("a2a_overlap") is True  # searched, and it wins here
    assert on.data["metrics"]["step_time_s"] < off["metrics"]["step_time_s"]


def test_sglang_export_names_deepep():
    from autopar.export.engines import launch_section

    d = {"tp": 1, "pp": 1, "dp": 8, "ep": 8, "etp": 1, "moe_dispatcher": "deepep"}
    out = launch_section(d, True, 4, 1.0, 0.5, 2.0, 4096, 2)
    assert out["sglang"]["args"]["moe-a2a-backend"] == "deepep"
    assert "moe-a2a-backend" not in launch_section({**d, "moe_dispatcher": "alltoall"}, True, 4,
                                                   1.0, 0.5, 2.0, 4096, 2)["sglang"]["args"]


def test_unknown_sm_count_is_not_searched_and_refused_when_pinned():
    p = _dsv3(8)
    from dataclasses import replace

    hw = replace(p.hw, gpu=replace(p.hw.gpu, sms=None))
    q = Problem(p.model, hw, p.workload)
    with pytest.raises(autopar.InputError, match="sms"):
        _moe_cost(q, a2a_overlap=True)
    from autopar.search.degrees import _a2a_choices

    assert all(not c["a2a_overlap"] for c in _a2a_choices(q, (64, 1, 1, 64, 64, 1, 1), {}))
    assert {c["moe_dispatcher"] for c in _a2a_choices(p, (64, 1, 1, 64, 64, 1, 1), {})} == \
        {"deepep"}  # NIC-bound across 8 nodes: the deduplicated dispatch is kept


def test_group_limited_routing_bounds_the_domains_a_token_reaches():
    """[deepep] The model's router groups: with a group per domain, DeepSeek-V3's top-4 of 8
    groups is node-limited routing to 4 domains; with top-G of G nothing is limited; a hand
    case: 8 experts in 4 groups over 2 domains, top-1 group and top-2 experts reaches one
    domain exactly, the other with half the tokens."""
    assert a2a.remote_nodes(256, 8, 8, 0, 8, 4) == pytest.approx(a2a.remote_nodes(256, 8, 8, 4))
    assert a2a.remote_nodes(256, 8, 8, 0, 8, 8) == pytest.approx(a2a.remote_nodes(256, 8, 8))
    assert a2a.remote_nodes(8, 2, 2, 0, 4, 1) == pytest.approx(0.5)
    assert a2a.remote_nodes(256, 8, 8, 0, 8, 4) < a2a.remote_nodes(256, 8, 8)
    for args in [(256, 8, 16, 0, 8, 4), (256, 8, 4, 0, 8, 4), (160, 6, 8, 0, 8, 3)]:
        assert remote_domains(*args) == pytest.approx(a2a.remote_nodes(*args))  # check agrees
    assert a2a.grouped_reach(256, 8, 6, 8, 4) is None  # groups and domains do not align


def test_router_groups_come_from_hf_and_yaml_and_are_checked(tmp_path):
    cfg = json.loads((PROBLEMS / "models" / "hf" / "deepseek-v3-config.json").read_text())
    m = load_model(PROBLEMS / "models" / "hf" / "deepseek-v3-config.json").model
    assert (m.router_groups, m.router_group_topk) == (cfg["n_group"], cfg["topk_group"])
    greedy = tmp_path / "config.json"
    greedy.write_text(json.dumps(cfg | {"topk_method": "greedy"}))
    assert load_model(greedy).model.router_groups == 0
    bad = (PROBLEMS / "models" / "deepseek-v3.yaml").read_text().replace(
        "router_group_topk: 4", "router_group_topk: 9")
    (tmp_path / "bad.yaml").write_text(bad)
    with pytest.raises(autopar.InputError, match="router_group_topk"):
        load_model(tmp_path / "bad.yaml")
