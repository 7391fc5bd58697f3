"""Expert load profiles: synthetic specs, measured files, and one-line errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from autopar.errors import InputError
from autopar.spec import loads as loads
from autopar.spec.loads import parse_expert_load


def test_uniform_rows_sum_to_total():
    prof = parse_expert_load("uniform", 3, 8)
    t = prof.per_layer(800.0)
    assert t.shape == (3, 8)
    assert np.allclose(t, 100.0)
    assert prof.coactivation is None


def test_zipf_is_seeded_permuted_and_normalised():
    a = parse_expert_load("zipf:1.2:7", 4, 16).per_layer(1000.0)
    b = parse_expert_load("zipf:1.2:7", 4, 16).per_layer(1000.0)
    assert np.array_equal(a, b)
    assert np.allclose(a.sum(axis=1), 1000.0)
    ref = 1.0 / np.arange(1, 17) ** 1.2
    for row in a:  # same Zipf weights, different hot expert per layer
        assert np.allclose(np.sort(row)[::-1], ref / ref.sum() * 1000.0)
    assert len({int(np.argmax(row)) for row in a}) > 1
    assert not np.array_equal(a, parse_expert_load("zipf:1.2:8", 4, 16).per_layer(1000.0))
    assert np.allclose(parse_expert_load("zipf:0", 2, 5).per_layer(5.0), 1.0)
    assert parse_expert_load("zipf:1.0", 1, 4).describe() == "zipf:1:0"


@pytest.mark.parametrize(
    "spec", ["zipf", "zipf:", "zipf:abc", "zipf:11", "zipf:-1", "zipf:nan", "zipf:1:x", "zipf:1:-3"]
)
def test_bad_zipf_syntax(spec):
    with pytest.raises(InputError) as err:
        parse_expert_load(spec, 2, 4, source="model.yaml: workload.expert_load")
    msg = str(err.value)
    assert msg.startswith("model.yaml: workload.expert_load: ") and "\n" not in msg


def test_missing_file_names_the_option():
    with pytest.raises(InputError, match="--expert-load: nope.csv: no such file"):
        parse_expert_load("nope.csv", 2, 4)


def _write_csv(path, table):
    rows = ["layer,expert,tokens"]
    rows += [f"{i},{j},{v}" for i, row in enumerate(table) for j, v in enumerate(row)]
    path.write_text("\n".join(rows) + "\n")


def test_csv_round_trip(tmp_path):
    table = [[10, 0, 30, 60], [1, 2, 3, 4]]
    f = tmp_path / "load.csv"
    _write_csv(f, table)
    prof = parse_expert_load(str(f), 2, 4)
    assert prof.kind == "measured" and prof.describe() == str(f)
    got = prof.per_layer(100.0)
    assert np.allclose(got[0], [10, 0, 30, 60])
    assert np.allclose(got[1], np.array([1, 2, 3, 4]) * 10.0)


def test_json_round_trip_with_coactivation(tmp_path):
    coact = [[[0, 5, 1], [5, 0, 0], [1, 0, 0]], [[0, 0, 0], [0, 0, 2], [0, 2, 0]]]
    doc = {"layers": [[50, 30, 20], [1, 1, 2]], "coactivation": coact}
    f = tmp_path / "load.json"
    f.write_text(json.dumps(doc))
    prof = parse_expert_load(str(f), 2, 3)
    assert np.allclose(prof.per_layer(100.0)[0], [50, 30, 20])
    c = prof.coactivation_per_layer(100.0)
    assert c.shape == (2, 3, 3)
    assert c[0, 0, 1] == pytest.approx(5.0)  # same scale as the loads (layer 0 sums to 100)
    assert c[1, 1, 2] == pytest.approx(2 * 100 / 4)


BAD_CSV = [
    ("layer,expert,count\n0,0,1\n", "header"),
    ("layer,expert,tokens\nx,0,1\n", "line 2: layer"),
    ("layer,expert,tokens\n0,0,1,5\n", "line 2"),
    ("layer,expert,tokens\n0,0,-1\n0,1,1\n1,0,1\n1,1,1\n", "line 2: tokens"),
    ("layer,expert,tokens\n0,0,nan\n", "line 2: tokens"),
    ("layer,expert,tokens\n0,0,inf\n", "line 2: tokens"),
    ("layer,expert,tokens\n0,0,abc\n", "line 2: tokens"),
    ("layer,expert,tokens\n2,0,1\n", "line 2: layer"),  # 3 layers in file, model has 2
    ("layer,expert,tokens\n0,2,1\n", "line 2: expert"),  # expert count mismatch
    ("layer,expert,tokens\n0,0,1\n0,0,1\n", "line 3"),  # duplicate
    ("layer,expert,tokens\n0,0,1\n0,1,1\n1,0,1\n", "rows"),  # missing (1, 1)
    ("layer,expert,tokens\n0,0,0\n0,1,0\n1,0,1\n1,1,1\n", "layer 0"),  # no tokens
    ("layer,expert,tokens\n0,0,1\n0,1,1\n1,0,1\n1,1,1\n1,1,1\n", "line 6"),  # too many rows
    ("", ""),  # empty
]


BAD_JSON = [
    ("{", ""),
    ("[1, 2]", ""),
    ('{"layers": [[1, 1], [1, 1]], "extra": 1}', "extra"),
    ('{"coactivation": null}', "layers"),
    ('{"layers": [[1, 1]]}', "layers"),  # layer count mismatch
    ('{"layers": [[1, 1], [1, 1, 1]]}', "layers[1]"),  # expert count mismatch
    ('{"layers": [[1, 1], [1, -2]]}', "layers[1][1]"),
    ('{"layers": [[1, 1], [1, NaN]]}', "layers[1][1]"),
    ('{"layers": [[1, 1], [1, "3"]]}', "layers[1][1]"),
    ('{"layers": [[1, 1], [1, 1]], "coactivation": [[[0, 1], [1, 0]]]}', "coactivation"),
    (
        '{"layers": [[1, 1], [1, 1]], "coactivation": [[[0, 1], [2, 0]], [[0, 0], [0, 0]]]}',
        "coactivation[0][0][1]",
    ),
]


@pytest.mark.parametrize(("suffix", "text", "field"),
                         [("csv", *x) for x in BAD_CSV] + [("json", *x) for x in BAD_JSON])
def test_bad_load_file_names_file_and_field(tmp_path, suffix, text, field):
    f = tmp_path / f"bad.{suffix}"
    f.write_text(text)
    with pytest.raises(InputError) as err:
        parse_expert_load(str(f), 2, 2)
    assert err.value.source == str(f) and field in err.value.field
    assert str(f) in str(err.value) and "\n" not in str(err.value)


def test_file_too_large_and_unreadable(tmp_path, monkeypatch):
    f = tmp_path / "big.csv"
    _write_csv(f, [[1, 1], [1, 1]])
    monkeypatch.setattr(loads, "MAX_FILE_BYTES", 10)
    with pytest.raises(InputError, match="too large"):
        parse_expert_load(str(f), 2, 2)
    monkeypatch.undo()
    g = tmp_path / "bin.csv"
    g.write_bytes(b"\xff\xfe\x00layer")
    with pytest.raises(InputError, match="cannot read"):
        parse_expert_load(str(g), 2, 2)
    with pytest.raises(InputError, match="cannot read"):
        parse_expert_load(str(tmp_path), 2, 2)  # a directory


def test_sniffs_json_without_extension(tmp_path):
    f = tmp_path / "profile.txt"
    f.write_text('{"layers": [[3, 1]]}')
    assert np.allclose(parse_expert_load(str(f), 1, 2).per_layer(4.0), [[3, 1]])
