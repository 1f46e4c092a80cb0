"""Frame-prompt layout (both quirk modes, hand-derived), system prompts and SFT targets."""

import pytest

from o3video_jax.data import prompts as P
from o3video_jax.data import records as R

# 6 frames sampled at 2 fps: labels 0.0 0.5 1.0 1.5 2.0 2.5, floor seconds 0 0 1 1 2 2.
KF_TIMES = [0.6, 1.5, 2.5, 7.2]


def _lines(layout):
    return layout.text("<img>")


def test_rl_original_key_frames_integer_times_and_late_drop():
    # round(): 0.6 -> 1, 1.5 -> 2, 2.5 -> 2 (half to even), 7.2 -> 7. A key frame goes before
    # the first frame whose floor second reaches it; 7 s is past the last frame: dropped.
    lay = P.frame_layout(6, 2.0, KF_TIMES, split="rl", quirks="original")
    assert _lines(lay) == (
        "Frame 1 at 0.0s: <img>\n"
        "Frame 2 at 0.5s: <img>\n"
        "Frame 3 at 1s: <img>\n"
        "Frame 4 at 1.0s: <img>\n"
        "Frame 5 at 1.5s: <img>\n"
        "Frame 6 at 2s: <img>\n"
        "Frame 7 at 2s: <img>\n"
        "Frame 8 at 2.0s: <img>\n"
        "Frame 9 at 2.5s: <img>\n"
        "The video is in total 3 seconds.\n"
    )
    assert lay.dropped_key_frames == (3,)
    assert [(s.kind, s.index) for s in lay.slots][2:7] == [
        ("key_frame", 0), ("frame", 2), ("frame", 3), ("key_frame", 1), ("key_frame", 2)
    ]  # fmt: skip


def test_sft_original_key_frames_raw_times_no_total_line():
    # Raw times: 0.6 enters at floor second 1, 1.5 at floor second 2; 2.5 never (last frame's
    # floor second is 2) and 7.2: both dropped. SFT key-frame prompts have no total line.
    lay = P.frame_layout(6, 2.0, KF_TIMES, split="sft", quirks="original")
    assert _lines(lay) == (
        "Frame 1 at 0.0s: <img>\n"
        "Frame 2 at 0.5s: <img>\n"
        "Frame 3 at 0.6s: <img>\n"
        "Frame 4 at 1.0s: <img>\n"
        "Frame 5 at 1.5s: <img>\n"
        "Frame 6 at 1.5s: <img>\n"
        "Frame 7 at 2.0s: <img>\n"
        "Frame 8 at 2.5s: <img>\n"
    )
    assert lay.dropped_key_frames == (2, 3)


@pytest.mark.parametrize("split", ["sft", "rl"])
def test_corrected_key_frames_exact_times_nothing_dropped(split):
    lay = P.frame_layout(6, 2.0, [1.5, 0.6, 7.2, 2.5], split=split, quirks="corrected")
    assert _lines(lay) == (
        "Frame 1 at 0.0s: <img>\n"
        "Frame 2 at 0.5s: <img>\n"
        "Frame 3 at 0.6s: <img>\n"
        "Frame 4 at 1.0s: <img>\n"
        "Frame 5 at 1.5s: <img>\n"
        "Frame 6 at 1.5s: <img>\n"
        "Frame 7 at 2.0s: <img>\n"
        "Frame 8 at 2.5s: <img>\n"
        "Frame 9 at 2.5s: <img>\n"
        "Frame 10 at 7.2s: <img>\n"
        "The video is in total 3 seconds.\n"
    )
    assert lay.dropped_key_frames == ()
    assert [s.index for s in lay.slots if s.kind == "key_frame"] == [1, 0, 3, 2]


def test_plain_video_layout_sft_has_no_s_and_total_line_uses_floor():
    # 4 frames at 4/30 * 10 fps (a 3 s, 30-frame video): labels i * 0.75 rounded to 0.1.
    fps = 4 / 30 * 10
    sft = P.frame_layout(4, fps, split="sft")
    assert _lines(sft) == (
        "Frame 1 at 0.0: <img>\nFrame 2 at 0.8: <img>\nFrame 3 at 1.5: <img>\n"
        "Frame 4 at 2.2: <img>\nThe video is in total 3 seconds.\n"
    )
    rl = P.frame_layout(4, fps, split="rl")
    assert "Frame 2 at 0.8s: <img>\n" in _lines(rl)
    assert _lines(P.frame_layout(4, fps, split="sft", quirks="corrected")) == _lines(rl)
    assert sum(c["type"] == "image" for c in rl.content) == 4
    with pytest.raises(ValueError, match="quirks"):
        P.frame_layout(4, fps, quirks="fixed")


def test_system_prompts_and_user_text():
    # (the strings themselves are checked against upstream's in test_upstream_fidelity.py)
    for task in R.TASKS:
        assert P.system_prompt(task, "rl").startswith("A conversation between user and")
    with pytest.raises(ValueError):
        P.system_prompt(R.TEMPORAL_QA_MCQ, "sft")
    assert "Correct Option:" in P.system_prompt(R.TEMPORAL_QA_MCQ, "rl")
    assert P.system_prompt(R.GENERAL_FREE_FORM, "sft") == P.R1_PREAMBLE  # preamble only
    base = dict(id="x", source="s", question="Why?", answer="a", video_path="v.mp4")
    sft = R.STGRRecord(split="sft", task=R.TEMPORAL_QA, **base)
    rl = R.STGRRecord(split="rl", task=R.TEMPORAL_QA, **base)
    st = R.STGRRecord(split="sft", task=R.TEMPORAL_SPATIAL, **base)
    assert (P.user_text(sft), P.user_text(rl), P.user_text(st)) == (
        "Question: Why?",
        "Why?",
        "Why?",
    )
    msgs = P.build_messages(rl, [{"type": "video"}])
    assert msgs[1]["content"] == [{"type": "video"}, {"type": "text", "text": "Why?"}]


def test_sft_target_boxes_in_integer_resized_pixels_without_spaces():
    st = R.STGRRecord(
        id="s", split="sft", task=R.TEMPORAL_SPATIAL, source="STR_x", question="q",
        answer="a man", video_path="v.mp4",
        reasoning_process="<obj>man</obj><box>[0.46, 0.43, 0.77, 0.94]</box>at<t>47.5</t>s, "
        "<obj>cup</obj><box>[0.5, 0.5, 1.1, 0.6]</box>at<t>3</t>s <box>bounding_box</box>",
    )  # fmt: skip
    t = P.sft_target(st, (420, 224))
    # 0.46*420=193.2, 0.43*224=96.32, 0.77*420=323.4, 0.94*224=210.56; 1.1*420 clips to 420.
    assert t.text == (
        "<think><obj>man</obj><box>[193,96,323,211]</box>at<t>47.5</t>s, "
        "<obj>cup</obj><box>[210,112,420,134]</box>at<t>3</t>s <box>bounding_box</box></think>\n"
        "<answer>a man</answer>"
    )
    assert (t.num_boxes, t.num_clipped) == (2, 1)
    vqa = R.STGRRecord(
        id="v", split="sft", task=R.VISUAL_QA, source="treevgr", question="q",
        answer="<obj>dog</obj><box>[10, 20, 110, 220]</box>", image_path="i.jpg",
        image_size=(200, 400), reasoning_process="dog <box>[10,20,110,220]</box>",
    )  # fmt: skip
    t = P.sft_target(vqa, (56, 112))  # factor 0.28: 2.8 5.6 30.8 61.6
    assert t.text == (
        "<think>dog <box>[3,6,31,62]</box></think>\n<answer><obj>dog</obj><box>[3,6,31,62]</box></answer>"
    )
    bad = R.STGRRecord(**{**st.__dict__, "reasoning_process": "<box>[10, 20, 30, 40]</box>"})
    with pytest.raises(R.RecordError) as e:
        P.sft_target(bad, (420, 224))
    assert e.value.field == "reasoning_process" and e.value.record_id == "s"
