"""Qwen25VLConfig: presets, validation, and the HF config.json bridge."""

import dataclasses
import json

import pytest

from o3video_jax.models.qwen2_5_vl import Qwen25VLConfig
from o3video_jax.models.qwen2_5_vl.config import TextConfig, VisionConfig

# The flat Hub form of Qwen2.5-VL-7B-Instruct's config.json (4.x era layout).
HUB_7B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 128000,
    "max_window_layers": 28,
    "model_type": "qwen2_5_vl",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.41.2",
    "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {
        "depth": 32,
        "hidden_act": "silu",
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 152064,
}


def test_presets_published_values():
    c3, c7, c32, c72 = (Qwen25VLConfig.preset(n) for n in ("3b", "7b", "32b", "72b"))
    assert (c3.hidden_size, c3.num_hidden_layers, c3.num_attention_heads) == (2048, 36, 16)
    assert (c3.num_key_value_heads, c3.vocab_size, c3.tie_word_embeddings) == (2, 151936, True)
    assert (c7.hidden_size, c7.num_hidden_layers, c7.intermediate_size) == (3584, 28, 18944)
    assert (c7.num_kv_groups, c7.tie_word_embeddings) == (7, False)
    assert (c32.hidden_size, c32.num_hidden_layers, c32.vision.intermediate_size) == (
        5120,
        64,
        3456,
    )
    assert (c72.hidden_size, c72.num_attention_heads, c72.vision.out_hidden_size) == (
        8192,
        64,
        8192,
    )
    for c in (c3, c7, c32, c72):
        assert c.head_dim == 128 and c.mrope_section == (16, 24, 24)
        assert c.vision.head_dim == 80 and c.vision.window_tokens == 4
        assert c.vision.patch_dim == 1176 and c.vision.tokens_per_second == 2
        assert c.image_token_id == 151655 and c.rms_norm_eps == 1e-6


def test_tiny_preset():
    c = Qwen25VLConfig.preset("tiny")
    assert (c.hidden_size, c.head_dim, c.mrope_section, c.num_kv_groups) == (64, 16, (2, 3, 3), 2)
    assert (c.image_token_id, c.video_token_id) == (492, 493)
    assert (c.vision_start_token_id, c.vision_end_token_id) == (489, 490)
    assert (c.eos_token_id, c.pad_token_id, c.vocab_size) == (482, 480, 512)
    assert c.vision.fullatt_block_indexes == (1,) and c.vision.head_dim == 16
    assert Qwen25VLConfig.preset("tiny", dtype="bfloat16").dtype == "bfloat16"
    with pytest.raises(ValueError, match="unknown preset"):
        Qwen25VLConfig.preset("13b")


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(text=dict(mrope_section=(2, 3, 4))), "mrope_section"),
        (dict(text=dict(num_key_value_heads=3)), "num_key_value_heads"),
        (dict(text=dict(hidden_size=66)), "num_attention_heads"),
        (dict(vision=dict(out_hidden_size=32)), "out_hidden_size"),
        (dict(vision=dict(fullatt_block_indexes=(2,))), "fullatt_block_indexes"),
        (dict(vision=dict(num_heads=3)), "num_heads"),
        (dict(vision=dict(window_size=100)), "window_size"),
        (dict(dtype="float16"), "dtype"),
        (dict(param_dtype="int8"), "param_dtype"),
        (dict(remat="some"), "remat"),
        (dict(attention="flash"), "attention"),
        (dict(image_token_id=600), "image_token_id"),
    ],
)
def test_validation_errors(change, match):
    c = Qwen25VLConfig.preset("tiny")
    with pytest.raises(ValueError, match=match):
        if "text" in change:
            dataclasses.replace(c, text=dataclasses.replace(c.text, **change["text"]))
        elif "vision" in change:
            dataclasses.replace(c, vision=dataclasses.replace(c.vision, **change["vision"]))
        else:
            dataclasses.replace(c, **change)


def test_frozen():
    c = Qwen25VLConfig.preset("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.dtype = "bfloat16"


def test_flat_hub_form_parses_to_7b_preset():
    assert Qwen25VLConfig.from_hf_dict(HUB_7B) == Qwen25VLConfig.preset("7b")


def test_flat_hub_form_agrees_with_transformers():
    transformers = pytest.importorskip("transformers")
    hf = transformers.Qwen2_5_VLConfig(**json.loads(json.dumps(HUB_7B)))
    assert hf.text_config.hidden_size == 3584 and hf.vision_config.in_channels == 3
    assert Qwen25VLConfig.from_hf_dict(hf.to_dict()) == Qwen25VLConfig.preset("7b")


@pytest.mark.parametrize("name", ["tiny", "3b", "72b"])
def test_hf_round_trip(name):
    transformers = pytest.importorskip("transformers")
    c = Qwen25VLConfig.preset(name)
    hf = transformers.Qwen2_5_VLConfig(**c.to_hf_dict())
    assert hf.text_config.num_key_value_heads == c.num_key_value_heads
    assert hf.text_config.rope_parameters["mrope_section"] == list(c.mrope_section)
    assert hf.vision_config.fullatt_block_indexes == list(c.vision.fullatt_block_indexes)
    assert hf.tie_word_embeddings == c.tie_word_embeddings
    assert Qwen25VLConfig.from_hf_dict(hf.to_dict()) == c
    assert Qwen25VLConfig.from_hf_dict(json.loads(json.dumps(c.to_hf_dict()))) == c


def test_json_dir_loads_in_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    c = Qwen25VLConfig.preset("tiny", param_dtype="bfloat16")
    c.to_hf_json(tmp_path / "config.json")
    assert Qwen25VLConfig.from_hf_json(tmp_path, param_dtype="bfloat16") == c
    hf = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(hf).__name__ == "Qwen2_5_VLConfig"
    torch.manual_seed(0)
    model = transformers.Qwen2_5_VLForConditionalGeneration(hf)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["lm_head.weight"] == (512, 64)
    assert shapes["model.visual.patch_embed.proj.weight"] == (32, 3, 2, 14, 14)
    assert shapes["model.visual.merger.mlp.2.weight"] == (64, 128)
    assert shapes["model.language_model.layers.1.self_attn.k_proj.weight"] == (32, 64)


def test_nested_variants():
    nested = Qwen25VLConfig.preset("3b").to_hf_dict()
    # pre-5 saves kept the tie flag inside text_config only.
    nested["tie_word_embeddings"] = False
    nested["text_config"]["tie_word_embeddings"] = True
    # 4.x rope_scaling instead of rope_parameters, alternative vision key spellings.
    rope = nested["text_config"].pop("rope_parameters")
    nested["text_config"]["rope_scaling"] = {"type": "mrope", "mrope_section": [16, 24, 24]}
    nested["text_config"]["rope_theta"] = rope["rope_theta"]
    v = nested["vision_config"]
    v["num_hidden_layers"] = v.pop("depth")
    v["in_chans"] = v.pop("in_channels")
    v["spatial_patch_size"] = v.pop("patch_size")
    assert Qwen25VLConfig.from_hf_dict(nested) == Qwen25VLConfig.preset("3b")


def test_missing_keys_take_hf_class_defaults():
    c = Qwen25VLConfig.from_hf_dict(
        {"model_type": "qwen2_5_vl", "vision_config": {"out_hidden_size": 8192}}
    )
    assert c.text == TextConfig() and c.rms_norm_eps == 1e-5
    assert c.vision == VisionConfig(out_hidden_size=8192) and c.vision.tokens_per_second == 4


@pytest.mark.parametrize(
    "d",
    [{"model_type": "qwen2_vl"}, {"model_type": "llama"}, {"architectures": ["LlamaForCausalLM"]}],
)
def test_other_architecture_raises(d):
    with pytest.raises(ValueError, match="qwen2_5_vl|Qwen2.5-VL"):
        Qwen25VLConfig.from_hf_dict(d)
