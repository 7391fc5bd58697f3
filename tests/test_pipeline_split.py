"""Pipelines as Megatron-Core cuts them: first / last stage pins, interleaving over layers
that do not divide evenly, and the pipeline time of uneven chunks (docs/cost-model.md
[pipeline-split])."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from conftest import PROBLEMS

from autopar.api import check, solve
from autopar.check.recompute import pipeline_time as check_pipeline
from autopar.cost.pipeline import (
    SplitError,
    chunk_counts,
    chunk_share,
    chunked_pipeline,
    megatron_bounds,
    megatron_layout,
    pipeline_time,
)
from autopar.cost.strategy import Strategy, StrategyError
from autopar.search.degrees import virtual_choices
from autopar.spec import load_hardware, load_model


def errors(findings: list) -> list:
    return [f for f in findings if f.severity == "error"]


def test_chunk_share_is_the_largest_chunk():
    assert chunk_share(8, 4) == 0.25
    assert chunk_share(7, 4) == pytest.approx(2 / 7)  # chunks 1 2 2 2
    assert chunk_share(3, 4) == pytest.approx(1 / 3)  # fewer layers than chunks
    assert chunk_counts(7, 4) == [1, 2, 2, 2]  # as Megatron-Bridge: Et|tt|tt|tt
    assert chunk_counts(6, 4) == [1, 2, 2, 1]  # the fill and drain chunks are the small ones


def test_even_chunks_give_the_equal_chunk_formula_exactly():
    busy, counts = [1.0, 1.3, 0.7, 1.1], [6, 6, 6, 6]
    got, bubble = chunked_pipeline(busy, counts, 8, 3)
    assert got == pipeline_time(sum(busy), max(busy), 8, 3)
    assert bubble == pytest.approx(got - 8 * max(busy))
    assert check_pipeline(busy, 8, 3, counts) == pytest.approx(got, rel=1e-15)


def test_uneven_chunks_cost_more_than_the_relaxation_and_check_agrees():
    busy, counts = [1.0, 1.3, 0.7, 1.1], [7, 8, 8, 6]
    got, bubble = chunked_pipeline(busy, counts, 8, 4)
    relaxed = pipeline_time(sum(busy), max(busy), 8, 4)
    assert got > relaxed  # each short stage waits on a chunk larger than a quarter of it
    want = 8 * 1.3 + 1.0 * 2 / 7 + 0.7 * 2 / 8 + 1.1 * 2 / 6
    assert got == pytest.approx(want) and bubble == pytest.approx(want - 8 * 1.3)
    assert check_pipeline(busy, 8, 4, counts) == pytest.approx(got, rel=1e-12)


def test_megatron_first_last_rules():
    assert megatron_bounds(126, 16, 1, first=7, last=7)[:3] == [0, 7, 15]
    assert megatron_bounds(62, 8, 2, embedding=True, loss=True) == [0, 7, 15, 23, 31, 39, 47,
                                                                    55, 62]
    with pytest.raises(SplitError, match="multiples of the virtual stages"):
        megatron_bounds(126, 16, 2, first=7, last=7)
    with pytest.raises(SplitError, match="middle"):
        megatron_bounds(61, 8, 1, first=5, last=5)  # 51 over 6 middle stages
    with pytest.raises(SplitError, match="cannot be combined"):
        megatron_bounds(64, 8, 1, first=4, embedding=True)
    with pytest.raises(StrategyError):
        Strategy(8, pp=8, first_stage_layers=4, loss_in_split=True)


def test_layout_string_of_deepseek_v3_on_pp8_vp4():
    layout = megatron_layout([7, 8, 8, 8, 8, 8, 8, 6], 4, mtp=1)
    chunks = layout.split("|")
    assert len(chunks) == 32 and chunks[0].startswith("E") and chunks[-1].endswith("mL")
    assert layout.count("t") == 61


def test_interleaving_is_offered_where_the_layers_do_not_divide():
    assert virtual_choices(126, 16) == [1, 2, 4]  # the case: no interleaving before
    assert virtual_choices(61, 8) == [1, 2, 4]
    assert virtual_choices(96, 8) == [1, 2, 3, 4, 6, 12]  # divisible: unchanged


def test_pinned_first_stage_is_the_plans_cut_and_passes_check(tmp_path):
    mf = load_model(PROBLEMS / "models" / "llama3-70b.yaml")
    hw = load_hardware(PROBLEMS / "hw" / "h100-4node.yaml")
    plan = solve(mf, hw, pins={"pp": 8, "first_stage_layers": 3, "last_stage_layers": 5},
                 time_limit_s=20)
    counts = [b - a + 1 for a, b in plan.data["strategy"]["stage_layers"]]
    assert counts[0] == 3 and counts[-1] == 5 and set(counts[1:-1]) == {12}
    assert plan.data["strategy"]["first_stage_layers"] == 3
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    assert not errors(check(json.loads(path.read_text()), mf, hw))


def test_uneven_interleaving_plan_passes_check():
    mf = load_model(PROBLEMS / "models" / "deepseek-v3-train.yaml")
    mf = replace(mf, model=replace(mf.model, mtp_layers=0))  # 61 plain layers
    hw = load_hardware(PROBLEMS / "hw" / "h800-32node.yaml")
    plan = solve(mf, hw, pins={"pp": 8, "virtual_stages": 4}, time_limit_s=30)
    s = plan.data["strategy"]
    counts = [b - a + 1 for a, b in s["stage_layers"]]
    assert s["virtual_stages"] == 4 and any(n % 4 for n in counts)  # 61 layers: uneven
    assert not errors(check(plan.data, mf, hw))
    t = plan.data["timing"]
    busy = [st["per_micro_batch_s"] for st in t["per_stage"]]
    assert t["bubble_s"] > (sum(busy) - max(busy)) / 4  # priced above the 1/v relaxation
