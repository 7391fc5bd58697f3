"""--framework: each framework's rule table shapes the search (a layout it refuses is never
emitted), the plan records it, `autopar check --framework` reports the rules a plan breaks."""

from __future__ import annotations

import copy
import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

import autopar
from autopar.api import make_problem
from autopar.check.finding import Findings
from autopar.check.framework import check_framework
from autopar.check.verify import check_plan
from autopar.cli.app import main
from autopar.errors import InfeasibleError, InputError
from autopar.search import SearchOptions, enumerate_strategies
from autopar.search.degrees import strategy_values
from autopar.serve.frontier import layouts
from autopar.spec import load_model, parse_workload
from autopar.spec.frameworks import (
    FRAMEWORKS,
    LAYOUT_DEFAULTS,
    layout_values,
    load_framework,
    parse_framework,
)

ROOT = Path(__file__).resolve().parents[1]
PROBLEMS = ROOT / "problems"
NAMES = FRAMEWORKS[1:]
RULES = [(n, r) for n in NAMES for r in load_framework(n).rules]
# small instances whose spaces hold layouts that break most rules: (model, hardware)
TRAIN = [("seed-moe.yaml", "seed-3gpu.yaml"), ("mixtral-8x7b.yaml", "h100-8x.yaml"),
         ("llama3-70b.yaml", "h100-4node.yaml")]
SERVE = [("mixtral-8x7b-serve.yaml", "h100-8x.yaml"), ("qwen3-30b-a3b.yaml", "h100-8x.yaml")]


def _problem(model: str, hw: str):
    return make_problem(PROBLEMS / "models" / model, PROBLEMS / "hw" / hw)


def _witness(rule, moe: bool) -> dict:
    """A layout (with model facts) that breaks `rule`, found by seeded random sampling."""
    rng = random.Random(rule.id)
    domain = {"tp": [1, 2, 4, 8], "pp": [1, 2, 4], "dp": [1, 2, 4], "ep": [1, 2, 4, 8],
              "etp": [1, 2, 4], "cp": [1, 2, 4], "zero": [0, 1, 2, 3],
              "virtual_stages": [1, 2, 3], "spare_slots": [0, 1],
              "cp_comm": ["p2p", "a2a"], "moe_dispatcher": ["alltoall", "deepep"],
              "pipeline_schedule": ["1f1b", "dualpipe", "dualpipev"],
              "moe_capacity_factor": [0.0, 1.0], "recompute": ["none", "selective", "full"],
              "micro_batch": [1, 2, 4], "num_micro_batches": [1, 2, 4, 8]}
    for _ in range(20_000):
        lay = {k: rng.choice(v) for k, v in domain.items()}
        lay.update({k: rng.random() < 0.5 for k, v in LAYOUT_DEFAULTS.items()
                    if isinstance(v, bool)})
        values = layout_values(lay, rng.choice([30, 32, 61]), rng.choice([6, 8]) if moe else 0,
                               rng.choice([4096, 4100]), 32, rng.choice([0, 8, 12, 64]))
        if rule.breaks(values):
            return lay | {"_facts": values}
    raise AssertionError(f"no layout breaks {rule.id}")


def test_every_table_loads_with_a_source_per_rule_and_the_schema_names_them():
    schema = json.loads((ROOT / "autopar/schema/plan.schema.json").read_text())
    names = schema["properties"]["strategy"]["properties"]["framework"]["properties"]["name"]
    assert tuple(names["enum"]) == NAMES
    for n in NAMES:
        fw = load_framework(n)
        assert fw.name == n and fw.versions and fw.rules
        assert all(r.source.strip() and r.why.strip() for r in fw.rules)
    assert load_framework("any") is None


@pytest.mark.parametrize("name,rule", RULES, ids=[f"{n}:{r.id}" for n, r in RULES])
def test_each_rule_refuses_a_layout_that_breaks_it(name, rule):
    """Check reports the rule, naming its field and source, on a plan with such a layout."""
    w = _witness(rule, moe=True)
    facts = w.pop("_facts")
    fw = load_framework(name)
    assert rule in fw.broken(facts) and fw.refuses(facts)
    f = Findings()
    model = replace(load_model(PROBLEMS / "models/mixtral-8x7b.yaml").model,
                    layers=facts["layers"], experts=facts["experts"] or 8)
    wl = parse_workload(_workload(fw.kinds[0], facts), "test")
    check_framework(f, {"strategy": w}, name, model, wl)
    hits = [x for x in f.items if rule.id in x.message]
    assert hits and hits[0].path == f"strategy.{rule.field}" and rule.source in hits[0].message


def _workload(kind: str, facts: dict) -> dict:
    if kind == "training":
        return {"kind": "training", "global_batch": facts["global_batch"] or 8,
                "seq_len": facts["seq_len"]}
    return {"kind": "inference", "batch": 8, "phase": "decode", "input_len": 128,
            "output_len": 16}


@pytest.mark.parametrize("name", [n for n in NAMES if load_framework(n).kinds == ("training",)])
@pytest.mark.parametrize("model,hw", TRAIN)
def test_training_enumeration_never_emits_a_refused_layout(name, model, hw):
    p = _problem(model, hw)
    fw = load_framework(name)
    every = enumerate_strategies(p, SearchOptions())
    kept = enumerate_strategies(p, SearchOptions(framework=name))
    assert kept, "the framework still runs something here"
    assert not [s for s in kept if fw.refuses(strategy_values(p, s))]
    refused = [s for s in every if fw.refuses(strategy_values(p, s))]
    assert not set(refused) & set(kept)


@pytest.mark.parametrize("name", ["vllm", "sglang", "trtllm"])
@pytest.mark.parametrize("model,hw", SERVE)
def test_serving_layouts_follow_the_engine(name, model, hw):
    p = _problem(model, hw)
    fw = load_framework(name)
    lays = layouts(p, SearchOptions(framework=name))
    assert lays
    for lay in lays:
        v = strategy_values(p, lay.strategy(p.hw.num_gpus))
        assert not fw.refuses(v)
        W = lay.tp * lay.dp
        if name == "vllm":
            assert (lay.ep, lay.etp) in ((W, 1), (1, W))
        else:
            assert lay.ep * lay.etp == W
    every = layouts(p, SearchOptions())
    assert len(every) > len(lays)  # the rules bind on these MoE models


@pytest.fixture(scope="module")
def megatron_plan() -> dict:
    return autopar.solve(PROBLEMS / "models/llama3-70b.yaml", PROBLEMS / "hw/h100-4node.yaml",
                         framework="megatron", time_limit_s=20).data


def test_megatron_moves_a_zero3_with_pp_plan_to_a_valid_one(megatron_plan):
    """`any` picks ZeRO-3 with PP 4 here (golden llama3-70b-training); Megatron-FSDP takes no
    PP, so megatron's plan differs, keeps ZeRO-2/3 off the pipeline, checks clean, and is
    no faster than the unrestricted optimum."""
    free = json.loads((ROOT / "tests/golden/llama3-70b-training.json").read_text())
    assert free["strategy"]["zero"] >= 2 and free["strategy"]["pp"] > 1
    s = megatron_plan["strategy"]
    assert not (s["zero"] >= 2 and s["pp"] > 1)
    assert s["framework"] == load_framework("megatron").record()
    assert megatron_plan["metrics"]["step_time_s"] >= free["metrics"]["step_time_s"]
    findings = check_plan(megatron_plan)
    assert not [x for x in findings if x.severity == "error"]


def test_check_flags_a_hand_edited_plan(megatron_plan):
    edited = copy.deepcopy(megatron_plan)
    edited["strategy"]["zero"] = 3
    edited["strategy"]["pp"] = max(2, edited["strategy"]["pp"])
    errs = [x for x in check_plan(edited) if x.check == "framework"]
    assert [x.path for x in errs] == ["strategy.zero"]
    assert "zero23-is-fsdp-without-pp" in errs[0].message
    # checked against another framework: that one's rules, and a warning that it differs
    other = [x for x in check_plan(megatron_plan, framework="torchtitan")
             if x.check == "framework"]
    assert megatron_plan["strategy"]["zero"] == 1  # torchtitan's FSDP2 has no ZeRO-1
    assert {(x.severity, x.path) for x in other} == {
        ("error", "strategy.zero"), ("warning", "strategy.framework.name")}


def test_check_cli_reports_the_rule(tmp_path):
    plan = json.loads((ROOT / "tests/golden/llama3-70b-training.json").read_text())
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    r = CliRunner().invoke(main, ["check", "--framework", "megatron", "--json", str(path)])
    found = json.loads(r.output)["findings"]
    assert r.exit_code == 1
    assert any(x["check"] == "framework" and x["path"] == "strategy.zero" for x in found)


def test_unknown_framework_is_one_line_listing_the_choices():
    with pytest.raises(InputError) as e:
        autopar.solve(PROBLEMS / "models/seed-moe.yaml", PROBLEMS / "hw/seed-3gpu.yaml",
                      framework="jax")
    assert "\n" not in str(e.value) and all(n in str(e.value) for n in FRAMEWORKS)
    r = CliRunner().invoke(main, ["solve", "--model", str(PROBLEMS / "models/seed-moe.yaml"),
                                  "--hw", str(PROBLEMS / "hw/seed-3gpu.yaml"), "--quiet",
                                  "--json", "--framework", "jax"])
    assert r.exit_code == 2
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "megatron" in lines[0] and "trtllm" in lines[0]


@pytest.mark.parametrize("model,name", [("seed-moe.yaml", "vllm"),
                                        ("seed-moe-serve.yaml", "megatron")])
def test_a_framework_refuses_the_other_kind_of_workload(model, name):
    with pytest.raises(InputError, match="framework") as e:
        autopar.solve(PROBLEMS / "models" / model, PROBLEMS / "hw/seed-3gpu.yaml",
                      framework=name)
    assert "\n" not in str(e.value)


def test_infeasible_names_the_binding_rule():
    with pytest.raises(InfeasibleError, match="zero23-is-fsdp-without-pp"):
        autopar.solve(PROBLEMS / "models/llama3-70b.yaml", PROBLEMS / "hw/h100-4node.yaml",
                      framework="megatron", pins={"pp": 4, "zero": 3}, time_limit_s=5)


@pytest.mark.parametrize("bad,field", [
    ({"rules": [{"id": "x", "field": "tp", "forbid": "__import__('os')", "why": "w",
                 "source": "s"}]}, "rules[0].forbid"),
    ({"rules": [{"id": "x", "field": "tp", "forbid": "tpp > 1", "why": "w",
                 "source": "s"}]}, "rules[0].forbid"),
    ({"rules": [{"id": "x", "field": "tq", "forbid": "tp > 1", "why": "w",
                 "source": "s"}]}, "rules[0].field"),
    ({"rules": [{"id": "x", "field": "tp", "forbid": "tp > 1", "why": "w"}]},
     "rules[0].source"),
    ({"kinds": ["serving"]}, "kinds"),
])
def test_a_broken_table_is_a_one_line_error(bad, field):
    table = {"name": "t", "title": "T", "versions": "1", "kinds": ["training"], "source": "s",
             "rules": []} | bad
    with pytest.raises(InputError) as e:
        parse_framework(table, "t.yaml")
    assert e.value.field == field


def test_the_doc_lists_every_rule_with_its_source():
    doc = (ROOT / "docs/frameworks.md").read_text()
    for name, rule in RULES:
        assert f"`{rule.id}` | `{rule.forbid}`" in doc and rule.source in doc, (name, rule.id)
    lines = doc.splitlines()  # every rule row sits below its table's header separator
    heads = [i for i, x in enumerate(lines) if x == "| rule | refuses | why | source |"]
    assert len(heads) == len(NAMES) and all(lines[i + 1] == "|---|---|---|---|" for i in heads)


def test_a_megatron_run_states_its_stage_cut_with_split_flags():
    """[pipeline-split] Under --framework megatron every pipelined training layout carries
    Megatron's split flags (its cut is Megatron's own, exported exactly); 61 layers on PP 8
    split as 7 x 8 + 5, the most even Megatron accepts."""
    from autopar.search.degrees import SearchOptions, enumerate_strategies
    from autopar.search.splits import megatron_split_options

    p = make_problem(PROBLEMS / "models" / "deepseek-v3-train.yaml",
                     PROBLEMS / "hw" / "h800-32node.yaml")
    got = enumerate_strategies(p, SearchOptions(framework="megatron"))
    piped = [s for s in got if s.pp > 1]
    assert piped and all(s.split_pinned for s in piped)
    opts = megatron_split_options(61, 8, (1,))
    assert {"first_stage_layers": 0, "last_stage_layers": 5} in opts
    assert {"embedding_in_split": True, "loss_in_split": True} in megatron_split_options(
        126, 16, (1,))  # Llama-3.1 405B: 126 + 2 = 128 slots


def test_engines_without_two_batch_overlap_never_plan_it():
    """Two-batch overlap is SGLang's: a vllm / trtllm run plans without it (searched: off;
    pinned on: one line)."""
    from autopar.api import _without_tbo
    from autopar.spec import Workload

    p = make_problem(PROBLEMS / "models" / "qwen3-30b-a3b.yaml", PROBLEMS / "hw" / "h100-8x.yaml",
                     Workload("inference", 64, phase="both", input_len=1024, output_len=256))
    assert p.workload.two_batch_overlap is None
    for name in ("vllm", "trtllm"):
        assert _without_tbo(p, name).workload.two_batch_overlap is False
    assert _without_tbo(p, "sglang").workload.two_batch_overlap is None
    on = replace(p, workload=replace(p.workload, two_batch_overlap=True))
    with pytest.raises(InputError, match="two_batch_overlap"):
        _without_tbo(on, "vllm")


def test_uneven_batch_shares_are_searched_only_where_the_framework_runs_them():
    """[batch-splits-evenly] 64 samples over 7 replicas are 10 on one and 9 on six: `any`
    prices that (paced by the 10), Megatron / torchtitan / DeepSpeed run global / (micro x
    DP) on every rank, so under them the search keeps micro x micro-batches x DP == 64."""
    model, hw = PROBLEMS / "models/mixtral-8x7b.yaml", PROBLEMS / "hw/h100-7gpu.yaml"
    free = autopar.solve(model, hw, time_limit_s=10).data
    fs = free["strategy"]
    assert fs["dp"] == 7 and fs["micro_batch"] * fs["num_micro_batches"] * 7 > 64
    ids = [x.message for x in autopar.check(free, framework="megatron")]
    assert any("batch-splits-evenly" in x for x in ids)
    for name in ("megatron", "torchtitan", "deepspeed"):
        s = autopar.solve(model, hw, time_limit_s=10, framework=name).data["strategy"]
        assert s["micro_batch"] * s["num_micro_batches"] * s["dp"] == 64, name
