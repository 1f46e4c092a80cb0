"""Fixes found in review (issue 12): the reproduction preset's reward gate, the sigma schedule's
step fraction, and rewards of completions with more think times / claims than the buffers."""

import importlib.util
import os

from o3video_jax.rl import gspo

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments", "configs")


def _config_module(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIGS, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reproduction_preset_uses_the_original_spatial_gate():
    assert gspo.presets()["open_o3_video"].spatial_gate == "reference"
    assert gspo.presets()["gspo_paper"].spatial_gate == "intended"
    cfg = _config_module("gspo_qwen2_5_vl")
    assert cfg.get_config("runlocal").rl.spatial_gate == "reference"
    assert cfg.get_config("runlocal,preset=gspo_paper").rl.spatial_gate == "intended"
    # Elsewhere the corrected gate stays the default.
    assert _config_module("common").base_config().rl.spatial_gate == "intended"
