"""Every key a plan writes is in autopar/schema/plan.schema.json. The schema leaves unknown
keys allowed (old readers keep reading newer plans), so validation alone never notices a key
the builder added and the schema forgot (`solver.time_limit_reached` and `solver.unbounded`
were such keys): this walks built plans of each kind and asks for every key path."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest
from conftest import PROBLEMS

from autopar.api import solve
from autopar.schema.gpus import records_form
from autopar.schema.rules import schema_problems
from autopar.spec import Workload, load_model

SCHEMA = json.loads((Path(__file__).parents[1] / "autopar/schema/plan.schema.json").read_text())
SEED, SEED_HW = PROBLEMS / "models" / "seed-moe.yaml", PROBLEMS / "hw" / "seed-3gpu.yaml"
SERVE = PROBLEMS / "models" / "seed-moe-serve.yaml"


def resolve(node: dict) -> dict:
    """A schema node with its `$ref` (a local `#/...` pointer) followed."""
    while isinstance(node, dict) and "$ref" in node:
        target = SCHEMA
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def alternatives(node: dict) -> list[dict]:
    """The node and every subschema that may apply to the same value (oneOf, anyOf, allOf,
    if / then / else)."""
    node = resolve(node)
    out = [node]
    for key in ("oneOf", "anyOf", "allOf"):
        for sub in node.get(key, []):
            out += alternatives(sub)
    for key in ("then", "else"):
        if key in node:
            out += alternatives(node[key])
    return out


def undeclared(value, node: dict, path: str = "") -> set[str]:
    """Key paths of `value` that the schema does not declare. An object whose schema lists
    no properties at all is free-form by design (an echo of the inputs, a per-component
    table) and is not looked into."""
    out: set[str] = set()
    subs = alternatives(node)
    if isinstance(value, dict):
        props: dict[str, list] = {}  # each key's schemas, from every alternative
        rest = []
        for s in subs:
            for k, sub in s.get("properties", {}).items():
                props.setdefault(k, []).append(sub)
            if isinstance(s.get("additionalProperties"), dict):
                rest.append(s["additionalProperties"])
        if not props and not rest:
            return out
        for k, v in value.items():
            if k in props or rest:
                out |= undeclared(v, {"anyOf": props.get(k) or rest}, f"{path}.{k}")
            else:
                out.add(f"{path}.{k}")
    elif isinstance(value, list):
        for s in subs:
            if isinstance(s.get("items"), dict):
                for v in value[:20]:
                    out |= undeclared(v, s["items"], f"{path}[]")
    return out


@pytest.fixture(scope="module")
def plans() -> dict[str, dict]:
    mixtral = load_model(PROBLEMS / "models" / "mixtral-8x7b.yaml")
    built = {
        "training": solve(SEED, SEED_HW, time_limit_s=5),
        "training options": solve(replace(mixtral, workload=replace(
                                      mixtral.workload, precision="fp8",
                                      fp8_recipe="blockwise")),
                                  PROBLEMS / "hw" / "h100-8x.yaml",
                                  pins={"tp": 2, "pp": 2, "virtual_stages": 2, "zero": 3,
                                        "overlap_tp_comm": True, "recompute": "full"},
                                  time_limit_s=5),
        "decode step": solve(SERVE, SEED_HW, Workload("inference", batch=8, phase="decode",
                                                      input_len=256, output_len=32),
                             time_limit_s=5),
        "serving": solve(SERVE, SEED_HW, time_limit_s=5, frontier=True, disaggregate=True),
    }
    from test_mixed_serving import HW as SERVE_HW
    from test_mixed_serving import MOE as SERVE_MOE
    from test_mixed_uniform import MODEL as PAIR_MODEL
    from test_mixed_uniform import PAIR

    from autopar.spec import parse_model
    from autopar.spec.groups import parse_groups

    built["uniform on a mixed file"] = solve(parse_model(PAIR_MODEL, "m.yaml"),
                                             parse_groups(PAIR, "pair.yaml"), time_limit_s=10,
                                             framework="megatron")
    built["serving on a mixed file"] = solve(parse_model(SERVE_MOE, "m.yaml"),
                                             parse_groups(SERVE_HW, "ha.yaml"), time_limit_s=10,
                                             disaggregate=True)
    out = {name: json.loads(p.to_json()) for name, p in built.items()}
    out["records form"] = records_form(out["training"])
    return out


@pytest.mark.parametrize("kind", ["training", "training options", "decode step", "serving",
                                  "records form", "uniform on a mixed file",
                                  "serving on a mixed file"])
def test_every_key_a_plan_writes_is_in_the_schema(plans, kind):
    plan = plans[kind]
    if "mixed file" in kind:  # the sections a plan on a mixed file adds are walked too
        assert plan["mode"] == "uniform" and "uniform_on" in plan
        assert ("groups_apart" in plan) == (kind == "serving on a mixed file")
    jsonschema.validate(plan, SCHEMA)
    assert schema_problems(plan) == []  # and by the reader `autopar check` uses
    assert undeclared(plan, SCHEMA) == set()


def test_the_walk_notices_an_undeclared_key(plans):
    plan = json.loads(json.dumps(plans["serving"]))
    plan["solver"]["surprise"] = 1
    plan["launch"]["vllm"]["surprise"] = 2
    plan["gpus"]["experts"][0]["experts"][0]["surprise"] = 3
    assert undeclared(plan, SCHEMA) == {".solver.surprise", ".launch.vllm.surprise",
                                        ".gpus.experts[].experts[].surprise"}
    mixed = json.loads(json.dumps(plans["serving on a mixed file"]))
    mixed["groups_apart"]["groups"][0]["surprise"] = 4
    mixed["uniform_on"]["groups"][0]["surprise"] = 5
    assert undeclared(mixed, SCHEMA) == {".groups_apart.groups[].surprise",
                                         ".uniform_on.groups[].surprise"}


MIXED_SCHEMA = json.loads((Path(__file__).parents[1] / "autopar/schema/mixed.schema.json")
                          .read_text())


@pytest.fixture(scope="module")
def mixed_plans() -> dict[str, dict]:
    """One plan of each mixed form: a pipeline, data-parallel shares, expert slots, and
    expert slots with an inference step's sequence shares."""
    import copy

    from test_hetero import TINY
    from test_mixed_slots import HW, MOE, _serve

    from autopar.spec import parse_model
    from autopar.spec.groups import parse_groups

    small = parse_groups({"name": "small", "groups": [
        {"name": "h", "gpu": {"type": "H100-SXM5-80GB"}, "gpus_per_node": 2},
        {"name": "a", "gpu": {"type": "A100-SXM4-80GB"}, "gpus_per_node": 2}],
        "inter_node": {"bandwidth_gbps": 25}}, "small.yaml")
    shares = copy.deepcopy(TINY)
    shares["workload"]["global_batch"] = 64
    ha = parse_groups(HW, "ha.yaml")
    built = {"pipeline": solve(parse_model(TINY, "m.yaml"), small, time_limit_s=10,
                               framework="megatron"),
             "dp_shares": solve(parse_model(shares, "m.yaml"), small, time_limit_s=10),
             "ep_slots": solve(parse_model(MOE, "m.yaml"), ha, time_limit_s=20),
             "ep_slots decode": solve(parse_model(_serve("decode", 64), "m.yaml"), ha,
                                      time_limit_s=20)}
    return {k: json.loads(p.to_json()) for k, p in built.items()}


@pytest.mark.parametrize("kind", ["pipeline", "dp_shares", "ep_slots", "ep_slots decode"])
def test_every_key_a_mixed_plan_writes_is_in_its_schema(mixed_plans, kind):
    plan = mixed_plans[kind]
    assert plan["mode"] == kind.split()[0] and ("sequence_shares" in plan) == (
        kind == "ep_slots decode")
    jsonschema.validate(plan, MIXED_SCHEMA)
    assert schema_problems(plan, MIXED_SCHEMA) == []
    assert undeclared(plan, MIXED_SCHEMA) == set()


def test_a_malformed_mixed_plan_gets_schema_findings_not_a_crash(mixed_plans):
    """Each broken section is one schema finding naming its path (it was an internal error:
    a KeyError or a TypeError out of the recomputation)."""
    import copy

    from autopar.check.verify import check_plan

    cases = [(["stages"], None, "stages"), (["metrics"], None, "metrics"),
             (["stages", 0, "memory"], "x", "stages[0].memory"),
             (["sequence_shares", "g0"], {"replicas": "x"}, "sequence_shares.g0.replicas")]
    for keys, value, path in cases:
        plan = copy.deepcopy(mixed_plans["ep_slots decode" if keys[0] == "sequence_shares"
                                          else "dp_shares"])
        node = plan
        for k in keys[:-1]:
            node = node[k]
        if value is None:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
        found = check_plan(plan)
        assert found and all(x.check == "schema" for x in found), (path, found)
        assert path in {x.path for x in found}, (path, [x.path for x in found])
