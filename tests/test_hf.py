"""Hugging Face config.json files read as plain JSON agree with the YAML presets."""

from __future__ import annotations

import json

import pytest
from conftest import PROBLEMS

from autopar.errors import InputError
from autopar.model.components import param_count
from autopar.spec import load_model


@pytest.mark.parametrize("hf, yaml_name", [
    ("mixtral-8x7b-config.json", "mixtral-8x7b.yaml"),
    ("deepseek-v3-config.json", "deepseek-v3.yaml"),
    ("qwen3-30b-a3b-config.json", "qwen3-30b-a3b.yaml"),
])
def test_hf_config_matches_preset(hf, yaml_name):
    a = load_model(PROBLEMS / "models" / "hf" / hf).model
    b = load_model(PROBLEMS / "models" / yaml_name).model
    for field in ("layers", "hidden", "heads", "kv_heads", "head_dim", "experts", "top_k",
                  "expert_ffn_hidden", "shared_experts", "dense_layers", "vocab", "mla",
                  "gated_mlp", "weight_dtype", "router_groups", "router_group_topk"):
        assert getattr(a, field) == getattr(b, field), field


def test_published_parameter_counts():
    """Mixtral 46.7 B total / 12.9 B active; DeepSeek-V3 671 B total (37 B active)."""
    mix = param_count(load_model(PROBLEMS / "models" / "mixtral-8x7b.yaml").model)
    assert mix["total"] == pytest.approx(46.7e9, rel=0.01)
    assert mix["active"] == pytest.approx(12.9e9, rel=0.01)
    ds = param_count(load_model(PROBLEMS / "models" / "deepseek-v3.yaml").model)
    assert ds["total"] == pytest.approx(671e9, rel=0.01)
    assert ds["active"] == pytest.approx(37e9, rel=0.03)


def test_hf_bad_value_names_the_key(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"num_hidden_layers": 2, "hidden_size": "big",
                                "num_attention_heads": 4, "vocab_size": 10,
                                "intermediate_size": 16}))
    with pytest.raises(InputError, match="hidden_size: expected an integer"):
        load_model(path)
