"""`autopar export --to torchtitan`: the TOML parses back (tomllib, torchtitan v0.2.2's key
names) to the plan's layout, the degrees pass torchtitan's ParallelDims checks, and what
torchtitan cannot express is marked inexact with the reason."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import tomllib
from click.testing import CliRunner

from autopar.cli.app import main
from autopar.export import torchtitan_entry, torchtitan_text

GOLDEN = Path(__file__).parent / "golden"
TRAINING = ["mixtral-training", "deepseek-v3-training-megatron", "deepseek-v3-training-256",
            "llama3-70b-training", "gpt3-175b-training", "seed-training", "mixtral-tp-overlap"]


def load(name: str) -> dict:
    return json.loads((GOLDEN / f"{name}.json").read_text())


def parse(plan: dict) -> dict:
    return tomllib.loads(torchtitan_text(plan, "toml"))


def rank_layers(par: dict) -> list[int]:
    """Layers per PP rank as torchtitan places the model parts (pipeline_module_split:
    looped ranks r, r + PP, ...; DualPipeV r and 2 PP - 1 - r)."""
    pp = par["pipeline_parallel_degree"]
    parts = [sum(n.startswith("layers.") for n in p)
             for p in par.get("module_fqns_per_model_part", [])]
    if pp == 1:
        return []
    if par["pipeline_parallel_schedule"] == "DualPipeV":
        return [parts[r] + parts[2 * pp - 1 - r] for r in range(pp)]
    return [sum(parts[r::pp]) for r in range(pp)]


@pytest.mark.parametrize("name", TRAINING)
def test_the_toml_parses_back_to_the_plans_layout(name):
    plan = load(name)
    s, w, m = plan["strategy"], plan["inputs"]["workload"], plan["inputs"]["model"]
    c = parse(plan)
    par, tr = c["parallelism"], c["training"]
    dp = par["data_parallel_replicate_degree"] * par["data_parallel_shard_degree"]
    assert (par["tensor_parallel_degree"], par["pipeline_parallel_degree"],
            par["context_parallel_degree"], dp) == (s["tp"], s["pp"], s.get("cp", 1), s["dp"])
    assert dp * s["tp"] * s["pp"] * s.get("cp", 1) == s["num_gpus"]  # ParallelDims' assert
    if m.get("experts"):
        ep, etp = par["expert_parallel_degree"], par["expert_tensor_parallel_degree"]
        assert (ep, etp) == (s["ep"], s["etp"]) and etp in (1, s["tp"])
        efsdp = par["data_parallel_shard_degree"] * s.get("cp", 1) * s["tp"] / (etp * ep)
        assert efsdp >= 1 and efsdp == int(efsdp)  # the expert mesh fits
    assert tr["global_batch_size"] == w["batch"] and tr["seq_len"] == w["seq_len"]
    if s["pp"] > 1:
        assert par["pipeline_parallel_microbatch_size"] == s["micro_batch"]
        assert tr["local_batch_size"] // s["micro_batch"] == s["num_micro_batches"]
        assert rank_layers(par) == [b - a + 1 for a, b in s["stage_layers"]]
        names = [n for p in par["module_fqns_per_model_part"] for n in p]
        assert names == (["tok_embeddings"] + [f"layers.{i}" for i in range(m["layers"])]
                         + ["norm", "output"])
        chunks = len(par["module_fqns_per_model_part"]) // s["pp"]
        assert chunks == (2 if s.get("pipeline_schedule") == "dualpipev"
                          else s["virtual_stages"])
    else:
        assert tr["local_batch_size"] == s["micro_batch"]
        assert tr["global_batch_size"] // (tr["local_batch_size"] * dp) == s["num_micro_batches"]
    assert c["activation_checkpoint"]["mode"] == s["recompute"]
    zero = (0 if par["data_parallel_shard_degree"] == 1 and dp > 1 else
            {"always": 3, "never": 2}.get(par.get("fsdp_reshard_after_forward"), 0))
    entry = torchtitan_entry(plan)
    assert zero == s["zero"] or (not entry["exact"] and s["zero"] == 1 and zero == 2) or dp == 1


def test_an_expressible_plan_is_exact():
    """Llama-3 70B's ZeRO-3 x PP 4 x CP 2 (which Megatron refuses) is torchtitan's FSDP2 x PP x
    CP; with full recompute nothing is left to approximate."""
    plan = load("llama3-70b-training")
    plan["strategy"]["recompute"] = "full"
    e = torchtitan_entry(plan)
    assert e["exact"], e["why"]
    par = e["config"]["parallelism"]
    assert par["fsdp_reshard_after_forward"] == "always"
    assert par["context_parallel_rotate_method"] == "alltoall"  # the KV ring
    assert e["config"]["activation_checkpoint"] == {"mode": "full"}


def test_inexact_cases_say_why():
    ds = torchtitan_entry(load("deepseek-v3-training-256"))  # DualPipeV, ZeRO-1, MTP
    assert not ds["exact"]
    for needle in ("DualPipeV folds the model", "rule fsdp2-has-no-zero1", "mtp_layers 1"):
        assert needle in ds["why"]
    mix = torchtitan_entry(load("mixtral-training"))
    assert "rule no-combined-1f1b" in mix["why"] and "grad_dtype bf16" in mix["why"]
    assert "selective recompute" in torchtitan_entry(load("llama3-70b-training"))["why"]
    plan = load("llama3-70b-training")
    plan["strategy"] |= {"zero": 0, "recompute": "full"}  # DDP with CP: torchtitan FSDPs CP
    e = torchtitan_entry(plan)
    assert not e["exact"] and "FSDP over the CP ranks" in e["why"]
    plan["strategy"]["cp_comm"] = "a2a"
    assert "Ulysses" in torchtitan_entry(plan)["why"]


def test_uneven_interleaving_keeps_each_ranks_count():
    plan = load("mixtral-training")  # PP 2 x v 8 over 32 layers: even chunks of 2
    plan["strategy"]["stage_layers"] = [[0, 17], [18, 31]]  # 18 / 14: uneven chunks
    e = torchtitan_entry(plan)
    assert "interleaving places rank r's 8 chunks" in e["why"]
    assert rank_layers(e["config"]["parallelism"]) == [18, 14]


def test_fp8_writes_torchtitans_converters():
    plan = load("mixtral-training")
    plan["inputs"]["workload"] |= {"precision": "fp8", "fp8_recipe": "tensorwise"}
    c = parse(plan)
    assert c["model"]["converters"] == ["quantize.linear.float8", "quantize.grouped_mm.float8"]
    assert c["quantize"]["linear"]["float8"]["recipe_name"] == "tensorwise"
    assert c["quantize"]["grouped_mm"]["float8"]["fqns"] == ["experts"]
    plan["inputs"]["workload"]["fp8_recipe"] = "blockwise"
    assert "fp8_recipe blockwise" in torchtitan_entry(plan)["why"]


def test_the_command_writes_the_config_and_launches_every_gpu():
    plan = load("llama3-70b-training")
    text = torchtitan_text(plan)
    toml = re.search(r"<<'EOF'\n(.*?)^EOF\n", text, re.S | re.M).group(1)
    assert tomllib.loads(toml) == parse(plan)
    run = text.splitlines()[-1]
    per = int(re.search(r"--nproc_per_node=(\d+)", run).group(1))
    nodes = int(re.search(r"--nnodes=(\d+)", run).group(1))
    assert per * nodes == plan["strategy"]["num_gpus"] and "-m torchtitan.train" in run


def test_the_entry_does_not_change_the_plan():
    plan = load("deepseek-v3-training-256")
    before = copy.deepcopy(plan)
    torchtitan_text(plan)
    assert plan == before


@pytest.mark.parametrize("plan,to,fmt,needle", [
    ("mixtral-decode", "torchtitan", "command", "torchtitan trains"),
    ("mixtral-training", "trtllm", "command", "--to torchtitan"),
    ("mixtral-training", "torchtitan", "yaml", "--format toml"),
    ("mixtral-decode", "trtllm", "toml", "--format yaml"),
    ("mixtral-training", "megatron", "toml", "--format command"),
])
def test_the_wrong_kind_or_format_is_a_one_line_error(plan, to, fmt, needle):
    r = CliRunner().invoke(main, ["export", str(GOLDEN / f"{plan}.json"), "--to", to,
                                  "--format", fmt])
    assert r.exit_code == 2
    assert needle in r.output and len(r.output.strip().splitlines()) == 1
