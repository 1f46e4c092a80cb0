"""Benchmark prompts, verbatim from Open-o3 Video's evaluation code (docs/open_o3_video.md §5).

V-STaR (`test_vstar_multi_images.py`): five calls per item; frames are images labelled
`Frame {i+1} at {round(t, 1)}s: <image>` lines that replace the video placeholder (or are
prepended); system prompt "You are a helpful assistant."; the chain-1 Where call is given
the GT time range and the chain-2 When call the GT boxes.
VideoMME / WorldSense / VideoMMMU (`dataloader/*.py`): one native video (plus the image of a
VideoMMMU Adaptation item) before the text; no system prompt (the chat template's default).
The strings below keep upstream's typos and spacing on purpose: they are what the model saw.

Each builder returns `Prompt`s: `text` with `VISION_TAG` where each frame/image goes (V-STaR)
or the user text after the video (MCQ); `render_messages` turns one into chat messages.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from o3video_jax.data import prompts as train_prompts

__all__ = [
    "VISION_TAG",
    "Prompt",
    "frame_block",
    "relevance_messages",
    "render_messages",
    "tvg_prompt",
    "videomme_prompt",
    "videommmu_prompt",
    "vstar_prompts",
    "worldsense_prompt",
]

VISION_TAG = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_TAG = "<|vision_start|><|video_pad|><|vision_end|>"
DEFAULT_SYSTEM = "You are a helpful assistant."
VSTAR_CALLS = ("vqa", "temporal", "spatial", "spatial_2", "temporal_2")

_THINK = (
    "You must first think about the reasoning process in the mind and then provide the user "
    "with the answer. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively."
)
_GROUNDED = (
    " All reasoning must be grounded in visual evidence from the video. When you mention any "
    "related object, person, or specific visual element, you must strictly follow the following "
    "format: `<obj>object_name</obj><box>bounding_box</box>at<t>time_in_seconds</t>s`."
)
_FROM_TO = "`From <t>start_time</t>s to <t>end_time</t>s'"


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One model call. mode: "frames" (text holds one VISION_TAG per image, in order) or
    "video" (a native video item before the text; `image` adds one image after it)."""

    call: str
    text: str
    mode: str
    system: str | None = None
    image: bool = False


def frame_block(frame_times: Sequence[float]) -> str:
    """`Frame {i+1} at {round(t, 1)}s: <image>` + newline per frame (upstream's rounding)."""
    return "".join(
        f"Frame {i + 1} at {round(t, 1)}s: {VISION_TAG}\n" for i, t in enumerate(frame_times)
    )


def _with_frames(prompt: str, frame_times: Sequence[float]) -> str:
    block = frame_block(frame_times)
    return prompt.replace(VIDEO_TAG, block) if VIDEO_TAG in prompt else block + prompt


def _gt_boxes(item: Mapping) -> list[list]:
    return [[b["xmin"], b["ymin"], b["xmax"], b["ymax"]] for b in item["bboxes"]]


def vstar_prompts(item: Mapping, frame_times: Sequence[float], think: bool) -> list[Prompt]:
    """The five V-STaR calls (What, chain-1 When, chain-1 Where, chain-2 Where, chain-2 When)."""
    length = round(item["frame_count"] / item["fps"], 2)
    w, h = item["width"], item["height"]
    tq, boxes = item["temporal_question"], _gt_boxes(item)
    st, et = math.ceil(item["timestamps"][0]), math.floor(item["timestamps"][1])
    time_range = list(range(st, et + 1))
    first = time_range[0] if time_range else st  # upstream raises on an empty range

    vqa = (
        f"Answer the question about the video: {item['question']} \n (If the answer is a person, "
        "you don't need to identify the person.)"
    )
    if think:
        vqa += _THINK + _GROUNDED + " Do not use <box>, <obj> and <t> in the answer part."

    head = f"This video is {length} seconds long. {VIDEO_TAG}\nAnswer the question about the video: {tq} \n"
    if think:
        temporal = (
            head + ". " + _THINK + " The answer must follow the following format: " + _FROM_TO
        )
    else:
        temporal = (
            head + "Directly output the start and end moment timestamps. You must follow the "
            "following format: " + _FROM_TO + "."
        )

    head2 = (
        f"This video is {length} seconds long with a resolution of {w}x{h} (width x height). "
        f"{VIDEO_TAG}\nAnswer the question about the video: {tq} \nThere are {len(boxes)} "
        "bounding boxes of the key object related to the question in the video without knowing "
        f"the time, which are:{boxes}. "
    )
    if think:
        temporal_2 = head2 + _THINK + " The answer must follow the following format: " + _FROM_TO
    else:
        temporal_2 = (
            head2 + "Directly output the start and end moment timestamps. You must follow the "
            "following format: " + _FROM_TO + "."
        )

    sq = item["spatial_question"]
    ask = (
        f"{VIDEO_TAG}\nPlease answer the question about the video: {{q}} with a series of "
        "bounding boxes in [x1, y1, x2, y2] format.\n"
    )
    per_second = (
        f"for each whole second within the time range {time_range} provided (inclusive of the "
        "boundaries), output a series of bounding boxes of the object in JSON format. The keys "
        "should be the whole seconds (as strings), and the values should be the box in "
        "[x1, y1, x2, y2] format.\n"
    )
    example = f'{{"{first}": [x1, y1, x2, y2],...}}\n'
    if think:
        spatial = (
            ask.format(q=sq) + _THINK + "\nIn the answer part, " + per_second
            + "Example output of the answer part: " + example
        )  # fmt: skip
    else:
        spatial = ask.format(q=sq) + "F" + per_second[1:] + "Example output: " + example

    n = len(boxes)
    related = (
        "for each whole second that may related to the question, output a series of bounding "
        f"boxes of the object in JSON format. You only need to output {n} bbox(es). You need to "
        "determine which frame is related to the question, and you don't need to output the bbox "
        "for the frames not related to the question.\nThe keys should be the whole seconds (as "
        "strings), and the values should be the bounding box in [x0,y0,x1,y1] format.\n\n"
    )
    example_2 = (
        f'{{"0": [x0,y0,x1,y1], "1":..., ..., "{n}":...}} (if the frames at 0~{n} second are '
        "related to the questions)\n"
    )
    sq2 = item["spatial_question_2"]
    if think:
        spatial_2 = (
            ask.format(q=sq2) + _THINK + "\nIn the answer part, " + related
            + "Example output of the answer part:\n" + example_2
        )  # fmt: skip
    else:
        spatial_2 = ask.format(q=sq2) + "F" + related[1:] + "Example output:\n" + example_2

    texts = dict(
        vqa=vqa, temporal=temporal, spatial=spatial, spatial_2=spatial_2, temporal_2=temporal_2
    )
    return [
        Prompt(call, _with_frames(texts[call], frame_times), "frames", DEFAULT_SYSTEM)
        for call in VSTAR_CALLS
    ]


# ---- multiple choice -----------------------------------------------------------------------
_MCQ_THINK_TAIL = _GROUNDED + " The reasoning process MUST NOT be longer than 100 words."


def videomme_prompt(item: Mapping, think: bool) -> Prompt:
    question = item["question"] + "\n" + "\n".join(str(o) for o in item["options"])
    select = "Select the best answer to the multiple-choice question based on the video."
    if not think:
        text = (
            select + " Respond with only the letter (A, B, C, or D) of the correct option."
            + "\n" + question + "\n"
        )  # fmt: skip
    else:
        text = (
            "Question:" + question + "\n" + select + " " + _THINK + _MCQ_THINK_TAIL
            + " In the answer part, respond with only the letter (A, B, C, or D) of the correct "
            "option."
        )  # fmt: skip
    return Prompt("answer", text, "video")


_WS_SYS = (
    "Carefully watch this video and pay attention to every detail. Based on your observations, "
    "select the best option that accurately addresses the question."
)
_WS_FRAMES = (
    "\nThese are the frames of a video. Audio transcripts of the video:\nThis video does not "
    "have audio transcripts. "
)
_WS_REQ = (
    "\nSelect the best answer to the multiple-choice question based on the video. Respond with "
    "only the letter (A, B, C, or D) of the correct option. "
)
_WS_REQ_THINK = (
    "\nSelect the best answer to the multiple-choice question based on the video. " + _THINK
    + _MCQ_THINK_TAIL
    + "In the answer part, respond with only the letter (A, B, C, or D) of the correct option. "
)  # fmt: skip


def worldsense_prompt(item: Mapping, think: bool) -> Prompt:
    question = item["question"] + "\n" + "\n".join(item["candidates"])
    text = _WS_SYS + _WS_FRAMES + f"Question: {question}\n" + (_WS_REQ_THINK if think else _WS_REQ)
    return Prompt("answer", text, "video")


def _lettered(options: Sequence[str]) -> str:
    letters = [chr(ord("A") + i) for i in range(len(options))]
    if all(o.startswith(f"{x}.") for o, x in zip(options, letters, strict=False)):
        return "\n".join(options)
    return "\n".join(f"{x}. {o}" for x, o in zip(letters, options, strict=False))


def videommmu_prompt(item: Mapping, think: bool) -> Prompt:
    category = item["category"]
    text = item["question"] + "\n" + _lettered(item["options"]) + "\nQuestion Category:" + category
    if category in ("Perception", "Comprehension"):
        text += "\nPlease ignore the Quiz question in last frame of the video."
    elif category == "Adaptation":
        text += (
            "\nYou should watch and learn the video content. Then apply what you learned to the "
            "question. Some key information of the question is in the input image."
        )
    if think:
        tail = "In the answer part, respond with only the letter of the correct option."
        if item.get("question_type", "multiple-choice") != "multiple-choice":
            tail = "In the answer part, respond with only the final answer."
        text += "\n" + _THINK + _MCQ_THINK_TAIL + " " + tail
    return Prompt("answer", text, "video", image=item.get("image_bytes") is not None)


def tvg_prompt(
    item: Mapping, frame_times: Sequence[float], sample_fps: float, num_frames: int
) -> Prompt:
    """Temporal grounding: upstream ships no TVG script, so this is the RL prompt of a
    `temporal QA` record: upstream's temporal-QA system prompt verbatim (data_loader.py
    SYSTEM_PROMPT["temporal QA"]), the frame lines, `The video is in total N seconds.`, then
    the query as the question."""
    block = "".join(
        f"Frame {i + 1} at {round(i / sample_fps, 1)}s: {VISION_TAG}\n" for i in range(num_frames)
    )
    total = int(num_frames / sample_fps)
    text = block + f"The video is in total {total} seconds.\n" + item["query"]
    return Prompt("answer", text, "frames", train_prompts.system_prompt("temporal QA", "rl"))


# ---- relevance scorer (§5.4) ---------------------------------------------------------------
RELEVANCE_SYSTEM = "You are a helpful assistant. Only reply with a single digit: 0, 1, or 2."
RELEVANCE_USER = (
    "You will be given a video question and a set of cropped images extracted from the video.\n"
    "Score how related these images are to answering the question.\n\n"
    "Scoring rules:\n"
    "2 = clearly relevant to answering the question\n"
    "1 = might be useful but uncertain\n"
    "0 = not relevant at all\n\n"
    "Only output one of: 0, 1, or 2. No other text.\n"
    "Question: {question}"
)


def relevance_messages(question: str, num_images: int) -> list[dict[str, Any]]:
    """Upstream's scorer chat: the rubric text, then the crops as images."""
    content = [{"type": "text", "text": RELEVANCE_USER.format(question=question)}]
    content += [{"type": "image"} for _ in range(num_images)]
    return [
        {"role": "system", "content": RELEVANCE_SYSTEM},
        {"role": "user", "content": content},
    ]


def render_messages(prompt: Prompt, num_images: int = 0) -> list[dict[str, Any]]:
    """Chat messages whose rendering is exactly the text upstream sent to vLLM.

    frames: the user turn is the text with each VISION_TAG an image slot (upstream appends the
    images after the text and then strips those tags behind "the question about the video", so
    each frame keeps exactly the tag inside its frame line). video: [video, (image), text].
    """
    msgs: list[dict[str, Any]] = []
    if prompt.system is not None:
        msgs.append({"role": "system", "content": prompt.system})
    if prompt.mode == "frames":
        parts = prompt.text.split(VISION_TAG)
        if num_images and len(parts) - 1 != num_images:
            raise ValueError(f"{len(parts) - 1} frame slots for {num_images} images")
        content: list[dict[str, Any]] = []
        for i, part in enumerate(parts):
            if i:
                content.append({"type": "image"})
            if part:
                content.append({"type": "text", "text": part})
    else:
        content = [{"type": "video"}] + ([{"type": "image"}] if prompt.image else [])
        content.append({"type": "text", "text": prompt.text})
    msgs.append({"role": "user", "content": content})
    return msgs
