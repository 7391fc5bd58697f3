"""Mixed GPU groups (issue 17): the hardware files, the mixed pipeline search, uneven shards,
the check of a mixed plan and the exhaustive oracle on small mixed cases."""

from __future__ import annotations

import json

import pytest
import yaml

from autopar.errors import InputError
from autopar.spec import load_hardware, parse_hardware
from autopar.spec.files import load_any_hardware
from autopar.spec.groups import MixedHardware, fastest, parse_groups, slowest

MIXED = "problems/hw/h100-a100-mixed.yaml"
H100 = {"type": "H100-SXM5-80GB"}
A100 = {"type": "A100-SXM4-80GB"}


def two(**over) -> dict:
    d = {"name": "t", "groups": [
        {"name": "h", "gpu": H100, "gpus_per_node": 8},
        {"name": "a", "gpu": A100, "gpus_per_node": 8}],
        "inter_node": {"bandwidth_gbps": 25, "latency_us": 8}}
    d.update(over)
    return d


def test_one_group_is_todays_spec():
    flat = load_hardware("problems/hw/h100-8x.yaml")
    data = yaml.safe_load(open("problems/hw/h100-8x.yaml"))
    grouped = {"name": data.pop("name"), "groups": [data]}
    assert parse_hardware(grouped, "g.yaml") == flat
    assert load_any_hardware("problems/hw/h100-7gpu.yaml").num_gpus == 7


def test_mixed_file_reads_groups_in_order():
    hw = load_any_hardware(MIXED)
    assert isinstance(hw, MixedHardware)
    assert [g.first_gpu for g in hw.groups] == [0, 8] and hw.num_gpus == 16
    assert hw.group_of(9).hw.gpu.name == "A100-SXM4-80GB"
    assert slowest(hw, "bf16").name == "a100" and fastest(hw, "bf16").name == "h100"
    assert hw.groups[1].hw.intra.bytes_per_s == 300e9
    assert hw.groups[0].hw.inter == hw.inter  # the file's NIC link is each group's default
    both = hw.uniform(hw.groups[1])
    assert both.num_gpus == 16 and both.gpu.name == "A100-SXM4-80GB" and both.nodes == 2
    pcie = load_any_hardware("problems/hw/h100-l40s-pcie.yaml")
    assert pcie.groups[1].hw.intra.bytes_per_s == 25e9


@pytest.mark.parametrize("data, field, words", [
    (two(inter_node=None), "inter_node", "between GPU groups"),
    (two(groups=[{"name": "h", "gpu": {"type": "H999"}, "gpus_per_node": 8}]),
     "groups[0].gpu.type", "unknown GPU"),
    (two(groups=[{"name": "h", "gpu": H100, "gpus_per_node": 8, "colour": 1}]),
     "groups[0].colour", "unknown field"),
    (two(groups=[{"name": "h", "gpu": H100, "gpus_per_node": 8},
                 {"name": "h", "gpu": A100, "gpus_per_node": 8}]), "groups[1].name", "two"),
    (two(groups=[{"name": "h", "gpu": H100, "gpus_per_node": 0}]),
     "groups[0].gpus_per_node", "out of range"),
    (two(groups=[]), "groups", "non-empty"),
])
def test_bad_groups_are_one_line_errors(data, field, words):
    with pytest.raises(InputError) as e:
        parse_groups(data, "bad.yaml")
    assert e.value.source == "bad.yaml" and e.value.field == field
    assert words in e.value.problem and "\n" not in str(e.value)


def test_one_type_paths_refuse_a_mixed_file_in_one_line():
    with pytest.raises(InputError) as e:
        load_hardware(MIXED)
    assert e.value.field == "groups" and "2 GPU groups" in str(e.value)


# --------------------------------------------------------------------------- the search
from autopar.api import make_problem  # noqa: E402
from autopar.cost.evaluate import evaluate  # noqa: E402
from autopar.search import SearchOptions, search  # noqa: E402
from autopar.search.bounds import _CostCache  # noqa: E402
from autopar.search.hetero import (  # noqa: E402
    Rows,
    evaluate_mixed,
    group_problem,
    reference_problem,
    search_mixed,
    stage_groups,
    tables,
)
from autopar.search.stages import _objective  # noqa: E402
from autopar.spec import parse_model  # noqa: E402

TINY = {"model": {"name": "tiny", "layers": 8, "hidden": 2048, "heads": 16, "kv_heads": 4,
                  "head_dim": 128, "ffn_hidden": 8192, "gated_mlp": True, "vocab": 32000,
                  "dtype": "bf16"},
        "workload": {"kind": "training", "global_batch": 16, "seq_len": 2048}}


def small(a: dict, b: dict, gpn: int = 2) -> MixedHardware:
    return parse_groups({"name": "small", "groups": [
        {"name": "fast", "gpu": a, "gpus_per_node": gpn,
         "intra_node": {"bandwidth_gbps": 450}},
        {"name": "slow", "gpu": b, "gpus_per_node": gpn,
         "intra_node": {"bandwidth_gbps": 300}}],
        "inter_node": {"bandwidth_gbps": 25, "latency_us": 8}}, "small.yaml")


def tiny_problem(hw):
    return make_problem(parse_model(TINY, "tiny.yaml"), hw)


def test_two_groups_of_one_type_price_as_the_one_type_pipeline():
    """The mixed evaluation is the homogeneous cost model stage by stage: two H100 groups
    give exactly `evaluate`'s step on the same cluster."""
    mixed = small(H100, H100)
    p = tiny_problem(mixed.groups[0].hw)
    ref = reference_problem(p, mixed, mixed.groups[0])
    opts = SearchOptions()
    gps = [group_problem(p, mixed, g) for g in mixed.groups]
    caches = [_CostCache(gp, opts) for gp in gps]
    from autopar.search import enumerate_strategies

    checked = 0
    for s in enumerate_strategies(ref, opts):
        groups = stage_groups(mixed, s)
        if groups is None or s.pp != 2 or s.dualpipe or checked > 40:
            continue
        t = tables(gps, caches, s, set(groups))
        moe, _ = _CostCache(ref, opts).get(s)
        for b in ([0, 4, 8], [0, 3, 8]):
            want = evaluate(ref, s, b, moe)
            got = evaluate_mixed(t, s, b, groups)
            assert got.step_time == pytest.approx(want.step_time, rel=1e-12)
            # the cut's affine tables are the homogeneous stage model's, row by row
            assert Rows.of(t, s, groups).objective(b) == pytest.approx(
                _objective(t.rows[0], b), rel=1e-12) or s.virtual_stages > 1
        checked += 1
    assert checked > 10


def test_the_slower_group_gets_fewer_layers_and_the_plan_beats_both_one_type_plans():
    mixed = small(H100, A100)
    p = tiny_problem(mixed.groups[0].hw)
    r = search_mixed(p, mixed, SearchOptions(time_limit_s=30))
    ev = r.best
    assert ev is not None and ev.feasible
    names = [r.hw.groups[g].name for g in ev.groups]
    layers = {}
    for k, name in enumerate(names):
        layers[name] = layers.get(name, 0) + ev.bounds[k + 1] - ev.bounds[k]
    per_stage = {n: layers[n] / names.count(n) for n in layers}
    assert per_stage["slow"] < per_stage["fast"]
    slow_all = search(reference_problem(p, mixed, mixed.groups[1]), SearchOptions())
    assert ev.step_time < slow_all.objective


def test_api_and_cli_plan_a_mixed_file(tmp_path):
    from click.testing import CliRunner

    import autopar
    from autopar.cli import main as cli

    hw = tmp_path / "small.yaml"
    hw.write_text(yaml.safe_dump({"name": "small", "groups": [
        {"name": "h", "gpu": H100, "gpus_per_node": 2},
        {"name": "a", "gpu": A100, "gpus_per_node": 2}],
        "inter_node": {"bandwidth_gbps": 25}}))
    model = tmp_path / "tiny.yaml"
    model.write_text(yaml.safe_dump(TINY))
    plan = autopar.solve(str(model), str(hw), time_limit_s=20)
    d = plan.data
    assert d["mixed_groups"] == 1 and {w["group"] for w in d["runs_where"]} == {"h", "a"}
    assert all(st["memory"]["total_bytes"] <= st["memory"]["capacity_bytes"]
               for st in d["stages"])
    assert {st["gpu_type"] for st in d["stages"]} == {"H100-SXM5-80GB", "A100-SXM4-80GB"}
    assert d["compared"]["slowest_type"]["speedup"] > 1
    out = tmp_path / "plan.json"
    res = CliRunner().invoke(cli, ["solve", "--hw", str(hw), "--model", str(model), "--out",
                                   str(out), "--time-limit", "10"])
    assert res.exit_code == 0, res.output
    assert "vs slowest_type" in res.output and out.exists()
    serve = dict(TINY, workload={"kind": "inference", "batch": 8, "input_len": 512,
                                 "output_len": 64, "phase": "decode"})
    model.write_text(yaml.safe_dump(serve))
    res = CliRunner().invoke(cli, ["solve", "--hw", str(hw), "--model", str(model), "--out",
                                   str(out), "--time-limit", "10"])  # one decode step plans
    assert res.exit_code == 0 and "TPOT" in res.output, res.output
    assert json.loads(out.read_text())["metrics"]["tpot_s"] > 0
    serve["workload"]["tpot_ms"] = 50.0  # a target: the serving search, paced by the A100s
    model.write_text(yaml.safe_dump(serve))
    res = CliRunner().invoke(cli, ["solve", "--hw", str(hw), "--model", str(model), "--out",
                                   str(out), "--time-limit", "10"])
    assert res.exit_code == 0 and "uniform plan on the mixed cluster" in res.output, res.output
    res = CliRunner().invoke(cli, ["solve", "--hw", str(hw), "--model", str(model),
                                   "--decode-hw", str(hw)])
    assert res.exit_code == 2 and "--decode-hw" in res.output
    res = CliRunner().invoke(cli, ["frontier", "--hw", str(hw), "--model", str(model),
                                   "--time-limit", "10"])  # the paced cluster's frontier
    assert res.exit_code == 0 and "every GPU priced as the slowest type" in res.output, \
        res.output
    res = CliRunner().invoke(cli, ["frontier", "--hw", str(hw), "--model", str(model),
                                   "--disaggregate"])
    assert res.exit_code == 2 and "2 GPU groups" in res.output


# --------------------------------------------------------------------------- uneven splits
from autopar.search.uneven import (  # noqa: E402
    SplitError,
    apportion,
    expert_slots,
    slowest_rank,
    split_columns,
    split_heads,
)


def test_a_two_gpu_tp_group_of_unequal_speed_splits_heads_by_hand():
    """Llama-3 70B attention (64 heads, 8 KV heads: 8 groups of 8) on a GPU 3x as fast as
    its partner: by hand, rank 0 finishes g groups in g / 3 and rank 1 the rest in 8 - g;
    g / 3 <= 8 - g for g <= 6, so 6 groups (48 heads) and 2 (16 heads), both done in 2
    units, against 4 for the even split (4 / 1 on the slower rank)."""
    split = split_heads(64, 8, [3.0, 1.0])
    assert split.kv_heads == [6, 2] and split.q_heads == [48, 16]
    assert slowest_rank(split.kv_heads, [3.0, 1.0]) == 2.0
    assert slowest_rank([4, 4], [3.0, 1.0]) == 4.0
    # H100 and A100 at their catalogue peaks and measured GEMM fractions: 8 groups over a
    # speed ratio r split as the rounding of 8 r / (r + 1) that minimises the slower rank
    h, a = load_any_hardware(MIXED).groups
    from autopar.spec.groups import speed

    r = speed(h.hw, "bf16") / speed(a.hw, "bf16")
    g = split_heads(64, 8, [r, 1.0]).kv_heads[0]
    assert g == min(range(1, 8), key=lambda k: max(k / r, 8 - k))
    with pytest.raises(SplitError):
        split_heads(64, 8, [1.0] * 9)  # fewer KV groups than ranks


def test_ffn_columns_split_in_whole_tiles_by_speed():
    cols = split_columns(28672, [2.0, 1.0])
    assert sum(cols) == 28672 and all(c % 128 == 0 for c in cols)
    # 224 tiles at 2 : 1: 149.3 and 74.7; 150 / 2 = 75 = 74 + 1, so the faster takes 150
    # (149 / 75 ties at 75 too; ties go to the lower rank) and both finish by 75
    assert cols == [150 * 128, 74 * 128] and slowest_rank([150, 74], [2.0, 1.0]) == 75
    with pytest.raises(SplitError):
        split_columns(1000, [1.0, 1.0])


def test_a_gpu_with_half_the_memory_gets_at_most_its_share_of_expert_slots():
    """8 experts of 10 GB on two equally fast GPUs. 80 GB and 40 GB free: by speed 4 each,
    which both hold. 100 GB and 50 GB with 30 GB of dense state on each: the smaller has
    room for 2 (20 GB), so it holds 2 and the larger 6, under its third of the memory's 8 x
    1/3 = 2.7 slots. 80 and 40 GB with 30 GB dense: 5 + 1 slots cannot hold 8 experts."""
    gb = 1e9
    assert expert_slots(8, [1.0, 1.0], [80 * gb, 40 * gb], 10 * gb) == [4, 4]
    two = expert_slots(8, [1.0, 1.0], [100 * gb, 50 * gb], 10 * gb, [30 * gb, 30 * gb])
    assert two == [6, 2]
    share = 50 / 150  # its share of the memory
    assert two[1] <= share * sum(two) and two[1] <= 2  # 20 GB free: at most 2 slots
    with pytest.raises(SplitError):
        expert_slots(8, [1.0, 1.0], [80 * gb, 40 * gb], 10 * gb, [30 * gb, 30 * gb])
    # Mixtral's 8 experts on a node with one failed GPU: 7 equal GPUs, one holds two
    assert sorted(apportion(8, [1.0] * 7)) == [1, 1, 1, 1, 1, 1, 2]
    # a GPU twice as fast takes twice the experts where memory allows
    assert apportion(9, [2.0, 1.0]) == [6, 3]


# --------------------------------------------------------------------------- check
import copy  # noqa: E402

from autopar.check.mixed import check_mixed  # noqa: E402


@pytest.fixture(scope="module")
def mixed_plan():
    import autopar

    mixed = small(H100, A100)
    return autopar.solve(parse_model(TINY, "tiny.yaml"), mixed, time_limit_s=20).data


def _errors(plan, **kw):
    return [(x.check, x.path) for x in check_mixed(plan, **kw) if x.severity == "error"]


def test_check_passes_a_mixed_plan_and_catches_each_tampering(mixed_plan):
    import autopar

    assert autopar.check(mixed_plan) == []
    slow = next(k for k, st in enumerate(mixed_plan["stages"]) if st["group"] == "slow")
    bad = copy.deepcopy(mixed_plan)  # priced as if on the H100: half the A100 stage's time
    bad["stages"][slow]["busy_s"] /= 1e3
    bad["stages"][slow]["fwd_s"] /= 1e3
    bad["stages"][slow]["bwd_s"] /= 1e3
    assert ("timing", f"stages[{slow}].busy_s") in _errors(bad)
    assert ("timing", "metrics.step_time_s") in _errors(bad)
    bad = copy.deepcopy(mixed_plan)  # the A100 stage held to a larger GPU's memory
    bad["stages"][slow]["memory"]["capacity_bytes"] = 141e9
    assert ("memory", f"stages[{slow}].memory.capacity_bytes") in _errors(bad)
    bad = copy.deepcopy(mixed_plan)
    bad["stages"][slow]["memory"]["weights_bytes"] *= 0.5
    assert ("memory", f"stages[{slow}].memory.weights_bytes") in _errors(bad)
    bad = copy.deepcopy(mixed_plan)  # a stage labelled with the other group
    bad["stages"][slow]["gpu_type"] = "H100-SXM5-80GB"
    assert ("gpus", f"stages[{slow}].group") in _errors(bad)


def test_check_verifies_stated_uneven_heads_and_megatron_refuses_them():
    import autopar

    plan = autopar.solve(parse_model(TINY, "tiny.yaml"), small(H100, A100), pins={"tp": 2},
                         time_limit_s=20).data
    tp = plan["strategy"]["tp"]
    assert tp == 2 and autopar.check(plan) == []
    plan["stages"][0]["tp_heads"] = [16 - 4 * (tp - 1)] + [4] * (tp - 1)
    assert _errors(plan) == []  # whole KV groups of 4 heads: a valid uneven split
    assert ("framework", "stages.tp_heads") in _errors(plan, framework="megatron")
    plan["stages"][0]["tp_heads"] = [3] + [4] * (tp - 1)
    assert ("shards", "stages[0].tp_heads") in _errors(plan)


def test_framework_megatron_plans_only_what_it_runs():
    import autopar

    mf = parse_model(TINY, "tiny.yaml")
    plan = autopar.solve(mf, small(H100, A100), framework="megatron", time_limit_s=20).data
    assert plan["framework"] == "megatron"
    assert autopar.check(plan, framework="megatron") == []
    with pytest.raises(InputError) as e:
        autopar.solve(mf, small(H100, A100), framework="deepspeed", time_limit_s=5)
    assert "runs no pipeline over mixed GPU groups" in str(e.value)


def test_megatron_runs_an_uneven_mixed_cut_by_its_layout_flag():
    """7 layers over an H100 stage and an A100 stage split unevenly: Megatron runs that cut
    with --pipeline-model-parallel-layout, which the plan states (`pipeline_layout`), so
    `check --framework megatron` passes it; the same cut without it breaks the even-split
    rule, as a one-type plan's free cut does."""
    import autopar
    from autopar.export.mixed import mixed_export

    mf = parse_model({**TINY, "model": dict(TINY["model"], layers=7)}, "odd.yaml")
    plan = autopar.solve(mf, small(H100, A100), framework="megatron", time_limit_s=20).data
    counts = [b - a + 1 for a, b in plan["strategy"]["stage_layers"]]
    assert plan["strategy"]["pp"] == 2 and len(set(counts)) == 2
    assert plan["strategy"]["pipeline_layout"] is True
    assert autopar.check(plan, framework="megatron") == []
    assert "--pipeline-model-parallel-layout" in mixed_export(plan, "megatron")
    plan["strategy"]["pipeline_layout"] = False
    assert ("framework", "strategy.pp") in _errors(plan, framework="megatron")


def test_megatron_export_states_the_cut_per_group(mixed_plan):
    from autopar.export.engines import KindError
    from autopar.export.mixed import layout, mixed_export

    assert layout([3, 5], 1) == "Ettt|tttttL"
    assert layout([4, 2], 2) == "Ett|t|tt|tL"
    text = mixed_export(mixed_plan, "megatron")
    counts = [b - a + 1 for a, b in mixed_plan["strategy"]["stage_layers"]]
    assert f"'{layout(counts, mixed_plan['strategy']['virtual_stages'])}'" in text
    for g in mixed_plan["runs_where"]:
        assert f"# group {g['group']} ({g['gpu_type']})" in text
    assert "decoder-first-pipeline-num-layers" not in text
    with pytest.raises(KindError):
        mixed_export(mixed_plan, "torchtitan")


# --------------------------------------------------------------------------- the oracle
from autopar.search.mixed_oracle import exhaustive_mixed  # noqa: E402


@pytest.mark.parametrize("a, b, layers, batch", [
    (H100, A100, 6, 8), (A100, H100, 5, 8), (H100, {"type": "H100-SXM5-80GB"}, 6, 4),
    (H100, A100, 12, 16)])
def test_the_exhaustive_oracle_agrees_on_small_mixed_cases(a, b, layers, batch):
    """Every layout, group order and cut priced in full agrees with the search's best."""
    mixed = small(a, b)
    spec = {"model": dict(TINY["model"], layers=layers),
            "workload": dict(TINY["workload"], global_batch=batch)}
    p = make_problem(parse_model(spec, "tiny.yaml"), mixed.groups[0].hw)
    oracle = exhaustive_mixed(p, mixed)
    got = search_mixed(p, mixed, SearchOptions(time_limit_s=60))
    assert oracle.best is not None and got.best is not None and not got.timed_out
    assert got.best.step_time == pytest.approx(oracle.best.step_time, rel=1e-12)
    assert oracle.evaluated > got.evaluated


# --------------------------------------------------------------------------- generated cases
TYPES = ("H100-SXM5-80GB", "A100-SXM4-80GB", "L40S", "H200-SXM-141GB", "A100-SXM4-40GB")


@pytest.mark.parametrize("seed", range(8))
def test_generated_mixed_problems_solve_and_check(seed):
    """Random groups (type, node size, nodes) and tiny models: every plan the mixed solve
    returns passes `autopar check`, and each stage sits on one group (in the order the
    plan numbers them) and fits that group's GPU."""
    import random

    import autopar
    from autopar.errors import InfeasibleError

    rng = random.Random(seed)
    gpn = rng.choice((1, 2, 4))
    kinds = rng.sample(TYPES, 2)
    data = {"name": f"gen{seed}", "groups": [
        {"name": f"g{i}", "gpu": {"type": t}, "gpus_per_node": gpn,
         "nodes": rng.choice((1, 2)), "intra_node": {"bandwidth_gbps": 300}}
        for i, t in enumerate(kinds)], "inter_node": {"bandwidth_gbps": 25}}
    mixed = parse_groups(data, "gen.yaml")
    spec = {"model": dict(TINY["model"], layers=rng.randint(4, 12)),
            "workload": dict(TINY["workload"], global_batch=rng.choice((8, 16, 32)))}
    framework = ("any", "megatron")[seed % 2]  # megatron: its rules hold on what it plans
    try:
        plan = autopar.solve(parse_model(spec, "gen.yaml"), mixed, time_limit_s=20,
                             framework=framework).data
    except InfeasibleError as exc:
        assert "no layout puts whole stages on every group" in str(exc) or "memory" in str(exc)
        return
    assert autopar.check(plan) == []
    slow = plan["compared"]["slowest_type"].get("step_time_s")
    assert slow is None or plan["metrics"]["step_time_s"] <= slow  # never worse than (a)
    if plan.get("mode") == "uniform":  # one layout paced by the slowest type was fastest
        forms = [c["step_time_s"] for k, c in plan["compared"].items()
                 if k.startswith("mixed_") and c.get("step_time_s")]
        assert all(plan["metrics"]["step_time_s"] <= t for t in forms)
        assert plan["uniform_on"]["paced_by"] == slowest(mixed, "bf16").hw.gpu.name
        return
    where = {g["name"]: range(g["first_gpu"], g["first_gpu"] + g["count"])
             for g in plan["inputs"]["hardware"]["groups"]}
    types = {g.name: g.hw.gpu.name for g in mixed.groups}
    for st in plan["stages"]:
        assert st["memory"]["total_bytes"] <= st["memory"]["capacity_bytes"]
        assert st["gpus"][0] in where[st["group"]] and st["gpus"][1] in where[st["group"]]
        assert types[st["group"]] == st["gpu_type"]


# --------------------------------------------------------------------------- DP shares
from autopar.search.hetero_dp import choose_shares, price, replicas, search_shares  # noqa: E402


def test_shares_by_hand():
    """Two replicas, one 3x as slow per micro-batch, 8 micro-batches: max(m1, 3 m2) with
    m1 + m2 >= 8 is smallest at m2 = 2, m1 = 6 (6 units; 5 + 3 would be 9)."""
    assert choose_shares(8, 1, [1, 1], [0.0, 0.0], [1.0, 3.0]) == [6, 2]
    # a fixed cost on the fast replica moves a share to the slow one: max(4 + m1, 3 m2)
    assert choose_shares(8, 1, [1, 1], [4.0, 0.0], [1.0, 3.0]) == [5, 3]
    # two replicas on the fast group, micro-batches of 2 samples: 2 x 2 x 3 + 1 x 2 x 2 >= 16
    assert choose_shares(16, 2, [2, 1], [0.0, 0.0], [1.0, 2.0]) == [3, 2]


def test_slower_replicas_take_fewer_micro_batches_and_gain_on_equal_shares():
    mixed = small(H100, A100)
    p = tiny_problem(mixed.groups[0].hw)
    sh = search_shares(p, mixed, SearchOptions(time_limit_s=30))
    assert sh is not None and sh.feasible
    fast, slow = sh.micro_batches
    assert slow < fast
    samples = sum(r * m * sh.strategy.micro_batch
                  for r, m in zip(sh.replicas, sh.micro_batches, strict=True))
    assert samples >= p.workload.batch
    # the same shape with equal shares (what one-type DP gives every replica)
    even = -(-p.workload.batch // (sh.strategy.micro_batch * sum(sh.replicas)))
    from dataclasses import replace as _replace

    from autopar.cost.evaluate import evaluate as _evaluate
    from autopar.search.hetero_dp import shares_problem

    times = []
    for g in mixed.groups:
        gp = shares_problem(p, g, sh.strategy)
        moe, costs = _CostCache(gp, SearchOptions()).get(sh.strategy)
        s_even = _replace(sh.strategy, num_micro_batches=even)
        times.append(_evaluate(gp, s_even, sh.bounds, moe, costs).step_time)
    assert sh.step_time < max(times)
    assert replicas(mixed, sh.strategy) == sh.replicas
    assert price(p, mixed, sh.strategy, sh.replicas, {}).step_time == pytest.approx(
        sh.step_time)


def test_a_shares_plan_checks_and_megatron_refuses_it():
    import autopar
    from autopar.export.engines import KindError
    from autopar.export.mixed import mixed_export
    from autopar.plan.mixed_shares import build_shares_plan

    mixed = small(H100, A100)
    p = tiny_problem(mixed.groups[0].hw)
    sh = search_shares(p, mixed, SearchOptions(time_limit_s=30))
    plan = build_shares_plan(p, mixed, SearchOptions(), sh, {}, "any", 0.0)
    assert plan["mode"] == "dp_shares" and autopar.check(plan) == []
    assert ("framework", "shares") in _errors(plan, framework="megatron")
    with pytest.raises(KindError):
        mixed_export(plan, "megatron")
    bad = copy.deepcopy(plan)
    bad["shares"]["slow"]["micro_batches"] -= 1
    assert ("degrees", "shares") in _errors(bad)
    bad = copy.deepcopy(plan)
    slow = next(i for i, st in enumerate(bad["stages"]) if st["group"] == "slow")
    bad["stages"][slow]["memory"]["activations_bytes"] *= 0.5
    assert ("memory", f"stages[{slow}].memory.activations_bytes") in _errors(bad)


def test_one_type_entry_points_refuse_a_mixed_spec_in_one_line():
    import autopar

    mixed = load_any_hardware(MIXED)
    for call in (lambda: autopar.make_problem(parse_model(TINY, "t.yaml"), mixed),
                 lambda: autopar.solve(parse_model(TINY, "t.yaml"), mixed,
                                       calibration="bundled")):
        with pytest.raises(InputError) as e:
            call()
        assert e.value.field == "groups" and "\n" not in str(e.value)


@pytest.mark.parametrize("layers, batch", [(6, 16), (8, 32)])
def test_shares_agree_with_every_split_priced(layers, batch):
    """For the shape and cut the shares search keeps, every split of the batch between the
    two groups (each replica >= 1 micro-batch, the batch covered), priced exactly, is no
    faster than the split it chose."""
    from dataclasses import replace as _replace

    from autopar.cost.evaluate import evaluate as _evaluate
    from autopar.search.hetero_dp import shares_problem

    mixed = small(H100, A100)
    spec = {"model": dict(TINY["model"], layers=layers),
            "workload": dict(TINY["workload"], global_batch=batch)}
    p = make_problem(parse_model(spec, "tiny.yaml"), mixed.groups[0].hw)
    sh = search_shares(p, mixed, SearchOptions(time_limit_s=30))
    s, (r_f, r_s), mb = sh.strategy, sh.replicas, sh.strategy.micro_batch
    probs = [shares_problem(p, g, s) for g in mixed.groups]
    costs = [_CostCache(gp, SearchOptions()).get(s) for gp in probs]

    def step(m: list[int]) -> float:
        return max(_evaluate(gp, _replace(s, num_micro_batches=k), sh.bounds, moe, c).step_time
                   for gp, (moe, c), k in zip(probs, costs, m, strict=True))

    best = min(step([m_f, max(1, -(-(batch - r_f * mb * m_f) // (r_s * mb)))])
               for m_f in range(1, -(-batch // (r_f * mb)) + 1))
    assert sh.step_time == pytest.approx(best, rel=1e-12)


def test_a_mixed_plan_says_when_the_fastest_group_alone_is_faster():
    """8 H200 beside 2 A100-40GB: the tiny model fits the H200s alone, and no mixed form
    that also runs stages or replicas on the small, slow cards can beat them."""
    import autopar
    from autopar.plan.mixed_uniform import uniform_summary

    mixed = parse_groups({"name": "lop", "groups": [
        {"name": "big", "gpu": {"type": "H200-SXM-141GB"}, "gpus_per_node": 8},
        {"name": "old", "gpu": {"type": "A100-SXM4-40GB"}, "gpus_per_node": 1,
         "intra_node": {"bandwidth_gbps": 300}}],
        "inter_node": {"bandwidth_gbps": 12.5}}, "lop.yaml")
    d = autopar.solve(parse_model(TINY, "t.yaml"), mixed, time_limit_s=20).data
    fast = d["compared"]["fast_only"]
    assert fast["step_time_s"] < d["metrics"]["step_time_s"]  # the 12.5 GB/s NIC binds
    # one layout paced by the A100 beats the pipeline and the shares; the H200s alone win
    assert d["mode"] == "uniform" and fast["faster_than_mixed"]
    assert "faster than every form" in uniform_summary(d)
    assert "faster_than_mixed" not in d["compared"]["slowest_type"]
