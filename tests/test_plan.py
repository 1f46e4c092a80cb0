"""Data budgets: the shipped configs admit Open-o3's inputs (issue 9, defect 3), and the
data-budget planner (`o3video_jax.data.planner`, command line `python -m o3video_jax.data.plan`) counts what the pipeline builds."""

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
            from o3video_jax.drivers import preflight

            buckets = preflight.check(config, num_devices=64).prompt_buckets
            assert tokens + RL_TEXT <= max(buckets), (stage, size, w, h, tokens)
            assert tokens + RL_TEXT + config.rl.max_new_tokens <= d.max_seq_len


# ---- the planner -------------------------------------------------------------------------------
def _write_video(path, w, h, n=24, fps=8):
    import cv2
    import numpy as np

    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for i in range(n):
        frame = np.zeros((h, w, 3), np.uint8)
        cv2.rectangle(frame, (i, 2), (i + 8, 12), (40 * (i % 6), 200, 90), -1)
        vw.write(frame)
    vw.release()


def _st(i, video, kf_times=(1.0,), kf_path="kf.jpg"):
    kfs = [{"time": t, "path": kf_path, "idx": k} for k, t in enumerate(kf_times)]
    return {
        "id": f"st{i}", "task": "temporal-spatial free-form QA", "source": "STR_coin",
        "question": f"What happens {i}?", "answer": "a man walks",
        "reasoning_process": f"<obj>man</obj><box>[0.1, 0.2, 0.5, 0.9]</box>at<t>{i}.5</t>s",
        "video_path": video, "key_frames": kfs,
        "key_items": {str(k): {"man": [[0.1, 0.2, 0.5, 0.9]]} for k in range(len(kfs))},
    }  # fmt: skip


def _tqa(i, video):
    return {
        "id": f"tq{i}", "task": "temporal QA", "source": "TVG_x", "question": f"When {i}?",
        "answer": "From <t>1.0</t>s to <t>2.0</t>s", "reasoning_process": "at <t>1.5</t>s",
        "video_path": video,
    }  # fmt: skip


def _vqa(i, image):
    return {
        "id": f"vq{i}", "task": "visual QA", "source": "treevgr", "question": f"Where {i}?",
        "answer": "<obj>dog</obj><box>[1, 2, 30, 40]</box>", "image_path": image,
        "image_size": [80, 60], "reasoning_process": "the dog <box>[1,2,30,40]</box>",
    }  # fmt: skip


# (W, H): 16:9, 4:3, 9:16 and a small video upscaled to the frame budget.
PLAN_VIDEOS = {"wide.mp4": (112, 64), "four3.mp4": (96, 72), "tall.mp4": (64, 112), "small.mp4": (40, 30)}  # fmt: skip


@pytest.fixture(scope="module")
def stgr(tmp_path_factory):
    import cv2
    import numpy as np

    from o3video_jax.data import prompts
    from o3video_jax.data.tokenizer import make_tiny_tokenizer

    root = tmp_path_factory.mktemp("stgr")
    for name, (w, h) in PLAN_VIDEOS.items():
        _write_video(root / name, w, h)
    (root / "empty.mp4").write_bytes(b"")
    (root / "random.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    cv2.imwrite(str(root / "kf.jpg"), np.full((50, 70, 3), 128, np.uint8))
    cv2.imwrite(str(root / "img.jpg"), np.full((60, 80, 3), 60, np.uint8))
    cv2.imwrite(str(root / "big.png"), np.full((300, 500, 3), 60, np.uint8))
    tok = make_tiny_tokenizer(root / "tok", [prompts.R1_PREAMBLE, "Frame 1 at 0.5s: What?"])
    good = []
    for i, name in enumerate(PLAN_VIDEOS):
        # 1, 2 and 4 key frames (the 4th at 9 s is past the 3 s video: dropped from the prompt)
        good += [_st(10 * i, name), _st(10 * i + 1, name, (0.5, 2.0)),
                 _st(10 * i + 2, name, (0, 1, 2, 9)), _tqa(10 * i + 3, name)]  # fmt: skip
    good += [_vqa(1, "img.jpg"), _vqa(2, "big.png")]
    bad = [_tqa(90, "missing.mp4"), _tqa(91, "empty.mp4"), _tqa(92, "random.mp4"),
           _st(93, "wide.mp4", kf_path="nokf.jpg"), _vqa(94, "noimg.jpg"),
           dict(_tqa(95, "wide.mp4"), question="")]  # fmt: skip
    return root, tok, good, bad


def _example_config(root, kind="sft", **kw):
    from o3video_jax.data.examples import ExampleConfig

    base = dict(kind=kind, media_root=str(root), frame_min_pixels=56 * 56,
                frame_max_pixels=84 * 84, image_max_pixels=112 * 112, max_frames=8)  # fmt: skip
    return ExampleConfig(**{**base, **kw})


@pytest.mark.parametrize("kind", ["sft", "rl"])
def test_planner_counts_equal_the_pipeline_builder(stgr, kind):
    from o3video_jax.data import planner as plan
    from o3video_jax.data.examples import ExampleBuilder, ExampleError

    root, tok, good, bad = stgr
    cfg = _example_config(root, kind)
    builder = ExampleBuilder(cfg, tok)
    raws = good + bad
    if kind == "rl":  # RL temporal QA answers are [start, end] lists
        raws = [dict(r, answer="[1.0, 2.0]") if r["id"][:2] == "tq" else r for r in raws]
    plans = plan.plan_records(raws, plan.Planner(cfg, tok), threads=4)
    assert [p.record_id for p in plans] == [r["id"] for r in raws]
    sizes = set()
    for i, (raw, p) in enumerate(zip(raws, plans, strict=True)):
        try:
            ex = builder(raw, i)
        except ExampleError as e:
            assert p.error == e.reason, (raw["id"], p, e)
            continue
        assert p.error is None, (raw["id"], p)
        assert (p.tokens, p.patches, p.frame_size) == (ex.num_tokens, ex.num_patches, ex.frame_size)
        assert p.images == len(ex.segment.vision)
        sizes.add(p.frame_size)
    assert len(sizes) >= 5  # four video shapes and the images
    by_id = {p.record_id: p for p in plans}
    assert by_id["st2"].key_frames == 3  # the key frame at 9 s is dropped
    assert by_id["st1"].key_frames == 2 and by_id["tq3"].key_frames == 0
    s = plan.summarize(plans, 10**6, 10**6)
    assert s.ok == len(good) and s.errors == {"decode": 3, "image": 2, "record": 1}


def test_budget_for_is_the_smallest_admitting_budget():
    import numpy as np

    from o3video_jax.data import planner as plan

    v = np.arange(10, 1001, 10)  # 100 examples
    assert plan.budget_for(v, 0.99) == 990 and plan.budget_for(v, 1.0) == 1000
    assert plan.budget_for(v, 0.99, 4) == 992
    assert plan.budget_for(v, 0.5) == 500 and plan.budget_for(np.array([], int), 1.0) == 0
    assert (v <= plan.budget_for(v, 0.99)).mean() >= 0.99
    assert (v <= plan.budget_for(v, 0.99) - 1).mean() < 0.99


def test_plan_command_reports_distribution_fits_and_budgets(stgr, tmp_path):
    import json
    import subprocess

    root, tok, good, bad = stgr
    data = tmp_path / "stgr_sft.json"
    data.write_text(json.dumps(good + bad))
    cfg = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs")
    cmd = [
        sys.executable, "-m", "o3video_jax.data.plan",
        f"--config={cfg}/sft_qwen2_5_vl.py:runlocal", f"--config.data.train_json={data}",
        f"--config.data.media_root={root}", "--config.data.layout=flat",
        f"--config.data.tokenizer_dir={root / 'tok'}", "--config.data.frame_min_pixels=3136",
        "--config.data.frame_max_pixels=7056", "--config.data.max_patches=160", "--limit=100",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert f"records {len(good + bad)}: {len(good)} buildable" in text
    assert "'decode': 3" in text and "'image': 2" in text and "'record': 1" in text
    assert "fits the budgets (tokens <= 1024, patches <= 160)" in text
    assert "smallest budgets admitting 99%" in text and "temporal-spatial" in text
