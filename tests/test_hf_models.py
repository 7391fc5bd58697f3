"""HF checkpoints as people have them: every supported architecture's published config.json
(tests/data/hf/, SOURCE.md) against its published parameter total, checkpoint folders, the
HF id the exporters launch, and one-line errors for what cannot be read."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import PROBLEMS, ROOT

from autopar.api import check as plan_check
from autopar.api import solve
from autopar.cli import main
from autopar.errors import InputError
from autopar.export.engines import export_text
from autopar.model.components import param_count
from autopar.model.mtp import mtp_params
from autopar.spec import load_model

HF = ROOT / "tests" / "data" / "hf"

# (fixture, published total parameters, where the figure is published)
PUBLISHED = [
    ("llama-3-8b", 8.03e9, "meta-llama/Meta-Llama-3-8B model card / safetensors"),
    ("llama-3-70b", 70.6e9, "meta-llama/Meta-Llama-3-70B model card / safetensors"),
    ("llama-3.1-405b", 405.9e9, "meta-llama/Llama-3.1-405B safetensors (405B)"),
    ("qwen2-7b", 7.62e9, "Qwen2 technical report Table 1 (7.6B); Qwen/Qwen2-7B"),
    ("qwen2.5-7b", 7.61e9, "Qwen/Qwen2.5-7B model card: 7.61B"),
    ("qwen2.5-72b", 72.7e9, "Qwen/Qwen2.5-72B model card: 72.7B"),
    ("qwen3-8b", 8.2e9, "Qwen/Qwen3-8B model card: 8.2B"),
    ("qwen3-32b", 32.8e9, "Qwen/Qwen3-32B model card: 32.8B"),
    ("qwen3-30b-a3b", 30.5e9, "Qwen/Qwen3-30B-A3B model card: 30.5B"),
    ("qwen3-235b-a22b", 235e9, "Qwen/Qwen3-235B-A22B model card: 235B"),
    ("mixtral-8x7b", 46.7e9, "Mixtral of Experts (Jiang et al. 2024): 47B; Mistral: 46.7B"),
    ("mixtral-8x22b", 141e9, "Mistral's Mixtral 8x22B announcement: 141B"),
    ("deepseek-v2", 236e9, "DeepSeek-V2 paper (arXiv 2405.04434): 236B"),
    ("deepseek-v3", 671e9, "DeepSeek-V3 report: 671B (the MTP module is not in it)"),
    ("deepseek-r1", 671e9, "DeepSeek-R1 model card: 671B (V3's architecture)"),
    ("kimi-k2", 1026.5e9, "moonshotai/Kimi-K2-Instruct safetensors: 1026.5B (card: 1T)"),
    ("gpt-oss-120b", 116.83e9, "gpt-oss model card Table 1: 116.83B"),
    ("gpt-oss-20b", 20.91e9, "gpt-oss model card Table 1: 20.91B"),
    # Meta's totals count the vision encoder, which autopar does not plan (vision_params)
    ("llama-4-scout", 109e9, "Meta's Llama 4 model card: 109B with the vision encoder"),
    ("llama-4-maverick", 400e9, "Meta's Llama 4 model card: 400B with the vision encoder"),
]


def vision_params(cfg: dict) -> int:
    """Llama 4's vision tower from its `vision_config` (transformers' Llama4VisionModel):
    a ViT of `num_hidden_layers` blocks (q, k, v, o and fc1 / fc2 with biases, two
    LayerNorms), the patch unfold, class and position embeddings, two LayerNorms, the
    pixel-shuffle MLP and the projector into the text model's width."""
    v = cfg.get("vision_config")
    if not v:
        return 0
    h, f, n = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"]
    block = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 2 * 2 * h
    patches = (v["image_size"] // v["patch_size"]) ** 2 + 1
    stem = v["num_channels"] * v["patch_size"] ** 2 * h + h + patches * h + 2 * 2 * h
    shuffled = int(h / v["pixel_shuffle_ratio"] ** 2)
    adapter = shuffled * v["projector_input_dim"] + v["projector_output_dim"] ** 2
    projector = v["vision_output_dim"] * cfg["text_config"]["hidden_size"]
    return n * block + stem + adapter + projector


@pytest.mark.parametrize("name, total, source", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_parameter_count_within_one_percent_of_published(name, total, source):
    path = HF / f"{name}.json"
    counted = param_count(load_model(path).model)["total"]
    counted += vision_params(json.loads(path.read_text()))
    assert counted == pytest.approx(total, rel=0.01), source


def test_deepseek_v3_mtp_is_the_difference_between_671b_and_685b():
    """The checkpoint's 685B is 671B of main model plus 14B of MTP module, and that module
    stores its own copies of the embedding and output head (`embed_tokens`,
    `shared_head.head`), which the model shares in training: autopar counts them once."""
    m = load_model(HF / "deepseek-v3.json").model
    assert m.mtp_layers == 1
    main = param_count(m)["total"]
    assert main == pytest.approx(671e9, rel=0.005)
    stored_copies = 2 * m.vocab * m.hidden
    assert main + mtp_params(m) + stored_copies == pytest.approx(685e9, rel=0.005)
    assert mtp_params(m) + stored_copies == pytest.approx(14e9, rel=0.05)


def test_llama4_interleaved_moe_shared_expert_and_dense_width():
    mav = load_model(HF / "llama-4-maverick.json").model  # step 2: odd layers are MoE
    assert mav.dense_layers == tuple(range(0, 48, 2))
    assert (mav.ffn_hidden, mav.expert_ffn_hidden, mav.experts, mav.top_k) == (
        16384, 8192, 128, 1)
    assert (mav.shared_experts, mav.shared_expert_ffn_hidden) == (1, 8192)
    scout = load_model(HF / "llama-4-scout.json").model  # explicit moe_layers: all of them
    assert scout.dense_layers == () and scout.experts == 16
    assert param_count(scout)["active"] == pytest.approx(17e9, rel=0.02)  # "17B active"


def test_mla_models_read_their_latent_ranks_and_groups():
    v2 = load_model(HF / "deepseek-v2.json").model
    assert (v2.mla.q_lora_rank, v2.mla.kv_lora_rank, v2.shared_experts) == (1536, 512, 2)
    assert (v2.router_groups, v2.router_group_topk) == (8, 3)  # group_limited_greedy
    k2 = load_model(HF / "kimi-k2.json").model
    assert (k2.experts, k2.heads, k2.dense_layers, k2.mtp_layers) == (384, 64, (0,), 0)
    assert k2.router_groups == 0  # n_group 1 limits nothing
    assert k2.weight_dtype == "fp8" and k2.weight_scaling == "block"


def test_gpt_oss_windows_checked_and_mxfp4_planned_at_16_bits(tmp_path):
    m = load_model(HF / "gpt-oss-120b.json").model
    assert (m.experts, m.top_k, m.expert_ffn_hidden, m.head_dim) == (128, 4, 2880, 64)
    assert m.weight_dtype is None and m.dtype == "bf16"  # docs/models.md: not modelled
    cfg = json.loads((HF / "gpt-oss-20b.json").read_text())
    cfg["layer_types"] = cfg["layer_types"][:-1]
    bad = tmp_path / "gpt-oss.json"
    bad.write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="layer_types: expected a list of 24"):
        load_model(bad)


# ----------------------------------------------------------------------------- folders
def test_a_checkpoint_folder_reads_only_its_config(tmp_path):
    folder = tmp_path / "Meta-Llama-3-8B"
    folder.mkdir()
    shutil.copy(HF / "llama-3-8b.json", folder / "config.json")
    (folder / "model.safetensors.index.json").write_text("not json: never opened")
    m = load_model(folder).model
    assert m.hf_id == m.name == "Meta-Llama-3-8B"
    assert load_model(folder / "config.json").model.hf_id == "Meta-Llama-3-8B"
    assert load_model(HF / "llama-3-8b.json").model.hf_id is None  # a bare file names none


def test_hub_cache_layout_gives_the_hub_id_and_name_or_path_wins(tmp_path):
    """The cache's config.json is a link into its blobs/ (the one path that is followed)."""
    repo = tmp_path / "models--Qwen--Qwen3-8B"
    snap, blob = repo / "snapshots" / "abc123", repo / "blobs" / "0f1e2d"
    snap.mkdir(parents=True)
    blob.parent.mkdir()
    cfg = json.loads((HF / "qwen3-8b.json").read_text())
    blob.write_text(json.dumps(cfg))
    (snap / "config.json").symlink_to(Path("..", "..", "blobs", "0f1e2d"))
    assert load_model(snap).model.hf_id == "Qwen/Qwen3-8B"
    cfg["_name_or_path"] = "my-org/qwen3-8b-ft"
    blob.write_text(json.dumps(cfg))
    assert load_model(snap).model.hf_id == "my-org/qwen3-8b-ft"


def test_a_folder_without_config_json_is_one_line(tmp_path):
    with pytest.raises(InputError, match="must hold config.json"):
        load_model(tmp_path)


def test_the_exporters_launch_the_hf_id():
    mf = load_model(PROBLEMS / "models" / "seed-moe-serve.yaml")
    mf = replace(mf, model=replace(mf.model, hf_id="example-org/seed-moe"))
    plan = solve(mf, PROBLEMS / "hw" / "seed-3gpu.yaml", time_limit_s=3)
    assert plan.data["inputs"]["model"]["hf_id"] == "example-org/seed-moe"
    assert export_text(plan.data, "vllm").splitlines()[-1].startswith(
        "vllm serve example-org/seed-moe ")
    assert "--model-path example-org/seed-moe " in export_text(plan.data, "sglang")
    assert not [f for f in plan_check(plan) if f.severity == "error"]  # the echo reads back
    plain = solve(PROBLEMS / "models" / "seed-moe-serve.yaml",
                  PROBLEMS / "hw" / "seed-3gpu.yaml", time_limit_s=3)
    assert "hf_id" not in plain.data["inputs"]["model"]  # echoed only where known


# ----------------------------------------------------------------------------- refusals
def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path


def test_missing_keys_are_all_named_in_one_line(tmp_path):
    cfg = json.loads((HF / "deepseek-v3.json").read_text())
    for key in ("vocab_size", "qk_rope_head_dim", "num_experts_per_tok"):
        del cfg[key]
    with pytest.raises(InputError) as err:
        load_model(_write(tmp_path, cfg))
    line = str(err.value)
    assert "\n" not in line and "DeepSeek-V3" in line
    for key in ("vocab_size", "qk_rope_head_dim", "num_experts_per_tok"):
        assert key in line


def test_llama4_missing_keys_name_their_section(tmp_path):
    cfg = json.loads((HF / "llama-4-scout.json").read_text())
    del cfg["text_config"]["hidden_size"]
    with pytest.raises(InputError, match="lacks keys autopar needs: text_config.hidden_size"):
        load_model(_write(tmp_path, cfg))


def test_an_unknown_architecture_says_what_is_missing(tmp_path):
    path = _write(tmp_path, {"model_type": "mamba", "architectures": ["MambaForCausalLM"],
                             "hidden_size": 768, "num_hidden_layers": 24, "vocab_size": 50280})
    with pytest.raises(InputError, match="'mamba' is not an architecture autopar knows .* "
                                         "lacks keys autopar needs: num_attention_heads"):
        load_model(path)
    r = CliRunner().invoke(main, ["solve", "--model", str(path), "--hw",
                                  str(PROBLEMS / "hw" / "seed-3gpu.yaml")])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "num_attention_heads" in r.output and "Traceback" not in r.output


def test_an_unknown_moe_architecture_is_not_read_as_dense(tmp_path):
    cfg = json.loads((HF / "llama-3-8b.json").read_text())
    cfg.update(model_type="newmoe", num_routed_expert_groups=4, expert_width=512)
    with pytest.raises(InputError, match="MoE keys autopar does not read: expert_width"):
        load_model(_write(tmp_path, cfg))
    cfg = json.loads((HF / "llama-3-8b.json").read_text())
    cfg["model_type"] = "llama_variant"  # a plain decoder of another name is still read
    assert load_model(_write(tmp_path, cfg)).model.layers == 32


def test_the_docs_table_lists_every_architecture_and_its_keys():
    from autopar.spec.hf import ARCHITECTURES, COMMON_KEYS

    text = (ROOT / "docs" / "models.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in text.splitlines()
            if line.startswith("| `") and not line.startswith("| `model_type`")}
    assert set(rows) == set(ARCHITECTURES)
    same_as = {"deepseek_v3": "deepseek_v2", "kimi_k2": "deepseek_v3"}  # "as V2, and ..."

    def row(model_type: str) -> str:
        return rows[model_type] + (row(same_as[model_type]) if model_type in same_as else "")

    for model_type, (_, keys) in ARCHITECTURES.items():
        missing = [k for k in keys if f"`{k}`" not in row(model_type)]
        assert not missing, (model_type, missing)
    assert all(f"`{k}`" in text for k in COMMON_KEYS)
