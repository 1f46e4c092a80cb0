"""Fixes found in review (issue 12): the reproduction preset's reward gate, the sigma schedule's
step fraction, and rewards of completions with more think times / claims than the buffers."""

import importlib.util
import os

import pytest

from o3video_jax.rewards import compute_rewards
from o3video_jax.rewards.config import RewardConfig
from o3video_jax.rewards.scan import parse_batch
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


def test_rewards_score_every_think_time_and_claim_beyond_the_budgets():
    """The original averages over all times / claims; with 100 times (36 outside the span,
    then 64 inside) the mean is 0.64 whatever the budget (the old code kept the first 64 and
    divided their sum, 28, by 100)."""
    tqa = {"task": "temporal QA", "answer": "[10.0, 20.0]"}
    times = "<t>3</t>s " * 36 + "<t>15</t>s " * 64
    text = f"<think>{times}</think><answer>[10, 20]</answer>"
    r = compute_rewards([text], [tqa])
    assert r["thk_temporal_segment"][0] == pytest.approx(0.64, abs=1e-6)
    small = compute_rewards([text], [tqa], config=RewardConfig(max_times=8))
    assert small["thk_temporal_segment"][0] == pytest.approx(0.64, abs=1e-6)
    # 40 claims: 30 at a time with no key frame within 1 s (0), then 10 exact hits (1) with
    # 5 boxes each, the matching one last (past max_claim_boxes=4): mean 10 / 40.
    ts = {
        "task": "temporal-spatial free-form QA",
        "answer": "a man",
        "key_frames": [{"time": 2.0, "idx": 0, "path": "a.jpg"}],
        "key_items": {"0": {"man": [[0.0, 0.0, 0.5, 0.5]]}},
        "frame_size": [200, 100],
    }
    miss = "<obj>man</obj><box>[0,0,100,50]</box>at<t>9</t>s "
    hit = (
        "<obj>man</obj>" + "<box>[150,50,200,100]</box>" * 4 + "<box>[0,0,100,50]</box>at<t>2</t>s "
    )
    text = f"<think>{miss * 30}{hit * 10}</think><answer>a man</answer>"
    for cfg in (RewardConfig(), RewardConfig(max_claims=4, max_claim_boxes=2)):
        r = compute_rewards([text], [ts], config=cfg)
        assert r["thk_spatial"][0] == pytest.approx(0.25, abs=1e-6)
    parsed = parse_batch([text], RewardConfig(), [ts["task"]])
    assert parsed.num_claims[0] == 40 and parsed.claim_mask.sum() == 40
    assert parsed.claim_box_ok.sum() == 30 + 10 * 5
