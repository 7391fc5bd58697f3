"""Every class of bad input gives one line naming the file and field, and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import ONE_GPU, PROBLEMS, TINY_MODEL

from autopar.cli import main
from autopar.errors import InputError
from autopar.spec import load_hardware, load_model


def run_cli(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def bad_model(**changes):
    model = dict(TINY_MODEL["model"])
    for k, v in changes.items():
        if v is None:
            model.pop(k)
        else:
            model[k] = v
    return {"model": model, "workload": TINY_MODEL["workload"]}


@pytest.mark.parametrize("changes, field, words", [
    ({"hidden": None}, "model.hidden", "missing required field"),
    ({"hidden": "big"}, "model.hidden", "expected an integer"),
    ({"hiden": 64}, "model.hiden", "unknown key"),
    ({"layers": 0}, "model.layers", "out of range"),
    ({"kv_heads": 3}, "model.kv_heads", "multiple of kv_heads"),
    ({"dtype": "int3"}, "model.dtype", "not one of"),
    ({"layers": 10**20}, "model.layers", "out of range"),
])
def test_bad_model_fields(write_yaml, changes, field, words):
    path = write_yaml("m.yaml", bad_model(**changes))
    with pytest.raises(InputError) as err:
        load_model(path)
    msg = str(err.value)
    assert str(path) in msg and field in msg and words in msg
    assert "\n" not in msg


def test_unknown_key_suggests_the_right_one(write_yaml):
    path = write_yaml("m.yaml", bad_model(hiden=64))
    with pytest.raises(InputError, match="did you mean 'hidden'"):
        load_model(path)


@pytest.mark.parametrize("gpu, field, words", [
    ({"type": "H900"}, "gpu.type", "unknown GPU"),
    ({"memory_gb": -1, "tflops": {"bf16": 1}, "hbm_tbps": 1}, "gpu.memory_gb", "out of range"),
    ({"memory_gb": 80, "hbm_tbps": 1}, "gpu.tflops", "missing required field"),
    ({"memory_gb": 80, "tflops": {"bf17": 1}, "hbm_tbps": 1}, "gpu.tflops.bf17",
     "unknown dtype"),
])
def test_bad_hardware(write_yaml, gpu, field, words):
    path = write_yaml("hw.yaml", dict(ONE_GPU, gpu=gpu))
    with pytest.raises(InputError) as err:
        load_hardware(path)
    assert field in str(err.value) and words in str(err.value)


def test_unreadable_and_malformed_files(tmp_path, write_yaml):
    with pytest.raises(InputError, match="cannot read file"):
        load_model(tmp_path / "nope.yaml")
    path = write_yaml("broken.yaml", "model: [unclosed\n")
    with pytest.raises(InputError, match="invalid YAML at line"):
        load_model(path)
    path = write_yaml("list.yaml", "- 1\n- 2\n")
    with pytest.raises(InputError, match="expected a mapping"):
        load_model(path)
    big = tmp_path / "big.yaml"
    big.write_text("x" * (11 * 1024 * 1024))
    with pytest.raises(InputError, match="over the"):
        load_model(big)


def test_yaml_is_data_not_code(write_yaml):
    path = write_yaml("evil.yaml", "model: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(InputError, match="invalid YAML"):
        load_model(path)


def test_cli_bad_input_is_one_line_nonzero(write_yaml):
    model = write_yaml("m.yaml", bad_model(heads="many"))
    hw = PROBLEMS / "hw" / "h100-8x.yaml"
    res = run_cli("solve", "--model", model, "--hw", hw)
    assert res.exit_code == 2
    err = res.output.strip().splitlines()
    assert len(err) == 1 and "model.heads" in err[0] and "Traceback" not in res.output


def test_cli_subprocess_has_no_traceback(tmp_path):
    res = subprocess.run([sys.executable, "-m", "autopar.cli", "solve", "--model",
                          str(tmp_path / "missing.yaml"), "--hw",
                          str(PROBLEMS / "hw" / "h100-8x.yaml")],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "missing.yaml" in res.stderr and "cannot read file" in res.stderr


def test_failed_solve_leaves_existing_output_untouched(write_yaml, tmp_path):
    out = tmp_path / "plan.json"
    out.write_text("previous plan")
    model = write_yaml("m.yaml", bad_model(vocab=-5))
    res = run_cli("solve", "--model", model, "--hw", PROBLEMS / "hw" / "h100-8x.yaml",
                  "--out", out)
    assert res.exit_code == 2
    assert out.read_text() == "previous plan"
