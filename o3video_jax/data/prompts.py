"""Open-o3 Video prompts: system prompts, the "Frame i at t s" layout and SFT targets.

Every string the model sees is upstream's, byte for byte (github:marinero4972/Open-o3-Video
@ 1eb6eca, Apache-2.0), typos and spacing included: a checkpoint trained there saw exactly
these. Sources: RL system prompts `src/r1-v/src/open_r1/data_loader.py` (SYSTEM_PROMPT), SFT
system prompts `src/r1-v/src/open_r1/sft_multi_task.py` (`prepare_dataset`), frame lines
`sft_multi_task.py` (`collate_fn`) and `src/r1-v/src/open_r1/trainer/grpo_trainer.py`
(`compute_loss`). The system prompts are the same under both `quirks`; only the frame layout
has a corrected variant.

Frame layout (§1.5). Videos reach the model as a list of images, one per sampled frame, each
on its own line `Frame j at t s: <image>`. `quirks="original"` reproduces upstream exactly:
  - SFT lines of non-key-frame tasks (temporal QA, General) have no `s` after the time
    (`Frame 3 at 7.5: ...`); SFT temporal-spatial lines have it.
  - RL key-frame times are `round(time)` integers (half to even); SFT prints the record's raw
    time (Python's str of the JSON number).
  - Key frames go before the first sampled frame whose *floor* second reaches them; key
    frames later than the last sampled frame's floor second are silently dropped (we count
    them in `FrameLayout.dropped_key_frames`).
  - SFT temporal-spatial prompts have no "The video is in total N seconds." line.
  The key-frame branch is chosen by the task (temporal-spatial), as upstream does, not by
  whether the record has key frames.
`quirks="corrected"`: every line has the `s`, key-frame times are the raw times rounded to
0.1 s, key frames go before the first sampled frame at or after them (exact times, sorted),
late key frames are appended at the end instead of dropped, and the total line is always
present.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from o3video_jax.data.records import (
    GENERAL_FREE_FORM,
    GENERAL_MCQ,
    TEMPORAL_QA,
    TEMPORAL_QA_MCQ,
    TEMPORAL_SPATIAL,
    VISUAL_QA,
    MCQRecord,
    RecordError,
    STGRRecord,
    convert_boxes,
)

QUIRKS = ("original", "corrected")

# sft_multi_task.py, `prepare_dataset`: one system_message per task (no TG-MCQ in SFT).
SFT_SYSTEM_PROMPTS = {
    VISUAL_QA: (
        "A conversation between user and assistant. The user provides an image and asks a"
        " question, and the Assistant solves it. The assistant MUST first think about the"
        " reasoning process in the mind and then provide the user with the answer. The"
        " reasoning process and answer are enclosed within <think> </think> and <answer>"
        " </answer> tags, respectively. When referring to particular objects in the reasoning"
        " process, the assistant MUST localize the object with bounding box coordinates"
        " between <box> and </box>. You MUST strictly follow the format."
    ),
    TEMPORAL_SPATIAL: (
        "A conversation between user and assistant. The user provides a video and asks a"
        " question, and the Assistant solves it. The assistant MUST first think about the"
        " reasoning process in the mind and then provide the user with the answer. The"
        " reasoning process and answer are enclosed within <think> </think> and <answer>"
        " </answer> tags, respectively. All reasoning must be grounded in visual evidence"
        " from the video. When you mention any related object, person, or specific visual"
        " element, you must strictly follow the following format:"
        " `<obj>object_name</obj><box>bounding_box</box>at<t>time_in_seconds</t>s`."
    ),
    TEMPORAL_QA: (
        "A conversation between user and assistant. The user provides a video and asks a"
        " question, and the Assistant determines the precise time period that answers the"
        " question. The assistant MUST first think about the reasoning process in the mind"
        " and then provide the user with the answer. The reasoning process and answer are"
        " enclosed within <think> </think> and <answer> </answer> tags, respectively. The"
        " answer must strictly follow the following format: `From <t>start_time</t>s to"
        " <t>end_time</t>s'"
    ),
    GENERAL_MCQ: (
        "A conversation between user and assistant. The user provides a video and asks a"
        " multiple-choice question, and the Assistant solves it. The assistant MUST first"
        " think about the reasoning process in the mind and then provide the user with the"
        " answer. The reasoning process and answer are enclosed within <think> </think> and"
        " <answer> </answer> tags, respectively. Only output the correct option in the"
        " <answer> </answer> section."
    ),
    GENERAL_FREE_FORM: (
        "A conversation between user and assistant. The user provides a video and asks a"
        " question, and the Assistant solves it. The assistant MUST first think about the"
        " reasoning process in the mind and then provide the user with the answer. The"
        " reasoning process and answer are enclosed within <think> </think> and <answer>"
        " </answer> tags, respectively."
    ),
}
# data_loader.py, SYSTEM_PROMPT (the RL prompts; also this repository's TVG and inference
# prompts).
RL_SYSTEM_PROMPTS = {
    VISUAL_QA: (
        "A conversation between user and assistant. The user provides an image and asks a"
        " question, and the Assistant solves it. The assistant MUST first think about the"
        " reasoning process in the mind and then provide the user with the answer. The"
        " reasoning process and answer are enclosed within <think> </think> and <answer>"
        " </answer> tags, respectively. When referring to particular objects in the reasoning"
        " process, the assistant must localize the object with bounding box coordinates"
        " between <box> and </box>. The answer must strictly follow the following"
        " format:`<obj>object_name</obj><box>bounding_box</box>'."
    ),
    TEMPORAL_SPATIAL: (
        "A conversation between user and assistant. The user provides a video and asks a"
        " question, and the Assistant solves it. The assistant MUST first think about the"
        " reasoning process in the mind and then provide the user with the answer. The"
        " reasoning process and answer are enclosed within <think> </think> and <answer>"
        " </answer> tags, respectively. All reasoning must be grounded in visual evidence"
        " from the video. When you mention any related object, person, or specific visual"
        " element in the reasoning process, you must strictly follow the following format:"
        " `<obj>object_name</obj><box>bounding_box</box>at<t>time_in_seconds</t>s`. The"
        " answer part only requires a text response; tags like <obj>, <box>, <t> are not"
        " needed."
    ),
    TEMPORAL_QA: (
        "A conversation between user and assistant. The user provides a video and asks a"
        " question, and the Assistant determines the precise time period that answers the"
        " question. The assistant MUST first think about the reasoning process in the mind"
        " and then provide the user with the answer. The reasoning process and answer are"
        " enclosed within <think> </think> and <answer> </answer> tags, respectively. When"
        " mentioning time during the reasoning process, the assistant must use the format:"
        " `<t>time_in_seconds</t>s'.The answer must strictly follow the following format:"
        " `From <t>start_time</t>s to <t>end_time</t>s'."
    ),
    TEMPORAL_QA_MCQ: (
        "A conversation between user and assistant. The user provides a video and a"
        " multiple-choice question, and the Assistant determines the precise time period that"
        " answers the question and selects the correct option. The assistant MUST first think"
        " about the reasoning process in the mind and then provide the user with the answer."
        " The reasoning process and answer are enclosed within <think> </think> and <answer>"
        " </answer> tags, respectively. When mentioning time during the reasoning process,"
        " the assistant must use the format: `<t>time_in_seconds</t>s'. The answer must"
        " strictly follow the following format: `From <t>start_time</t>s to"
        " <t>end_time</t>s.\nCorrect Option: [ONLY THE LETTER]'."
    ),
    GENERAL_MCQ: (
        "A conversation between user and assistant. The user provides a video and asks a"
        " multiple-choice question, and the Assistant solves it. The assistant MUST first"
        " think about the reasoning process in the mind and then provide the user with the"
        " answer. The reasoning process and answer are enclosed within <think> </think> and"
        " <answer> </answer> tags, respectively. All reasoning must be grounded in visual"
        " evidence from the video. When you mention any related object, person, or specific"
        " visual element in the reasoning process, you must strictly follow the following"
        " format: `<obj>object_name</obj><box>bounding_box</box>at<t>time_in_seconds</t>s`."
        " Only output the correct option in the <answer> </answer> section."
    ),
    GENERAL_FREE_FORM: (
        "A conversation between user and assistant. The user provides a video and asks a"
        " question, and the Assistant solves it. The assistant MUST first think about the"
        " reasoning process in the mind and then provide the user with the answer. The"
        " reasoning process and answer are enclosed within <think> </think> and <answer>"
        " </answer> tags, respectively. All reasoning must be grounded in visual evidence"
        " from the video. When you mention any related object, person, or specific visual"
        " element in the reasoning process, you must strictly follow the following format:"
        " `<obj>object_name</obj><box>bounding_box</box>at<t>time_in_seconds</t>s`. The"
        " answer part only requires a text response; tags like <obj>, <box>, <t> are not"
        " needed."
    ),
}
# data_loader.py, TYPE_TEMPLATE: defined upstream but never used; kept for completeness.
TYPE_TEMPLATE = {
    "multiple choice": (
        " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the"
        " <answer> </answer> tags."
    ),
    "numerical": (
        " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags."
    ),
    "OCR": (
        " Please transcribe text from the image/video clearly and provide your text answer"
        " within the <answer> </answer> tags."
    ),
    "free-form": (" Please provide your text answer within the <answer> </answer> tags."),
    "regression": (
        " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags."
    ),
}

# The opening every video system prompt shares (= the SFT General free-form prompt).
R1_PREAMBLE = SFT_SYSTEM_PROMPTS[GENERAL_FREE_FORM]
_GROUNDED = "`<obj>object_name</obj><box>bounding_box</box>at<t>time_in_seconds</t>s`"


def system_prompt(task: str, split: str) -> str:
    table = SFT_SYSTEM_PROMPTS if split == "sft" else RL_SYSTEM_PROMPTS
    if task not in table:
        raise ValueError(f"no {split} system prompt for task {task!r}")
    return table[task]


def user_text(record: STGRRecord) -> str:
    """SFT prefixes "Question: " for temporal QA and the General tasks; RL never does."""
    if record.split == "sft" and record.task in (TEMPORAL_QA, GENERAL_MCQ, GENERAL_FREE_FORM):
        return "Question: " + record.question
    return record.question


# ---- frame layout ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FrameSlot:
    """One image in the frame block: sampled frame `index` or key frame `index` (record order)."""

    kind: str  # "frame" | "key_frame"
    index: int
    label: str  # the time as printed


@dataclasses.dataclass(frozen=True)
class FrameLayout:
    """slots: images in prompt order; content: HF-style user content items (text and one
    {"type": "image"} per slot); dropped_key_frames: key-frame indices left out."""

    slots: tuple[FrameSlot, ...]
    content: tuple[dict[str, Any], ...]
    dropped_key_frames: tuple[int, ...]

    def text(self, image: str = "<image>") -> str:
        return "".join(c["text"] if c["type"] == "text" else image for c in self.content)


def frame_layout(
    num_frames: int,
    sample_fps: float,
    key_frame_times: Sequence[float] = (),
    *,
    split: str = "rl",
    quirks: str = "original",
    key_frame_task: bool | None = None,
) -> FrameLayout:
    """The `Frame j at t s: <image>` block for `num_frames` frames sampled at `sample_fps`.

    Sampled frame i is labelled round(i / sample_fps, 1) (upstream's label, which drifts early
    against the true frame time; §1.4). `key_frame_times` (seconds, record order) are the
    key frames to substitute. key_frame_task: whether the record's task takes upstream's
    key-frame branch (temporal-spatial), which decides the SFT line format and total line
    even for a record without key frames; None: whether `key_frame_times` is non-empty.
    """
    if quirks not in QUIRKS:
        raise ValueError(f"quirks must be one of {QUIRKS}, got {quirks!r}")
    if split not in ("sft", "rl"):
        raise ValueError(f"split must be 'sft' or 'rl', got {split!r}")
    if num_frames < 1 or not sample_fps > 0:
        raise ValueError(f"need num_frames >= 1 and sample_fps > 0, got {num_frames}, {sample_fps}")
    original = quirks == "original"
    has_kf = len(key_frame_times) > 0 if key_frame_task is None else bool(key_frame_task)
    if key_frame_times and not has_kf:
        raise ValueError("key_frame_times given for a task without key frames")
    unit = "" if (original and split == "sft" and not has_kf) else "s"
    if original:
        kf_times = [round(t) if split == "rl" else t for t in key_frame_times]
        order = list(range(len(kf_times)))
    else:
        kf_times = [float(t) for t in key_frame_times]
        order = sorted(range(len(kf_times)), key=lambda k: kf_times[k])

    slots: list[FrameSlot] = []
    i = k = 0
    while i < num_frames:
        frame_time = int(i / sample_fps) if original else i / sample_fps
        if k < len(order) and frame_time >= kf_times[order[k]]:
            kf = order[k]
            # RL prints round(round(time), 1), an int; SFT the raw time; corrected 0.1 s.
            label = kf_times[kf] if original else round(float(kf_times[kf]), 1)
            slots.append(FrameSlot("key_frame", kf, str(label)))
            k += 1
        else:
            slots.append(FrameSlot("frame", i, str(round(i / sample_fps, 1))))
            i += 1
    late = tuple(order[k:])
    if not original:
        slots += [FrameSlot("key_frame", kf, str(round(kf_times[kf], 1))) for kf in late]
        late = ()

    content: list[dict[str, Any]] = []
    for j, slot in enumerate(slots, start=1):
        content.append({"type": "text", "text": f"Frame {j} at {slot.label}{unit}: "})
        content.append({"type": "image"})
        content.append({"type": "text", "text": "\n"})
    if not (original and split == "sft" and has_kf):
        total = int(num_frames / sample_fps)  # = floor(duration), upstream's expression
        content.append({"type": "text", "text": f"The video is in total {total} seconds.\n"})
    return FrameLayout(tuple(slots), tuple(_merge_text(content)), late)


def record_frame_layout(
    record: STGRRecord | MCQRecord, num_frames: int, sample_fps: float, quirks: str = "original"
) -> FrameLayout:
    """`frame_layout` for one record: its split's line format, and the key-frame branch when
    its task is temporal-spatial (benchmark MCQ records use the RL format)."""
    if not isinstance(record, STGRRecord):
        return frame_layout(num_frames, sample_fps, split="rl", quirks=quirks)
    return frame_layout(
        num_frames,
        sample_fps,
        [k.time for k in record.key_frames],
        split=record.split,
        quirks=quirks,
        key_frame_task=record.task == TEMPORAL_SPATIAL,
    )


def _merge_text(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for it in items:
        if it["type"] == "text" and out and out[-1]["type"] == "text":
            out[-1] = {"type": "text", "text": out[-1]["text"] + it["text"]}
        else:
            out.append(dict(it))
    return out


def build_messages(
    record: STGRRecord,
    vision_content: Sequence[dict[str, Any]],
    assistant: str | None = None,
    system: str | None = None,
) -> list[dict[str, Any]]:
    """[system, user{vision content + question}, (assistant)] for one STGR record.

    system: None for the Open-o3 prompt of the record's task and split, else this text.
    vision_content: `FrameLayout.content`, [{"type": "image"}] (visual QA) or
    [{"type": "video"}] (native video mode).
    """
    user = list(vision_content) + [{"type": "text", "text": user_text(record)}]
    msgs = [
        {
            "role": "system",
            "content": system_prompt(record.task, record.split) if system is None else system,
        },
        {"role": "user", "content": _merge_text(user)},
    ]
    if assistant is not None:
        msgs.append({"role": "assistant", "content": assistant})
    return msgs


# VideoMME's evaluation prompt (eval/dataloader/videomme.py upstream); the evaluation driver
# builds the same text (o3video_jax/evaluate/prompts.py, checked equal in the tests).
_MCQ_SELECT = "Select the best answer to the multiple-choice question based on the video."
_MCQ_THINK = (
    " You must first think about the reasoning process in the mind and then provide the user"
    " with the answer. The reasoning process and answer are enclosed within <think> </think>"
    " and <answer> </answer> tags, respectively. All reasoning must be grounded in visual"
    " evidence from the video. When you mention any related object, person, or specific"
    " visual element, you must strictly follow the following format: "
    + _GROUNDED
    + ". The reasoning process MUST NOT be longer than 100 words. In the answer part, respond"
    " with only the letter (A, B, C, or D) of the correct option."
)


def mcq_messages(
    record: MCQRecord, vision_content: Sequence[dict[str, Any]], think: bool = False
) -> list[dict[str, Any]]:
    """Multiple-choice prompt: upstream's VideoMME text (think or direct), no system prompt
    (the chat template inserts Qwen's default one, as upstream's vLLM evaluation does)."""
    question = record.question + "\n" + record.options_text()
    if think:
        ask = "Question:" + question + "\n" + _MCQ_SELECT + _MCQ_THINK
    else:
        ask = (
            _MCQ_SELECT
            + " Respond with only the letter (A, B, C, or D) of the correct option.\n"
            + question
            + "\n"
        )
    user = list(vision_content) + [{"type": "text", "text": ask}]
    return [{"role": "user", "content": _merge_text(user)}]


# ---- SFT targets -------------------------------------------------------------------------

_BOX_LIST_RE = re.compile(r"<box>\s*\[([^\[\]]*)\]\s*</box>")


@dataclasses.dataclass(frozen=True)
class SFTTarget:
    text: str  # "<think>...</think>\n<answer>...</answer>"
    num_boxes: int
    num_clipped: int
    question: str = ""  # the record's question with its boxes converted the same way


def sft_target(record: STGRRecord, frame_size: tuple[int, int], *, clip: bool = True) -> SFTTarget:
    """The assistant turn with every `<box>[...]</box>` in integer pixels of `frame_size`
    (W, H of the image/frames fed to the model), written without spaces (§1.6).

    visual QA boxes are original-image pixels (`image_size`); temporal-spatial boxes are
    normalised; other tasks are left untouched. Upstream rewrites the whole rendered SFT chat,
    so boxes in the question are converted too (`SFTTarget.question`). clip: clip boxes to
    the frame (counted in `num_clipped`); upstream does not clip (`quirks="original"`).
    """
    if record.reasoning_process is None:
        raise RecordError(record.id, "reasoning_process", "missing (not an SFT record?)")
    source = {VISUAL_QA: record.image_size, TEMPORAL_SPATIAL: None}
    counts = [0, 0]

    def convert(text: str, field: str) -> str:
        if record.task not in source:
            return text

        def one(m: re.Match) -> str:
            try:
                coords = [float(c) for c in m.group(1).split(",")]
            except ValueError as e:
                raise RecordError(record.id, field, f"unparsable box {m.group(0)!r}") from e
            if len(coords) != 4 or not np.all(np.isfinite(coords)):
                raise RecordError(record.id, field, f"box {m.group(0)!r} is not 4 numbers")
            if record.task == TEMPORAL_SPATIAL and max(coords) > 1.5:
                raise RecordError(record.id, field, f"box {m.group(0)!r} is not normalised")
            px, clipped = convert_boxes(coords, frame_size, source[record.task])
            if not clip:
                w, h = frame_size
                src = source[record.task]
                sx, sy = (w, h) if src is None else (w / src[0], h / src[1])
                px = [[c * r for c, r in zip(coords, (sx, sy, sx, sy), strict=True)]]
            counts[0] += 1
            counts[1] += int(clipped[0])
            return "<box>[" + ",".join(str(round(float(c))) for c in px[0]) + "]</box>"

        return _BOX_LIST_RE.sub(one, text)

    text = (
        "<think>"
        + convert(record.reasoning_process, "reasoning_process")
        + "</think>\n<answer>"
        + convert(record.answer, "answer")
        + "</answer>"
    )
    return SFTTarget(text, counts[0], counts[1], convert(record.question, "question"))
