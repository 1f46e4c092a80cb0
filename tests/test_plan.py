"""Data budgets: the shipped configs admit Open-o3's inputs (issue 9, defect 3), and the
data-budget planner (`o3video_jax.data.plan`) counts what the pipeline builds."""

import os
import sys

import pytest

from o3video_jax.data import vision

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments", "configs"))

SIZES = ("3b", "7b", "32b", "72b")
# (width, height) of the videos Open-o3 trains on, and per frame patches at the Open-o3 frame
# pixels (min 128 * 28 * 28 = 100352, max 105369), derived by hand from smart_resize's rule:
#   640x360 (16:9): beta = sqrt(230400 / 105369) = 1.479 -> floor(8.69) * 28 x floor(15.46) * 28
#                   = 224 x 420 -> 16 * 30 = 480 patches
#   640x480 (4:3):  280 x 364 -> 20 * 26 = 520;  360x640 (9:16): 420 x 224 -> 480
#   320x240 (4:3, upscaled): 252 x 308 < min -> beta = sqrt(100352 / 76800) = 1.143 ->
#                   ceil(9.80) * 28 x ceil(13.06) * 28 = 280 x 392 -> 20 * 28 = 560
#   256x144 (16:9, upscaled): 252 x 448 -> 18 * 32 = 576
VIDEOS = {(640, 360): 480, (640, 480): 520, (360, 640): 480, (320, 240): 560, (256, 144): 576}
KEY_FRAMES = 4  # each key frame is resized to the sampled frame size: one frame's patches
# Text around the vision tokens of an example: per image <|vision_start|>/<|vision_end|> and a
# "Frame j at t s: " label (~10 tokens); plus the system prompt, question and, for SFT, the
# reasoning and answer (Open-o3's system prompts are ~350 tokens).
TEXT_PER_IMAGE = 12
SFT_TEXT, RL_TEXT = 2048, 640


def _configs():
    import gspo_qwen2_5_vl
    import sft_qwen2_5_vl

    for size in SIZES:
        yield "sft", size, sft_qwen2_5_vl.get_config(f"size={size}")
        yield "gspo", size, gspo_qwen2_5_vl.get_config(f"size={size}")


def _frame_patches(width: int, height: int, d) -> int:
    h, w = vision.smart_resize(
        height, width, min_pixels=d.frame_min_pixels, max_pixels=d.frame_max_pixels
    )
    return (h // vision.PATCH_SIZE) * (w // vision.PATCH_SIZE)


def test_frame_patches_follow_smart_resize_by_hand():
    import sft_qwen2_5_vl

    d = sft_qwen2_5_vl.get_config().data
    assert {wh: _frame_patches(*wh, d) for wh in VIDEOS} == VIDEOS


@pytest.mark.parametrize("stage,size,config", list(_configs()), ids=lambda x: str(x)[:8])
def test_shipped_budgets_admit_16_frames_and_4_key_frames(stage, size, config):
    d = config.data
    assert d.max_frames >= 16
    for (w, h), _ in VIDEOS.items():
        images = d.max_frames + KEY_FRAMES
        patches = images * _frame_patches(w, h, d)
        assert patches <= d.max_patches, (
            f"{stage} {size}: {images} frames of {w}x{h} need {patches} patches "
            f"> data.max_patches {d.max_patches}"
        )
        tokens = patches // vision.MERGE_SIZE**2 + images * TEXT_PER_IMAGE
        if stage == "sft":
            assert tokens + SFT_TEXT <= d.max_seq_len, (stage, size, w, h, tokens)
        else:  # the prompt must fit the largest prompt bucket, the completion is extra
            assert tokens + RL_TEXT <= max(config.rl.prompt_buckets), (stage, size, w, h, tokens)
            assert tokens + RL_TEXT + config.rl.max_new_tokens <= d.max_seq_len
