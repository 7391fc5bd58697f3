from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROBLEMS = ROOT / "problems"


@pytest.fixture
def write_yaml(tmp_path):
    def _write(name: str, data) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
        return path

    return _write


TINY_MODEL = {
    "model": {"name": "tiny", "layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2,
              "head_dim": 16, "ffn_hidden": 128, "gated_mlp": True, "vocab": 100},
    "workload": {"kind": "training", "global_batch": 1, "seq_len": 32},
}

ONE_GPU = {"name": "one", "gpu": {"memory_gb": 80, "tflops": {"bf16": 100}, "hbm_tbps": 1.0},
           "nodes": 1, "gpus_per_node": 1, "reserved_gb": 0}


def json_paths(x, prefix=()):
    """Every JSON path of a document, leaves and containers (the first 3 items of a list)."""
    yield prefix
    if isinstance(x, dict):
        for k, v in x.items():
            yield from json_paths(v, (*prefix, k))
    elif isinstance(x, list):
        for i, v in enumerate(x[:3]):
            yield from json_paths(v, (*prefix, i))
