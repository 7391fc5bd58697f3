"""Hostile or broken input files get exit 2 and one short line naming the file and the field
(or the line), never an internal error, a traceback or a silently different reading; and
`check` reads only files inside the plan's own directory."""

from __future__ import annotations

import builtins
import io
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import PROBLEMS

from autopar.check.verify import check_plan
from autopar.cli import main

SEED_ORIGINAL = PROBLEMS / "seed-original" / "plan.json"
MODEL = """model:
  name: tiny
  layers: 2
  hidden: 64
  heads: 4
  kv_heads: 2
  ffn_hidden: 128
  vocab: 100
workload: {kind: training, global_batch: 1, seq_len: 32}
"""
MOE = """model: {name: tinymoe, layers: 2, hidden: 64, heads: 4, kv_heads: 2, vocab: 100,
        experts: 4, top_k: 2, expert_ffn_hidden: 32}
workload: {kind: training, global_batch: 4, seq_len: 32}
"""
HW = """name: one
gpu: {memory_gb: 400, tflops: {bf16: 100}, hbm_tbps: 1.0}
nodes: 1
gpus_per_node: 1
reserved_gb: 0
"""
HF = (PROBLEMS / "models" / "hf" / "mixtral-8x7b-config.json").read_text()
LOADS = '{"layers": [[1, 2, 3, 4], [4, 3, 2, 1]]}'
DEEP = "[" * 100_000
BIG = "9" * 5000
# "billion laughs": nine anchors, each nine aliases of the one before: 43 million values
LAUGHS = "a: &a [0, 0, 0, 0, 0, 0, 0, 0, 0]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True))
PLAN = SEED_ORIGINAL.read_text()


def _plan_with(extra: str) -> str:
    """The seed plan with text added as its first key(s)."""
    return "{" + extra + ", " + PLAN.lstrip()[1:]


CASES = {
    # name: (which input, file name, content, words the one line must hold)
    "model-not-utf8": ("model", "m.yaml", MODEL.replace("tiny", "tiny\udcff"),
                       ["line 2, column 13", "not UTF-8"]),
    "model-deep": ("model", "m.yaml", MODEL + "notes: " + DEEP, ["nested deeper than 64"]),
    "model-5000-digits": ("model", "m.yaml", MODEL.replace("layers: 2", "layers: " + BIG),
                          ["model.layers", "5000 digits"]),
    "model-duplicate-key": ("model", "m.yaml", MODEL.replace("layers: 2",
                                                             "layers: 4\n  layers: 400"),
                            ["layers", "duplicate key at line 4 (first at line 3)"]),
    "model-billion-laughs": ("model", "m.yaml", LAUGHS + MODEL.replace(
        "vocab: 100", "vocab: 100\n  dense_layers: *h"), ["more than 200000 values"]),
    "model-empty": ("model", "m.yaml", "", ["file is empty"]),
    "model-binary": ("model", "m.yaml", bytes(range(256)) * 4, ["not UTF-8"]),
    "model-nul": ("model", "m.yaml", "model:\x00\n", ["line 1", "U+0000"]),
    "hf-huge-list": ("model", "config.json", HF.replace('"hidden_size": 4096',
                                                        '"hidden_size": [' + "0, " * 300_000
                                                        + "0]"),
                     ["hidden_size", "expected an integer"]),
    "hf-not-utf8": ("model", "config.json", HF.replace("Mixtral", "Mixtral\udcff", 1),
                    ["line 2, column 29", "not UTF-8"]),
    "hf-deep": ("model", "config.json", '{"num_hidden_layers": ' + DEEP,
                ["nested deeper than 64"]),
    "hf-5000-digits": ("model", "config.json", HF.replace('"num_hidden_layers": 32',
                                                          '"num_hidden_layers": ' + BIG),
                       ["num_hidden_layers", "5000 digits"]),
    "hf-duplicate-key": ("model", "config.json", HF.replace(
        '"num_hidden_layers": 32', '"num_hidden_layers": 32, "num_hidden_layers": 400'),
        ["num_hidden_layers", "duplicate key"]),
    "hf-unknown-dtype": ("model", "config.json", HF.replace('"bfloat16"', '"int4"'),
                         ["torch_dtype", "'int4' is not one of bfloat16, float16, float32"]),
    "hf-nan": ("model", "config.json", HF.replace('"rope_theta": 1000000.0',
                                                  '"rope_theta": NaN'),
               ["rope_theta", "nan is not a finite number"]),
    "hw-duplicate-key": ("hw", "hw.yaml", HW.replace("gpus_per_node: 1",
                                                     "gpus_per_node: 8\ngpus_per_node: 1"),
                         ["gpus_per_node", "duplicate key"]),
    "hw-not-utf8": ("hw", "hw.yaml", HW.replace("one", "one\udcff"), ["line 1", "not UTF-8"]),
    "hw-5000-digits": ("hw", "hw.yaml", HW.replace("nodes: 1", "nodes: " + BIG),
                       ["nodes", "5000 digits"]),
    "hw-deep": ("hw", "hw.yaml", HW + "notes: " + DEEP, ["nested deeper than 64"]),
    "calibration-duplicate-key": ("calibration", "cal.yaml", "gemm_peak: 0.5\ngemm_peak: 0.9\n",
                                  ["gemm_peak", "duplicate key"]),
    "calibration-not-utf8": ("calibration", "cal.yaml", "notes: caf\udce9\n", ["not UTF-8"]),
    "loads-duplicate-key": ("loads", "load.json", LOADS[:-1] + ', "layers": [[1, 1, 1, 1], '
                            "[1, 1, 1, 1]]}", ["layers", "duplicate key"]),
    "loads-5000-digits": ("loads", "load.json", LOADS.replace("[1, 2", "[" + BIG + ", 2"),
                          ["layers[0][0]", "5000 digits"]),
    "loads-deep": ("loads", "load.json", '{"layers": ' + DEEP, ["nested deeper than 64"]),
    "plan-not-utf8": ("plan", "plan.json", _plan_with('"x": "\udcff"'), ["not UTF-8"]),
    "plan-deep": ("plan", "plan.json", '{"x": ' + DEEP, ["nested deeper than 64"]),
    "plan-5000-digits": ("plan", "plan.json", _plan_with('"x": ' + BIG), ["x", "5000 digits"]),
    "plan-duplicate-key": ("plan", "plan.json", _plan_with('"x": 1, "x": 2'),
                           ["x", "duplicate key"]),
    "plan-nan": ("plan", "plan.json", _plan_with('"x": {"y": [NaN]}'),
                 ["x.y[0]", "nan is not a finite number"]),
    "plan-billion-laughs": ("plan", "plan.yaml", LAUGHS + "x: *h\n" + PLAN,
                            ["more than 200000 values"]),
}


def _write(tmp_path, name: str, content) -> object:
    path = tmp_path / name
    # "\udcXX" marks a raw byte 0xXX (not UTF-8) in the text cases
    path.write_bytes(content if isinstance(content, bytes) else
                     content.encode("utf-8", "surrogateescape"))
    return path


@pytest.mark.parametrize("case", CASES)
def test_hostile_file_is_one_line_exit_2(tmp_path, case):
    which, name, content, words = CASES[case]
    path = _write(tmp_path, name, content)
    model, hw = _write(tmp_path, "base.yaml", MOE if which == "loads" else MODEL), \
        _write(tmp_path, "base-hw.yaml", HW)
    args = {
        "model": ["solve", "--model", path, "--hw", hw],
        "hw": ["solve", "--model", model, "--hw", path],
        "calibration": ["solve", "--model", model, "--hw", hw, "--calibration", path],
        # the loads are read where experts are placed: on two GPUs, EP 2
        "loads": ["solve", "--model", model, "--hw", _write(tmp_path, "hw2.yaml", HW.replace(
            "gpus_per_node: 1", "gpus_per_node: 2\nintra_node: {bandwidth_gbps: 100}")),
            "--ep", "2", "--expert-load", path],
        "plan": ["check", path],
    }[which]
    if which != "plan":
        args += ["--out", tmp_path / "out.json", "--time-limit", "1", "--quiet"]
    if name == "config.json":  # an HF config has no workload section
        args += ["--kind", "inference", "--phase", "prefill", "--batch", "1", "--input-len", "8"]
    res = CliRunner().invoke(main, [str(a) for a in args])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2, res.output[-500:]
    assert len(lines) == 1 and len(lines[0]) < 300, res.output[:500]
    assert lines[0].startswith(f"autopar: error: {path}: "), lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    assert not (tmp_path / "out.json").exists()


def test_device_or_stream_is_refused_not_read(tmp_path):
    """/dev/zero never ends: reading it whole would exhaust memory."""
    res = CliRunner().invoke(main, ["check", "/dev/zero"])
    assert res.exit_code == 2 and "not a regular file" in res.output, res.output


def test_subprocess_hostile_plan_has_no_traceback(tmp_path):
    path = _write(tmp_path, "plan.json", '{"x": ' + DEEP)
    res = subprocess.run([sys.executable, "-m", "autopar.cli", "check", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == (f"autopar: error: {path}: invalid JSON at line 1, column 70: "
                                  "nested deeper than 64 levels")


def test_duplicate_key_is_refused_but_a_merge_override_is_not(tmp_path):
    """`<<: *base` then a key of the base overrides it (what a merge means): no duplicate."""
    from autopar.errors import InputError
    from autopar.spec import load_hardware

    merged = HW.replace("gpus_per_node: 1", "gpus_per_node: 2\n"
                        "inter_node: &b {bandwidth_gbps: 25, latency_us: 10}\n"
                        "intra_node: {<<: *b, latency_us: 2}")
    hw = load_hardware(_write(tmp_path, "hw.yaml", merged))
    assert (hw.intra.bytes_per_s, hw.intra.latency_s) == (25e9, 2e-6)
    nested = HW + "notes: [&b {x: 1}, &m {<<: *b, x: 2}, {<<: *m}]\n"  # merged, then merged
    with pytest.raises(InputError, match="notes: expected text"):  # ... but not a duplicate
        load_hardware(_write(tmp_path, "hw.yaml", nested))
    with pytest.raises(InputError, match="latency_us: duplicate key at line 7"):
        load_hardware(_write(tmp_path, "hw.yaml", merged.replace(
            "latency_us: 2}", "latency_us: 2,\n  latency_us: 3}")))


# --------------------------------------------------------------------------- check's reads
@pytest.fixture
def layout(tmp_path):
    """plans/ holds the plan; secret/ beside it a valid model that check must not touch."""
    plans, secret = tmp_path / "plans", tmp_path / "secret"
    plans.mkdir()
    secret.mkdir()
    (secret / "model.yaml").write_text((PROBLEMS / "models" / "seed-moe.yaml").read_text())
    (plans / "hw.yaml").write_text((PROBLEMS / "hw" / "seed-3gpu.yaml").read_text())
    (plans / "sub").mkdir()
    os.symlink("../secret/model.yaml", plans / "rel-link.yaml")
    os.symlink(secret / "model.yaml", plans / "abs-link.yaml")
    os.symlink("../secret", plans / "dir-link")
    os.symlink("sub/../../secret/model.yaml", plans / "dotdot-link.yaml")
    return plans, secret


@pytest.fixture
def touched(monkeypatch):
    """Every path opened, stat-ed or lstat-ed while the test runs."""
    seen: list[str] = []

    def spy(fn):
        def wrapped(path, *args, **kwargs):
            if isinstance(path, (str, bytes, os.PathLike)):
                seen.append(os.fsdecode(path))
            return fn(path, *args, **kwargs)
        return wrapped

    for mod, name in ((os, "stat"), (os, "lstat"), (os, "open"), (builtins, "open"),
                      (io, "open"), (os, "readlink")):
        monkeypatch.setattr(mod, name, spy(getattr(mod, name)))
    return seen


@pytest.mark.parametrize("name", ["../secret/model.yaml", "sub/../../secret/model.yaml",
                                  "rel-link.yaml", "abs-link.yaml", "dir-link/model.yaml",
                                  "dotdot-link.yaml"])
def test_check_reads_only_files_inside_the_plans_directory(layout, touched, name):
    plans, secret = layout
    plan = json.loads(PLAN)
    plan["inputs"] = {"model": name, "hardware": "hw.yaml"}
    found = check_plan(plan, base_dir=plans)
    refused = [x.message for x in found if x.check == "inputs" and "outside" in x.message]
    assert refused and "inputs.model" in refused[0] and "\n" not in refused[0], found
    assert not [p for p in touched if str(secret) in p or "secret" in p], touched


def test_cli_check_refuses_a_parent_path_in_one_line(layout):
    plans, _ = layout
    plan = json.loads(PLAN)
    plan["inputs"] = {"model": "../secret/model.yaml", "hardware": "sub/hw-link.yaml"}
    os.symlink("../hw.yaml", plans / "sub" / "hw-link.yaml")  # a link that stays inside
    (plans / "plan.json").write_text(json.dumps(plan))
    res = CliRunner().invoke(main, ["check", "--json", str(plans / "plan.json")])
    msgs = [x["message"] for x in json.loads(res.output)["findings"] if x["check"] == "inputs"]
    assert [m for m in msgs if "'../secret/model.yaml' leads outside the plan's directory" in m
            and "inputs.model" in m], msgs
    assert not [m for m in msgs if "inputs.hardware" in m], msgs  # followed, read, no finding


def test_seed_original_inputs_are_the_presets():
    """The seed plan names copies next to it (a plan may not reach outside its directory);
    they must stay the presets."""
    here = SEED_ORIGINAL.parent
    assert json.loads(PLAN)["inputs"] == {"model": "seed-moe.yaml", "hardware": "seed-3gpu.yaml"}
    assert (here / "seed-moe.yaml").read_bytes() == \
        (PROBLEMS / "models" / "seed-moe.yaml").read_bytes()
    assert (here / "seed-3gpu.yaml").read_bytes() == \
        (PROBLEMS / "hw" / "seed-3gpu.yaml").read_bytes()
