"""NVLink domains that are not nodes (GB200 / GB300 NVL72: 18 trays of 4 in one domain) and
full-mesh fabrics (MI300X): the link every group uses, the search's TP limit, the plan's
`link` names, `autopar check` agreeing with the solve, and bad domain values refused."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
from conftest import PROBLEMS

from autopar.api import solve
from autopar.check.echo import hardware_from_echo
from autopar.check.links import link_bw
from autopar.check.verify import check_plan, format_findings
from autopar.cost import comm
from autopar.cost.layer import Problem, strategy_groups
from autopar.cost.strategy import Strategy
from autopar.errors import InputError
from autopar.search.degrees import SearchOptions, enumerate_strategies
from autopar.spec import GB, load_hardware, parse_hardware, parse_model

NVL72 = load_hardware(PROBLEMS / "hw" / "gb200-nvl72.yaml")
NVL72X2 = load_hardware(PROBLEMS / "hw" / "gb200-nvl72x2.yaml")
MI300X = load_hardware(PROBLEMS / "hw" / "mi300x-8x.yaml")

MOE = {"model": {"name": "moe72", "layers": 4, "hidden": 256, "heads": 8, "kv_heads": 8,
                 "head_dim": 32, "ffn_hidden": 512, "gated_mlp": True, "vocab": 1000,
                 "experts": 72, "top_k": 2, "expert_ffn_hidden": 256},
       "workload": {"kind": "training", "global_batch": 288, "seq_len": 256}}


def hgx(nodes: int) -> object:
    return parse_hardware({"name": f"{nodes}x8", "gpu": {"type": "H100-SXM5-80GB"},
                           "nodes": nodes, "gpus_per_node": 8,
                           "inter_node": {"bandwidth_gbps": 50}}, "test")


def groups(hw, **degrees):
    return strategy_groups(SimpleNamespace(hw=hw), Strategy(hw.num_gpus, **degrees))


def errors(plan: dict, hw=None) -> list:
    return [x for x in check_plan(plan, hw=hw) if x.severity == "error"]


# --------------------------------------------------------------------------- the spec
def test_problem_files_describe_trays_and_racks():
    assert (NVL72.nodes, NVL72.gpus_per_node, NVL72.nvlink_domain, NVL72.domains) == (
        18, 4, 72, 1)
    assert (NVL72X2.num_gpus, NVL72X2.nvlink_domain, NVL72X2.domains) == (144, 72, 2)
    assert NVL72.intra.bytes_per_s == 900 * GB and NVL72.inter.bytes_per_s == 50 * GB
    gb300 = load_hardware(PROBLEMS / "hw" / "gb300-nvl72.yaml")
    assert (gb300.nvlink_domain, gb300.gpus_per_node, gb300.inter.bytes_per_s) == (
        72, 4, 100 * GB)  # one 800 Gb/s ConnectX-8 per GPU
    # trays are still the nodes (ids, NICs); domains group whole trays
    assert [NVL72X2.node_of(g) for g in (3, 4, 71, 72)] == [0, 1, 17, 18]
    assert [NVL72X2.domain_of(g) for g in (3, 4, 71, 72, 143)] == [0, 0, 0, 1, 1]


def test_default_domain_is_the_node_and_the_catalogue_gives_gb200_its_rack():
    h = hgx(4)
    assert h.nvlink_domain == 8 and h.domains == 4 and h.intra_topology == "switch"
    tray = {"name": "t", "gpu": {"type": "GB200"}, "gpus_per_node": 4}
    assert parse_hardware({**tray, "nodes": 36, "inter_node": {"bandwidth_gbps": 50}},
                          "t").nvlink_domain == 72
    # a cluster smaller than a rack is one domain (and needs no inter link)
    assert parse_hardware({**tray, "nodes": 2}, "t").nvlink_domain == 8


@pytest.mark.parametrize("domain, problem", [
    (6, "not a whole number of nodes of 4"),
    (40, "does not divide the 144 GPUs"),
    (0, "out of range"),
    ("72", "expected an integer"),
    (72.5, "expected an integer"),
])
def test_bad_domain_is_one_line_naming_file_and_field(domain, problem):
    data = {"name": "x", "gpu": {"type": "GB200"}, "nodes": 36, "gpus_per_node": 4,
            "nvlink_domain": domain, "intra_node": {"bandwidth_gbps": 900},
            "inter_node": {"bandwidth_gbps": 50}}
    with pytest.raises(InputError) as e:
        parse_hardware(data, "rack.yaml")
    msg = str(e.value)
    assert "rack.yaml" in msg and "nvlink_domain" in msg and problem in msg
    assert "\n" not in msg


def test_catalogue_default_that_does_not_fit_says_to_state_the_field():
    data = {"name": "x", "gpu": {"type": "GB300"}, "nodes": 20, "gpus_per_node": 4,
            "inter_node": {"bandwidth_gbps": 100}}
    with pytest.raises(InputError, match="nvlink_domain.*catalogue default 72"):
        parse_hardware(data, "rack.yaml")


# --------------------------------------------------------------------------- the links
def test_72_gpu_ep_group_is_intra_in_a_rack_and_inter_on_9_hgx_nodes():
    ep = list(range(72))
    rack = comm.group_link(NVL72, ep)
    assert (rack.name, rack.nodes, rack.cross_fraction) == ("intra", 1, 0.0)
    assert rack.link.bytes_per_s == 900 * GB
    nine = comm.group_link(hgx(9), ep)
    assert (nine.name, nine.nodes) == ("inter", 9)
    assert nine.cross_fraction == pytest.approx(64 / 71)
    # the all-to-all on the rack moves nothing over the NICs
    eff = {"intra": 1.0, "inter": 1.0}
    t_rack = comm.all_to_all(1e9, rack, NVL72, eff)
    assert t_rack == pytest.approx(71 / 72 * 1e9 / (900 * GB) + NVL72.intra.latency_s)
    assert comm.all_to_all(1e9, nine, hgx(9), eff) > 5 * t_rack


@pytest.mark.parametrize("size", [18, 24, 36, 72])
def test_tp_and_ep_up_to_72_stay_on_nvlink_and_dp_crosses_the_racks(size):
    g = groups(NVL72X2, tp=size, dp=144 // size)
    assert g["tp"].name == "intra" and g["tp"].link.bytes_per_s == 900 * GB
    assert g["dp"].name == "inter" and g["dp"].nodes == 2
    # DP members in each rack run one ring each out of their own NICs
    per_rack = 72 // size
    assert g["dp"].link.bytes_per_s == min(per_rack * 50 * GB, 900 * GB)
    e = groups(NVL72X2, dp=144, ep=size)
    assert e["ep"].name == "intra" and e["edp"].name == "inter"
    # on HGX nodes of 8 the same groups leave the node
    assert groups(hgx(18), tp=size, dp=144 // size)["tp"].name == "inter"


def test_tp_limit_is_the_domain_not_the_tray():
    mf = model_file()
    tps = {s.tp for s in enumerate_strategies(Problem(mf.model, NVL72, mf.workload),
                                              SearchOptions())}
    assert max(tps) == 8 > NVL72.gpus_per_node  # the 8 heads bound TP, not the 4-GPU tray
    trays = replace(NVL72, nodes_per_domain=1)
    assert max(s.tp for s in enumerate_strategies(Problem(mf.model, trays, mf.workload),
                                                   SearchOptions())) == 4


def model_file():
    return parse_model(MOE, "moe72")


# --------------------------------------------------------------------------- mesh
def test_mesh_collective_drives_k_minus_1_peer_links():
    assert MI300X.intra_topology == "mesh" and MI300X.intra.bytes_per_s == 64 * GB
    assert comm.group_link(MI300X, list(range(8))).link.bytes_per_s == 7 * 64 * GB
    assert comm.group_link(MI300X, [0, 1]).link.bytes_per_s == 64 * GB
    assert comm.group_link(MI300X, [0, 1, 2, 3]).link.bytes_per_s == 3 * 64 * GB
    # check recomputes the same rates on its own
    assert link_bw(MI300X, [list(range(8))]) == 7 * 64 * GB
    assert link_bw(MI300X, [[0, 1], [2, 3]]) == 64 * GB
    # an NVSwitch gives every group its port rate
    h = hgx(1)
    assert comm.group_link(h, [0, 1]).link == comm.group_link(h, list(range(8))).link


def test_mesh_topology_is_read_and_refused_when_unknown():
    base = {"name": "m", "gpu": {"type": "H100-SXM5-80GB"}, "nodes": 1, "gpus_per_node": 8}
    assert parse_hardware(base, "x").intra_topology == "switch"
    mesh = {**base, "intra_node": {"bandwidth_gbps": 64, "topology": "mesh"}}
    assert parse_hardware(mesh, "x").intra_topology == "mesh"
    with pytest.raises(InputError, match="intra_node.topology"):
        parse_hardware({**base, "intra_node": {"bandwidth_gbps": 64, "topology": "ring"}},
                       "x")


# --------------------------------------------------------------------------- solve + check
@pytest.fixture(scope="module")
def rack_plan() -> dict:
    plan = solve(model_file(), NVL72X2, pins={"ep": 72, "tp": 1, "pp": 1}, time_limit_s=6.0,
                 seed=0, workers=1)
    return json.loads(plan.to_json())


def test_plan_on_two_racks_uses_nvlink_for_ep_and_nics_for_dp_and_passes_check(rack_plan):
    found = errors(rack_plan)
    assert not found, format_findings(found)
    links = {(c["group"], c["link"]) for c in rack_plan["communication"]}
    assert ("ep", "intra") in links
    assert any(g in ("dp", "edp") and link == "inter" for g, link in links)
    echo = rack_plan["inputs"]["hardware"]
    assert echo["nvlink_domain"] == 72 and echo["gpus_per_node"] == 4
    back = hardware_from_echo(echo, "plan")
    assert (back.nodes_per_domain, back.intra_topology) == (18, "switch")


def test_check_refuses_the_rack_plan_on_hardware_without_the_domain(rack_plan):
    """The same plan checked against 36 separate trays: its EP group would leave the trays,
    so the plan's `intra` is wrong, and check's own bound on the group drops to the NICs."""
    trays = replace(NVL72X2, nodes_per_domain=1)
    found = errors(rack_plan, hw=trays)
    i = next(i for i, c in enumerate(rack_plan["communication"]) if c["group"] == "ep")
    assert f"communication[{i}].link" in {x.path for x in found}, format_findings(found)
    ep = [list(range(72)), list(range(72, 144))]
    assert link_bw(NVL72X2, ep) == 900 * GB
    assert link_bw(trays, ep) == 4 * 50 * GB  # rings: 4 per tray, each out of its NIC
    assert link_bw(trays, ep, all_to_all=True) == 950 * GB  # NIC + NVLink at once
    assert link_bw(NVL72X2, [list(range(144))]) == 900 * GB  # 72 rings per rack, NVLink-capped
    assert link_bw(trays, [list(range(144))]) == 4 * 50 * GB  # 4 rings per tray


def test_check_catches_a_link_name_that_lies(rack_plan):
    plan = json.loads(json.dumps(rack_plan))
    i = next(i for i, c in enumerate(plan["communication"]) if c["group"] == "ep")
    plan["communication"][i]["link"] = "inter"
    found = errors(plan)
    assert [x.path for x in found] == [f"communication[{i}].link"], format_findings(found)


def test_mi300x_node_plan_passes_check():
    plan = json.loads(solve(model_file(), MI300X, pins={"ep": 8}, time_limit_s=3.0,
                            seed=0, workers=1).to_json())
    found = errors(plan)
    assert not found, format_findings(found)
    assert plan["inputs"]["hardware"]["intra_node"]["topology"] == "mesh"


TINY_MOE = {"name": "tiny-moe", "layers": 4, "hidden": 128, "heads": 8, "kv_heads": 4,
            "head_dim": 16, "ffn_hidden": 256, "gated_mlp": True, "vocab": 500,
            "experts": 8, "top_k": 2, "expert_ffn_hidden": 128}
WORKLOADS = {"training": {"kind": "training", "global_batch": 16, "seq_len": 64},
             "decode": {"kind": "inference", "phase": "decode", "batch": 16,
                        "input_len": 64, "output_len": 16}}


@pytest.mark.parametrize("nodes, gpn, domain, topology", [
    (4, 2, 4, "switch"), (4, 2, 8, "switch"), (2, 4, 8, "mesh"), (4, 2, 4, "mesh")])
@pytest.mark.parametrize("kind", sorted(WORKLOADS))
@pytest.mark.parametrize("pins", [{}, {"tp": 4}, {"ep": 8}])
def test_solve_and_check_agree_over_domains_and_meshes(nodes, gpn, domain, topology, kind,
                                                        pins):
    """Plans over domains of several nodes, or meshes, pass `check`, and each collective's
    link is the one its group spans by domain."""
    hw = parse_hardware({"name": "d", "gpu": {"memory_gb": 40, "tflops": {"bf16": 200},
                                              "hbm_tbps": 2.0},
                         "nodes": nodes, "gpus_per_node": gpn, "nvlink_domain": domain,
                         "intra_node": {"bandwidth_gbps": 100, "topology": topology},
                         "inter_node": {"bandwidth_gbps": 10}}, "d")
    mf = parse_model({"model": TINY_MOE, "workload": WORKLOADS[kind]}, "tiny")
    plan = json.loads(solve(mf, hw, pins=pins, time_limit_s=2.0, seed=0,
                            workers=1).to_json())
    found = errors(plan)
    assert not found, format_findings(found)
    s = plan["strategy"]
    for c in plan["communication"]:
        if c["group"] == "tp":
            assert c["link"] == ("intra" if s["tp"] <= domain else "inter")
