"""`autopar trace` / `explain` / `plot` (docs/seeing-a-plan.md): what they draw from a plan
must be the plan's own figures."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

import autopar
from autopar.view import rebuild, trace_document

GOLDEN = Path(__file__).parent / "golden"
# 1F1B (seed), interleaved, DualPipeV, plain 1F1B at scale, serving decode
KINDS = ["seed-training", "gpt3-175b-training", "mixtral-training",
         "deepseek-v3-training-256", "llama3-70b-training", "seed-serving", "mixtral-decode"]


def _plan(stem: str) -> dict:
    return json.loads((GOLDEN / f"{stem}.json").read_text())


def _trace(stem: str) -> tuple[dict, dict]:
    plan = _plan(stem)
    return plan, json.loads(json.dumps(trace_document(plan, rebuild(plan, stem))))


@pytest.mark.parametrize("stem", KINDS)
def test_trace_is_chrome_trace_format(stem):
    plan, doc = _trace(stem)
    assert isinstance(doc["traceEvents"], list) and doc["displayTimeUnit"] == "ms"
    named = {(e["pid"], e["tid"]) for e in doc["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    procs = {e["pid"] for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] ==
             "process_name"}
    for e in doc["traceEvents"]:
        assert e["ph"] in ("X", "M")
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        if e["ph"] == "X":
            assert e["ts"] >= 0 and e["dur"] > 0 and isinstance(e["name"], str)
            assert (e["pid"], e["tid"]) in named and e["pid"] in procs
    # one process per stage (plus the prefill step of a serving plan), not one per GPU
    assert len(procs) == plan["strategy"]["pp"] + ("serving" in plan)


@pytest.mark.parametrize("stem", KINDS)
def test_trace_events_nest_and_serialized_streams_do_not_overlap(stem):
    _, doc = _trace(stem)
    by = defaultdict(list)
    for e in doc["traceEvents"]:
        if e["ph"] == "X":
            by[(e["pid"], e["tid"])].append(e)
    eps = 1e-3  # us
    for es in by.values():
        es.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack, top = [], []
        for e in es:  # every event inside its parent, or after it: a proper nesting
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"] + eps:
                stack.pop()
            if stack:
                assert e["ts"] + e["dur"] <= stack[-1]["ts"] + stack[-1]["dur"] + eps, e
            else:
                top.append(e)
            stack.append(e)
        # the top level of a stream is serialized: one pass, bubble or collective at a time
        for a, b in zip(top, top[1:], strict=False):
            assert a["ts"] + a["dur"] <= b["ts"] + eps, (a, b)


@pytest.mark.parametrize("stem", KINDS)
def test_critical_path_adds_up_to_the_step_time(stem):
    plan, doc = _trace(stem)
    crit = [e for e in doc["traceEvents"] if e["ph"] == "X" and e["args"].get("critical")]
    total = sum(e["dur"] for e in crit) / 1e6
    assert total == pytest.approx(plan["timing"]["step_time_s"], rel=1e-3)
    # the critical stage's passes: every micro-batch forward (and backward) once
    passes = [e for e in crit if "micro_batch" in e["args"]]
    m = plan["strategy"]["num_micro_batches"]
    per = 1 if plan["timing"]["schedule"] in ("forward-pipeline", "dualpipe", "dualpipev") else 2
    assert len(passes) == per * m
    assert {e["pid"] for e in passes} == {plan["timing"]["critical_stage"]}


def test_trace_children_are_components_with_flops_and_formulas():
    plan, doc = _trace("seed-training")
    comps = [e for e in doc["traceEvents"] if e["ph"] == "X" and "component" in e["args"]]
    names = {e["args"]["component"] for e in comps}
    assert {"qkv", "attn", "expert_fc1", "router", "lm_head"} <= names
    assert all(e["args"]["flops"] > 0 and e["args"]["formula"] for e in comps
               if e["args"]["component"] != "embedding")
    # forward FLOPs of one stage-0 forward x micro-batches = the plan's per-GPU forward share
    f0 = sum(e["args"]["flops"] for e in comps if e["pid"] == 0
             and e["name"] == e["args"]["component"] and "forward mb0" in _parent(doc, e))
    assert f0 * plan["strategy"]["num_micro_batches"] * 3 == pytest.approx(
        plan["flops"]["per_gpu"][0], rel=1e-6)


def _parent(doc: dict, e: dict) -> str:
    for p in doc["traceEvents"]:
        if (p["ph"] == "X" and p["pid"] == e["pid"] and p["tid"] == e["tid"] and p is not e
                and "micro_batch" in p["args"] and p["ts"] <= e["ts"]
                and e["ts"] + e["dur"] <= p["ts"] + p["dur"] + 1e-3):
            return p["name"]
    return ""


def test_trace_shows_hidden_communication_beside_compute():
    """Mixtral's expert all-to-all overlaps (a2a_overlap): the link time on the EP stream
    exceeds the exposed wait the compute stream shows."""
    _, doc = _trace("mixtral-training")
    x = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    link = sum(e["dur"] for e in x if e["name"].startswith("EP dispatch"))
    wait = sum(e["dur"] for e in x if e["name"] == "wait: EP all-to-all exposed")
    assert link > 0 and link > wait


def test_trace_cli_writes_the_file(tmp_path):
    from click.testing import CliRunner

    from autopar.cli import main

    out = tmp_path / "step.trace.json"
    r = CliRunner().invoke(main, ["trace", str(GOLDEN / "seed-training.json"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["otherData"]["critical_stage"] == 1
    r = CliRunner().invoke(main, ["trace", str(GOLDEN / "make.py")])
    assert r.exit_code == 2 and r.output.count("\n") == 1


def test_trace_api_returns_the_document():
    path, doc = autopar.trace(_plan("seed-training"))
    assert path is None and doc["otherData"]["step_time_s"] == pytest.approx(1.1832, rel=1e-4)


def test_trace_of_the_quick_start_seed_plan():
    """The README quick start's plan, solved here: its trace's critical path is its step."""
    plan = autopar.solve("problems/models/seed-moe.yaml", "problems/hw/seed-3gpu.yaml",
                         time_limit_s=10, seed=0).data
    _, doc = autopar.trace(plan)
    crit = sum(e["dur"] for e in doc["traceEvents"] if e["ph"] == "X"
               and e["args"].get("critical")) / 1e6
    assert crit == pytest.approx(plan["timing"]["step_time_s"], rel=1e-3)


# ----------------------------------------------------------------------------- explain
CASES = [("seed", "problems/models/seed-moe.yaml", "problems/hw/seed-3gpu.yaml"),
         ("mixtral", "problems/models/mixtral-8x7b.yaml", "problems/hw/h100-8x.yaml")]


@pytest.mark.parametrize("name,model,hw", CASES, ids=[c[0] for c in CASES])
def test_explain_runner_up_is_what_its_pinned_solve_gives(name, model, hw):
    plan = autopar.solve(model, hw, time_limit_s=30, seed=0).data
    d = autopar.explain(plan)
    ups = d["runner_ups"]
    assert ups and d["runner_ups_complete"]
    mine = plan["metrics"]["step_time_s"]
    seen = set()
    for u in ups[:3]:
        key = tuple(u["degrees"].values())
        assert key not in seen and u["degrees"] != {k: plan["strategy"].get(k, 1)
                                                     for k in u["degrees"]}
        seen.add(key)
        assert u["step_time_s"] >= mine and u["loses_s"] == pytest.approx(
            u["step_time_s"] - mine)
        pinned = autopar.solve(model, hw, time_limit_s=30, seed=0, pins=u["degrees"]).data
        assert pinned["metrics"]["step_time_s"] == pytest.approx(u["step_time_s"], rel=1e-3)
    steps = [u["step_time_s"] for u in ups]
    assert steps == sorted(steps)


def test_explain_sensitivity_and_flip_are_re_evaluations():
    from autopar.view.explain import KNOBS, runner_up, step_at

    plan = _plan("seed-training")
    rb = rebuild(plan)
    d = autopar.explain(plan)
    other, why = runner_up(plan, rb)
    assert other is not None, why
    for row, knob in zip(d["sensitivity"], KNOBS, strict=True):
        assert row["plus_10pct_s"] == step_at(rb, knob, 1.1)[0]
        f = row["flips_at"]
        if f is None:
            continue
        # just past the flip the runner-up is faster; just before it, not
        past, before = (f * 1.001, f / 1.001) if f > 1 else (f / 1.001, f * 1.001)
        assert step_at(other, knob, past)[0] < step_at(rb, knob, past)[0]
        assert step_at(other, knob, before)[0] >= step_at(rb, knob, before)[0]
    # the seed is compute-bound: more FLOP/s is faster, a larger batch slower
    gemm = d["sensitivity"][2]
    assert gemm["plus_10pct_s"] < plan["metrics"]["step_time_s"] < gemm["minus_10pct_s"]
    assert d["sensitivity"][4]["plus_10pct_s"] > plan["metrics"]["step_time_s"]


def test_explain_binding_names_the_fullest_gpu_and_the_critical_stage():
    plan = _plan("seed-training")
    b = autopar.explain(plan)["binding"]
    assert b["memory"]["stage"] == 0 and b["memory"]["gpus"] == [0]
    assert b["memory"]["utilization"] == plan["metrics"]["memory_max_over_capacity"]
    assert b["stage"]["stage"] == plan["timing"]["critical_stage"]
    assert b["link"]["exposed_s"] == max(c["exposed_s"] for c in plan["communication"])


def test_explain_cli_text_and_json():
    from click.testing import CliRunner

    from autopar.cli import main

    r = CliRunner().invoke(main, ["explain", str(GOLDEN / "seed-training.json")])
    assert r.exit_code == 0, r.output
    assert "runner-ups" in r.output and "flips at" in r.output and "memory: stage 0" in r.output
    r = CliRunner().invoke(main, ["explain", str(GOLDEN / "seed-training.json"), "--json"])
    assert json.loads(r.output)["runner_ups"][0]["degrees"]["dp"] == 3


# ----------------------------------------------------------------------------- plot
def test_plot_writes_three_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    paths = autopar.plot(_plan("seed-training"), tmp_path, stem="seed")
    assert [p.name for p in paths] == ["seed-memory.png", "seed-gantt.png", "seed-breakdown.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_plot_figures_are_the_plans():
    from autopar.view.plot import breakdown, memory_rows

    plan = _plan("seed-training")
    rows = memory_rows(plan)
    assert len(rows) == 3 and [r["ids"] for r in rows] == [[0], [1], [2]]
    for r, pat in zip(rows, plan["gpus"]["memory"], strict=True):
        used = sum(v for k, v in r["terms"].items() if k != "headroom")
        assert used == pytest.approx(pat["memory"]["total_bytes"])
        assert r["terms"]["headroom"] == pytest.approx(pat["memory"]["headroom_bytes"])
    b = breakdown(rebuild(plan))
    crit = plan["timing"]["critical_stage"]
    assert sum(b[crit].values()) == pytest.approx(plan["timing"]["step_time_s"], rel=1e-9)
    assert b[crit]["optimizer"] == pytest.approx(plan["timing"]["per_stage"][crit]
                                                 ["optimizer_s"])
    assert all(sum(v.values()) == pytest.approx(plan["timing"]["step_time_s"], rel=1e-9)
               for v in b.values())
    assert "idle (waiting for other stages)" in b[2]  # the last stage drains first


def test_memory_rows_group_large_clusters():
    """DeepSeek-V3 on 256 H800: four stage patterns of 64 GPUs, not 256 bars."""
    from autopar.view.plot import memory_rows

    rows = memory_rows(_plan("deepseek-v3-training-256"))
    assert len(rows) == 4 and sum(len(r["ids"]) for r in rows) == 256


def test_plot_without_matplotlib_is_one_line(monkeypatch, tmp_path):
    import sys

    from click.testing import CliRunner

    from autopar.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    r = CliRunner().invoke(main, ["plot", str(GOLDEN / "seed-training.json"), "--out",
                                  str(tmp_path)])
    assert r.exit_code == 2 and "autopar[plot]" in r.output and r.output.count("\n") == 1
