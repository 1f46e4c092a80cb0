"""Open-o3 Video prompts: system prompts, the "Frame i at t s" layout and SFT targets.

The system prompts are RECONSTRUCTIONS. The exact upstream strings (`sft_multi_task.py` lines
60/89/120/148/176, `data_loader.py` lines 5-10) were not available verbatim; the text below
follows the reference's description of each (open_o3_video.md §1.3): the R1 preamble plus a
task-specific addition. A checkpoint trained upstream saw slightly different wording.

Frame layout (§1.5). Videos reach the model as a list of images, one per sampled frame, each
on its own line `Frame j at t s: <image>`. `quirks="original"` reproduces upstream exactly:
  - SFT lines of non-key-frame tasks have no `s` after the time (`Frame 3 at 7.5: ...`);
    the reference's checklist (§7.2) restricts this quirk to non-ST tasks, so SFT key-frame
    (temporal-spatial) lines keep the `s`.
  - RL key-frame times are `round(time)` integers (half to even); SFT uses the raw times.
  - Key frames go before the first sampled frame whose *floor* second reaches them; key
    frames later than the last sampled frame's floor second are silently dropped (we count
    them in `FrameLayout.dropped_key_frames`).
  - SFT temporal-spatial prompts have no "The video is in total N seconds." line.
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

R1_PREAMBLE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., "
    "<think> reasoning process here </think><answer> answer here </answer>."
)
_GROUNDED = (
    "every mention of an object, person or element must be localised as "
    "<obj>object_name</obj><box>bounding_box</box>at<t>time_in_seconds</t>s"
)
_SPAN_ANSWER = "From <t>start_time</t>s to <t>end_time</t>s"

SFT_SYSTEM_PROMPTS = {
    VISUAL_QA: R1_PREAMBLE
    + " When referring to objects in the reasoning, localise them with <box> coordinates."
    " Follow the format strictly.",
    TEMPORAL_SPATIAL: R1_PREAMBLE
    + " The reasoning must be grounded in the video evidence: "
    + _GROUNDED
    + ".",
    TEMPORAL_QA: R1_PREAMBLE
    + " The task is to find the time span in the video that the question asks about."
    " The answer must be in the format: " + _SPAN_ANSWER + ".",
    GENERAL_MCQ: R1_PREAMBLE + " Output only the correct option inside <answer> </answer>.",
    GENERAL_FREE_FORM: R1_PREAMBLE,
}

RL_SYSTEM_PROMPTS = {
    VISUAL_QA: SFT_SYSTEM_PROMPTS[VISUAL_QA]
    + " The answer must follow the format <obj>object_name</obj><box>bounding_box</box>.",
    TEMPORAL_SPATIAL: R1_PREAMBLE
    + " The reasoning part must be grounded in the video evidence: "
    + _GROUNDED
    + "."
    " The answer must be plain text without any <obj>, <box> or <t> tags.",
    TEMPORAL_QA: SFT_SYSTEM_PROMPTS[TEMPORAL_QA]
    + " Times in the reasoning are written as <t>time_in_seconds</t>s.",
    TEMPORAL_QA_MCQ: R1_PREAMBLE
    + " The task is to find the time span in the video that the question asks about and to"
    " pick the correct option. Times in the reasoning are written as <t>time_in_seconds</t>s."
    " The answer must be: " + _SPAN_ANSWER + ".\nCorrect Option: [ONLY THE LETTER]",
    GENERAL_MCQ: R1_PREAMBLE + " In the reasoning, " + _GROUNDED + "."
    " Output only the correct option inside <answer> </answer>.",
    GENERAL_FREE_FORM: R1_PREAMBLE
    + " In the reasoning, "
    + _GROUNDED
    + ". The answer is plain text.",
}


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
) -> FrameLayout:
    """The `Frame j at t s: <image>` block for `num_frames` frames sampled at `sample_fps`.

    Sampled frame i is labelled round(i / sample_fps, 1) (upstream's label, which drifts early
    against the true frame time; §1.4). `key_frame_times` (seconds, record order) switches on
    key-frame substitution (temporal-spatial).
    """
    if quirks not in QUIRKS:
        raise ValueError(f"quirks must be one of {QUIRKS}, got {quirks!r}")
    if split not in ("sft", "rl"):
        raise ValueError(f"split must be 'sft' or 'rl', got {split!r}")
    if num_frames < 1 or not sample_fps > 0:
        raise ValueError(f"need num_frames >= 1 and sample_fps > 0, got {num_frames}, {sample_fps}")
    original = quirks == "original"
    has_kf = len(key_frame_times) > 0
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
            label = round(kf_times[kf], 1) if original else round(float(kf_times[kf]), 1)
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


def mcq_messages(
    record: MCQRecord, vision_content: Sequence[dict[str, Any]], think: bool = False
) -> list[dict[str, Any]]:
    """Benchmark MCQ prompt (reconstructed wording, §5.3): no system prompt, so the chat
    template inserts Qwen's default one, as upstream's vLLM evaluation does."""
    if think:
        ask = (
            "Question: " + record.question + "\n" + record.options_text() + "\n"
            "Think first inside <think> </think>; in the reasoning, " + _GROUNDED + ", in at "
            "most 100 words. Then give only the option letter inside <answer> </answer>."
        )
    else:
        ask = (
            "Select the best answer to the following multiple-choice question based on the "
            "video. Respond with only the letter of the correct option.\n"
            + record.question
            + "\n"
            + record.options_text()
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


def sft_target(record: STGRRecord, frame_size: tuple[int, int]) -> SFTTarget:
    """The assistant turn with every `<box>[...]</box>` in integer pixels of `frame_size`
    (W, H of the image/frames fed to the model), written without spaces (§1.6).

    visual QA boxes are original-image pixels (`image_size`); temporal-spatial boxes are
    normalised; other tasks are left untouched. Boxes are clipped to the frame (counted).
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
    return SFTTarget(text, counts[0], counts[1])
