"""Training prompts against upstream Open-o3 Video (strings held as fixtures, chats by hand).

The fixture tests/fixtures/upstream/open_o3_training_prompts.json holds upstream's strings
verbatim (github:marinero4972/Open-o3-Video @ 1eb6eca, Apache-2.0). The expected chats below
are written out by hand following upstream's code paths: `apply_chat_template` on
[system, user{video, text}(, assistant)], then the `<|vision_start|><|video_pad|><|vision_end|>`
placeholder replaced by the frame block (`sft_multi_task.py` collate_fn, `grpo_trainer.py`
compute_loss).
"""

import json
import os

import cv2
import numpy as np
import pytest

from o3video_jax.data import examples as ex
from o3video_jax.data import prompts as P
from o3video_jax.data import records as R
from o3video_jax.data import video, vision
from o3video_jax.data.tokenizer import make_tiny_tokenizer

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "upstream")
with open(os.path.join(FIXTURE, "open_o3_training_prompts.json"), encoding="utf-8") as f:
    UP = json.load(f)
RL_SYS = UP["rl_system_prompts"]["prompts"]
SFT_SYS = UP["sft_system_prompts"]["prompts"]
IMG = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tiny_tokenizer(tmp_path_factory.mktemp("tok"), ["Frame 1 at 0.5s: What?"] * 3)


def _chat(system, user, assistant=None):
    text = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
    if assistant is None:
        return text + "<|im_start|>assistant\n"
    return text + f"<|im_start|>assistant\n{assistant}<|im_end|>\n"


def _record(split, task, **kw):
    base = dict(id="r", source="src", question="When does the man sit?", answer="a")
    return R.STGRRecord(split=split, task=task, **{**base, **kw})


# ---- the strings -----------------------------------------------------------------------------
def test_all_eleven_system_prompts_are_upstreams():
    assert len(RL_SYS) + len(SFT_SYS) == 11
    assert P.RL_SYSTEM_PROMPTS == RL_SYS
    assert P.SFT_SYSTEM_PROMPTS == SFT_SYS
    for task, text in RL_SYS.items():
        assert P.system_prompt(task, "rl") == text
    for task, text in SFT_SYS.items():
        assert P.system_prompt(task, "sft") == text
    with pytest.raises(ValueError):
        P.system_prompt(R.TEMPORAL_QA_MCQ, "sft")  # upstream SFT has no TG-MCQ branch
    assert P.TYPE_TEMPLATE == UP["type_template"]["templates"]
    # spot checks that the fixture is what we think it is (upstream's typos kept)
    assert RL_SYS[R.TEMPORAL_QA].count("s'.The answer") == 1
    assert SFT_SYS[R.TEMPORAL_QA].endswith("`From <t>start_time</t>s to <t>end_time</t>s'")


def test_user_text_prefixes():
    assert UP["user_text"]["sft_prefixed_tasks"] == [
        R.TEMPORAL_QA, R.GENERAL_MCQ, R.GENERAL_FREE_FORM
    ]  # fmt: skip
    for task in R.TASKS:
        rl = _record("rl", task)
        assert P.user_text(rl) == rl.question
        if task in R.SFT_TASKS:
            sft = _record("sft", task)
            prefix = "Question: " if task in UP["user_text"]["sft_prefixed_tasks"] else ""
            assert P.user_text(sft) == prefix + sft.question


# ---- sampling and pixels (vision_process.py, run scripts) -----------------------------------
def test_frame_count_sample_fps_and_pixel_budgets_are_upstreams():
    # smart_nframes: 25 frames at 10 fps -> 25/10*2 = 5 -> in [4, 16] -> floor to even 4;
    # indices linspace(0, 24, 4).round() = 0 8 16 24; sample fps 4/25*10 = 1.6.
    idx = video.sample_indices(25, 10.0, 2.0, 16, 4, True, "o3")
    assert idx.tolist() == [0, 8, 16, 24]
    # 300 frames at 30 fps (10 s) -> 20 -> capped at 16; 9 frames at 30 fps -> 0.6 -> 4.
    assert len(video.sample_indices(300, 30.0, 2.0, 16, 4, True, "o3")) == 16
    assert len(video.sample_indices(9, 30.0, 2.0, 16, 4, True, "o3")) == 4
    # fetch_video: max = max(min(128*784, total/n*2), int(1.05 * 128*784)) with total
    # 128000*784*0.9 -> 105369; min 128*784; images MAX_PIXELS 256*784, MIN_PIXELS 4*784.
    total = int(float(128000 * 28 * 28 * 0.9))
    upstream_max = max(min(128 * 784, total / 16 * 2), int(128 * 784 * 1.05))
    assert vision.O3_FRAME_MAX_PIXELS == upstream_max == 105369
    assert vision.O3_IMAGE_MAX_PIXELS == 256 * 784
    cfg = ex.ExampleConfig()
    assert (cfg.fps, cfg.max_frames, cfg.min_frames, cfg.sampling) == (2.0, 16, 4, "o3")
    assert (cfg.frame_min_pixels, cfg.frame_max_pixels) == (128 * 784, 105369)
    assert (cfg.image_min_pixels, cfg.image_max_pixels) == (4 * 784, 256 * 784)
    # 640x360 -> beta = sqrt(230400/105369); floor(360/beta/28)*28 = 224, 640 -> 420
    assert vision.smart_resize(360, 640, min_pixels=128 * 784, max_pixels=105369) == (224, 420)
    import experiments.configs.common as common

    d = common.base_config().data
    assert (d.fps, d.max_frames, d.min_frames) == (2.0, 16, 4)
    assert (d.frame_min_pixels, d.frame_max_pixels, d.image_max_pixels) == (
        128 * 784, 105369, 256 * 784
    )  # fmt: skip
    assert d.prompt_quirks == "original" and d.system_prompt == "open_o3"


# ---- whole chats ---------------------------------------------------------------------------
FPS = 1.6  # the 25-frame 10 fps clip above: labels 0.0 0.6 1.2 1.9, total int(2.5) = 2
RL_FRAMES = (
    f"Frame 1 at 0.0s: {IMG}\nFrame 2 at 0.6s: {IMG}\nFrame 3 at 1.2s: {IMG}\n"
    f"Frame 4 at 1.9s: {IMG}\nThe video is in total 2 seconds.\n"
)


def _render(tok, record, assistant=None, quirks="original"):
    if record.task == R.VISUAL_QA:
        content = [{"type": "image"}]
    else:
        content = list(P.record_frame_layout(record, 4, FPS, quirks).content)
    return tok.render(
        P.build_messages(record, content, assistant), add_generation_prompt=assistant is None
    )


@pytest.mark.parametrize("task", [R.TEMPORAL_QA, R.TEMPORAL_QA_MCQ, R.GENERAL_MCQ,
                                  R.GENERAL_FREE_FORM])  # fmt: skip
def test_rl_video_chat(tok, task):
    rec = _record("rl", task)
    assert _render(tok, rec) == _chat(RL_SYS[task], RL_FRAMES + rec.question)


def test_rl_visual_qa_chat(tok):
    rec = _record("rl", R.VISUAL_QA, question="Where is the dog?")
    assert _render(tok, rec) == _chat(RL_SYS[R.VISUAL_QA], IMG + "Where is the dog?")


def test_sft_visual_qa_chat(tok):
    # boxes rescaled from the 200x400 original to the 56x112 image fed: factor 0.28
    rec = _record(
        "sft", R.VISUAL_QA, question="Where is the dog?", image_path="i.jpg",
        image_size=(200, 400), reasoning_process="the dog <box>[10,20,110,220]</box>",
        answer="<obj>dog</obj><box>[10,20,110,220]</box>",
    )  # fmt: skip
    target = P.sft_target(rec, (56, 112), clip=False).text
    assistant = (
        "<think>the dog <box>[3,6,31,62]</box></think>\n"
        "<answer><obj>dog</obj><box>[3,6,31,62]</box></answer>"
    )
    assert target == assistant
    assert _render(tok, rec, assistant=target) == _chat(
        SFT_SYS[R.VISUAL_QA], IMG + "Where is the dog?", assistant
    )


@pytest.mark.parametrize("task", [R.TEMPORAL_QA, R.GENERAL_MCQ, R.GENERAL_FREE_FORM])
def test_sft_video_chat_no_s_and_question_prefix(tok, task):
    rec = _record("sft", task, reasoning_process="think", answer="B")
    frames = RL_FRAMES.replace("s: ", ": ")  # SFT: `Frame 1 at 0.0: ` (no s)
    assistant = "<think>think</think>\n<answer>B</answer>"
    assert _render(tok, rec, assistant=P.sft_target(rec, (64, 48)).text) == _chat(
        SFT_SYS[task], frames + "Question: " + rec.question, assistant
    )


def _kf(t, i):
    return R.KeyFrame(time=t, path=f"k{i}.jpg", idx=i)


def test_temporal_spatial_chats_both_splits(tok):
    # floor seconds of the 4 sampled frames: 0 0 1 1. Key frames at 0.75 (JSON float) and 1
    # (JSON int): RL rounds to 1 and 1 and prints them as ints; SFT prints them raw.
    kfs = (_kf(0.75, 0), _kf(1, 1))
    rl = _record("rl", R.TEMPORAL_SPATIAL, key_frames=kfs)
    rl_block = (
        f"Frame 1 at 0.0s: {IMG}\nFrame 2 at 0.6s: {IMG}\nFrame 3 at 1s: {IMG}\n"
        f"Frame 4 at 1s: {IMG}\nFrame 5 at 1.2s: {IMG}\nFrame 6 at 1.9s: {IMG}\n"
        "The video is in total 2 seconds.\n"
    )
    assert _render(tok, rl) == _chat(RL_SYS[R.TEMPORAL_SPATIAL], rl_block + rl.question)
    sft = _record("sft", R.TEMPORAL_SPATIAL, key_frames=kfs, reasoning_process="r")
    sft_block = (
        f"Frame 1 at 0.0s: {IMG}\nFrame 2 at 0.6s: {IMG}\nFrame 3 at 0.75s: {IMG}\n"
        f"Frame 4 at 1s: {IMG}\nFrame 5 at 1.2s: {IMG}\nFrame 6 at 1.9s: {IMG}\n"
    )  # raw times, the `s`, no total line
    target = P.sft_target(sft, (64, 48)).text
    assert _render(tok, sft, assistant=target) == _chat(
        SFT_SYS[R.TEMPORAL_SPATIAL], sft_block + sft.question, target
    )
    # A temporal-spatial record without key frames still takes upstream's key-frame branch.
    bare = _record("sft", R.TEMPORAL_SPATIAL, reasoning_process="r")
    assert P.record_frame_layout(bare, 4, FPS).text(IMG) == (
        f"Frame 1 at 0.0s: {IMG}\nFrame 2 at 0.6s: {IMG}\nFrame 3 at 1.2s: {IMG}\n"
        f"Frame 4 at 1.9s: {IMG}\n"
    )


def test_sft_boxes_rewritten_in_the_whole_chat_without_clipping():
    # sft_multi_task.py rescales `<box>[...]</box>` in the rendered text (question included)
    # and does not clip: 250 * 56/200 = 70 (outside the 56 px wide image) stays 70.
    rec = _record(
        "sft", R.VISUAL_QA, question="Is <box>[0, 0, 100, 200]</box> a dog?",
        answer="<obj>dog</obj><box>[10,20,250,220]</box>", image_path="i.jpg",
        image_size=(200, 400), reasoning_process="dog",
    )  # fmt: skip
    t = P.sft_target(rec, (56, 112), clip=False)
    assert t.question == "Is <box>[0,0,28,56]</box> a dog?"
    assert "<box>[3,6,70,62]</box>" in t.text
    assert "<box>[3,6,56,62]</box>" in P.sft_target(rec, (56, 112)).text  # clip=True


def test_mcq_messages_equal_the_videomme_evaluation_prompt():
    from o3video_jax.evaluate import prompts as EP

    rec = R.MCQRecord(id="q", question="What?", options=("red", "blue"), answer="A")
    item = {"question": "What?", "options": ["A. red", "B. blue"]}
    for think in (False, True):
        msgs = P.mcq_messages(rec, [{"type": "video"}], think=think)
        assert msgs[0]["content"][1]["text"] == EP.videomme_prompt(item, think).text


# ---- end to end through the example builder ----------------------------------------------------
def _write_video(path, n=25, fps=10, w=64, h=48):
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for i in range(n):
        vw.write(np.full((h, w, 3), 8 * i, np.uint8))
    vw.release()


def test_example_builder_renders_upstreams_rl_chat(tmp_path, tok):
    _write_video(tmp_path / "v.mp4")
    raw = {"id": "1", "task": R.TEMPORAL_QA, "source": "timerft", "video_path": "v.mp4",
           "question": "When does the man sit?", "answer": "[0.5, 1.5]"}  # fmt: skip
    b = ex.ExampleBuilder(ex.ExampleConfig(kind="rl", media_root=str(tmp_path)), tok)
    e = b(raw)
    text = tok.decode(e.segment.input_ids)
    collapsed = text.replace("<|image_pad|>", "")
    expected = _chat(RL_SYS[R.TEMPORAL_QA], RL_FRAMES + raw["question"])
    assert collapsed == expected.replace("<|image_pad|>", "")
    assert len(e.segment.vision) == 4
