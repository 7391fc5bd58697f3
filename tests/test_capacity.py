"""Token dropping with a capacity factor (docs/cost-model.md [capacity]): Megatron's
capacity formula, the busiest EP rank's expert GEMMs and all-to-all capped or padded at it,
the dropped share from the load profile, `autopar check` recomputing all of it (FLOPs
conserved at the capacity-limited figure), the Megatron export and the pins' rules."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace

import pytest
from click.testing import CliRunner
from conftest import PROBLEMS

import autopar
from autopar.check.capacity import capacity_tokens
from autopar.cli import main
from autopar.cost.capacity import capacity_terms, expert_capacity
from autopar.cost.layer import MoEState, Problem, layer_cost, strategy_groups
from autopar.cost.strategy import Strategy, StrategyError
from autopar.errors import InputError
from autopar.export import megatron_text
from autopar.spec import load_hardware, load_model

MIXTRAL = PROBLEMS / "models" / "mixtral-8x7b.yaml"
H100 = PROBLEMS / "hw" / "h100-8x.yaml"


def _problem(load: str = "uniform") -> Problem:
    mf = load_model(MIXTRAL)
    return Problem(mf.model, load_hardware(H100), replace(mf.workload, expert_load=load))


def _cost(p: Problem, moe: MoEState, **kw):
    s = Strategy(8, tp=1, dp=8, ep=8, **kw)
    return s, layer_cost(p, s, 0, moe, strategy_groups(p, s))


def _experts_time(lc) -> float:
    return sum(c.time_s for c in lc.components if c.role == "expert")


@pytest.mark.parametrize("tokens,k,experts,factor,want", [
    (4096, 2, 8, 1.0, 1024),  # 4096 x 2 / 8
    (4096, 2, 8, 1.25, 1280),
    (1001, 3, 8, 1.0, 376),  # 375.375 rounds up
    (10, 1, 64, 1.0, 1),  # under one token per expert: one slot
])
def test_capacity_is_megatrons_get_capacity(tokens, k, experts, factor, want):
    assert expert_capacity(tokens, k, experts, factor) == want
    assert capacity_tokens(tokens, k, experts, factor) == want  # the checker's own


def test_uniform_load_drops_nothing_at_factor_one_and_padding_costs():
    p = _problem()
    moe = MoEState(1.0, 1)  # EP 8, one expert per rank, balanced
    _, plain = _cost(p, moe)
    s, same = _cost(p, moe, moe_capacity_factor=1.0)
    c = capacity_terms(p, s, 4096, 0, moe)  # mixtral: one 4096-token sample per micro-batch
    assert (c.capacity, c.rows_per_expert, c.dropped, c.padded) == (1024, 8192, 0.0, 0.0)
    assert _experts_time(same) == _experts_time(plain) and same.ep_link == plain.ep_link
    _, pad = _cost(p, moe, moe_capacity_factor=1.25, moe_pad_to_capacity=True)
    assert _experts_time(pad) > _experts_time(plain)
    assert pad.ep_bytes == pytest.approx(1.25 * plain.ep_bytes)  # capacity rows are sent
    assert pad.ep_link > plain.ep_link
    assert pad.flops_fwd > plain.flops_fwd  # padding rows are computed


def test_a_skewed_load_drops_tokens_and_caps_the_busiest_rank():
    p = _problem("zipf:1.2")
    moe = MoEState(2.5, 1)  # the hot expert's rank gets 2.5x the mean
    _, plain = _cost(p, moe)
    s, drop = _cost(p, moe, moe_capacity_factor=1.0)
    c = capacity_terms(p, s, 4096, 0, moe)
    assert 0.1 < c.dropped < 1 and c.busiest == pytest.approx(1.0)
    assert _experts_time(drop) < _experts_time(plain) / 2
    assert drop.ep_link < plain.ep_link and drop.ep_bytes < plain.ep_bytes
    assert drop.flops_fwd < plain.flops_fwd  # dropped copies run no expert FLOPs
    loose = capacity_terms(p, Strategy(8, tp=1, dp=8, ep=8, moe_capacity_factor=4.0), 4096,
                           0, moe)
    assert loose.dropped < c.dropped and loose.busiest == pytest.approx(2.5)


def test_megatron_rules():
    with pytest.raises(StrategyError, match="needs moe_capacity_factor"):
        Strategy(8, dp=8, ep=8, moe_pad_to_capacity=True)
    with pytest.raises(StrategyError, match="flex"):
        Strategy(8, dp=8, ep=8, moe_capacity_factor=1.0, moe_pad_to_capacity=True,
                 moe_dispatcher="deepep")
    with pytest.raises(StrategyError, match=">= 0"):
        Strategy(8, dp=8, ep=8, moe_capacity_factor=-1.0)
    assert "moe_capacity_factor" not in Strategy(8, dp=8, ep=8).to_dict()


@pytest.fixture(scope="module")
def dropping_plan():
    mf = load_model(MIXTRAL)
    wl = replace(mf.workload, expert_load="zipf:1.2")
    pins = {"tp": 1, "pp": 1, "ep": 8, "recompute": "full", "moe_capacity_factor": 1.0}
    return autopar.solve(replace(mf, workload=wl), H100, pins=pins, time_limit_s=20)


def test_the_plan_reports_capacity_and_passes_check(dropping_plan):
    d = dropping_plan.data
    assert d["strategy"]["moe_capacity_factor"] == 1.0
    caps = [e["capacity"] for e in d["experts"]["layers"]]
    assert all(c["capacity_tokens"] == expert_capacity(
        d["strategy"]["micro_batch"] * 4096, 2, 8, 1.0) for c in caps)
    assert all(0 < c["dropped_fraction"] < 1 for c in caps)
    assert "capacity" in d["formulas"]
    assert all(v["passed"] for v in d["validation"])
    assert [f for f in autopar.check(dropping_plan) if f.severity == "error"] == []
    assert d["metrics"]["model_flops_per_step"] < load_model(MIXTRAL).workload.batch * 4096 * 3 \
        * autopar.model.components.model_flops_per_token(load_model(MIXTRAL).model, 4096, True)


@pytest.mark.parametrize("tamper,path", [
    (lambda d: d["experts"]["layers"][0]["capacity"].update(capacity_tokens=1),
     "experts.layers[0].capacity.capacity_tokens"),
    (lambda d: d["experts"]["layers"][3]["capacity"].update(dropped_fraction=0.0),
     "experts.layers[3].capacity.dropped_fraction"),
    (lambda d: d["strategy"].update(moe_capacity_factor=2.0),
     "experts.layers[0].capacity.factor"),
    (lambda d: d["metrics"].update(model_flops_per_step=d["metrics"]["model_flops_per_step"]
                                   * 1.2), "metrics.model_flops_per_step"),
])
def test_check_catches_a_tampered_capacity_figure(dropping_plan, tamper, path):
    bad = json.loads(dropping_plan.to_json())
    tamper(bad)
    assert path in {f.path for f in autopar.check(bad) if f.severity == "error"}


def test_flops_conservation_expects_the_capacity_limited_figure(dropping_plan):
    """A plan claiming the dropless FLOPs (every routed copy computed) fails the
    conservation check: dropped copies run none."""
    bad = json.loads(dropping_plan.to_json())
    del bad["strategy"]["moe_capacity_factor"], bad["strategy"]["moe_pad_to_capacity"]
    del bad["strategy"]["moe_token_drop_policy"]
    for e in bad["experts"]["layers"]:
        del e["capacity"]
    assert "flops.total" in {f.path for f in autopar.check(bad) if f.severity == "error"}


def test_export_round_trip(dropping_plan):
    line = [x for x in megatron_text(dropping_plan.data).splitlines()
            if not x.startswith("#")][0]
    argv = shlex.split(line)
    i = argv.index("--moe-expert-capacity-factor")
    assert float(argv[i + 1]) == 1.0
    assert argv[argv.index("--moe-token-drop-policy") + 1] == "probs"
    assert "--moe-pad-expert-input-to-capacity" not in argv
    d = json.loads(dropping_plan.to_json())
    d["strategy"]["moe_pad_to_capacity"] = True
    assert "--moe-pad-expert-input-to-capacity" in megatron_text(d)


def test_cli_pins_padding_and_serving_refuses(tmp_path):
    out = tmp_path / "p.json"
    r = CliRunner().invoke(main, ["solve", "--model", str(MIXTRAL), "--hw", str(H100),
                                  "--quiet", "--out", str(out), "--ep", "8", "--tp", "1",
                                  "--time-limit", "20", "--moe-capacity-factor", "1.0",
                                  "--moe-pad-to-capacity", "--moe-token-drop-policy",
                                  "position"])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    s = d["strategy"]
    assert (s["moe_capacity_factor"], s["moe_pad_to_capacity"],
            s["moe_token_drop_policy"]) == (1.0, True, "position")
    assert d["experts"]["layers"][0]["capacity"]["padding_fraction"] == 0.0  # F 1, uniform
    assert [f for f in autopar.check(d) if f.severity == "error"] == []
    r = CliRunner().invoke(main, ["solve", "--model",
                                  str(PROBLEMS / "models" / "mixtral-8x7b-serve.yaml"),
                                  "--hw", str(H100), "--quiet", "--moe-capacity-factor", "1"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert "training" in r.output


def test_pins_without_a_factor_are_refused():
    with pytest.raises(InputError, match="moe_capacity_factor"):
        autopar.solve(MIXTRAL, H100, pins={"moe_pad_to_capacity": True}, time_limit_s=5)
