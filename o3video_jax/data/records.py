"""Typed records of the Open-o3 Video data: STGR-SFT / STGR-RL, V-STaR and multiple choice.

Loaders accept a JSON array or JSON lines. Every validator raises `RecordError` naming the
record id and the offending field, so a pipeline can count and report bad records instead of
crashing deep inside a transform (docs/open_o3_video.md §1.2, §1.3, §5.2).

Geometry: ground-truth boxes come in two spaces, normalised [0, 1] (`key_items`, STR
reasoning) and original-image pixels (`visual QA` answers, V-STaR). The model reads and writes
integer pixels of the frame *as fed to it* (after smart_resize, §1.6), so `convert_boxes` maps
either space into resized-frame pixels and clips to the frame, reporting what it clipped.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from o3video_jax import io
from o3video_jax.tasks import (  # noqa: F401 - re-exported: the task vocabulary
    GENERAL_FREE_FORM,
    GENERAL_MCQ,
    SFT_TASKS,
    TASKS,
    TEMPORAL_QA,
    TEMPORAL_QA_MCQ,
    TEMPORAL_SPATIAL,
    VISUAL_QA,
)

SPLITS = ("sft", "rl")

# Flag names (counted, never fatal).
BOX_CLIPPED = "box_clipped"
TIME_BEYOND_VIDEO = "time_beyond_video"

Box = tuple[float, float, float, float]
_BOX_RE = re.compile(r"<box>\s*(\[[^\]]*\])\s*</box>")
_LETTER_RE = re.compile(r"^\(?\[?([A-Z])[\]\).]?$")


class RecordError(ValueError):
    """A malformed record. `record_id` and `field` name the culprit."""

    def __init__(self, record_id: Any, field: str, message: str):
        self.record_id = record_id
        self.field = field
        super().__init__(f"record {record_id!r}, field {field!r}: {message}")


@dataclasses.dataclass(frozen=True)
class KeyFrame:
    """An annotated key frame. `time` keeps the JSON number type (int or float): the SFT
    prompt prints it as it is (`47` vs `47.0`), as upstream does."""

    time: float
    path: str
    idx: int


@dataclasses.dataclass(frozen=True)
class STGRRecord:
    """One STGR-SFT or STGR-RL record (§1.2). Parsed answers are filled when the task has them:
    `answer_segment` (RL temporal QA / TG-MCQ, seconds), `answer_letter` (RL MCQ / TG-MCQ),
    `answer_box` (RL visual QA, original-image pixels)."""

    id: str
    split: str
    task: str
    source: str
    question: str
    answer: str
    reasoning_process: str | None = None
    video_path: str | None = None
    image_path: str | None = None
    image_size: tuple[int, int] | None = None  # (W, H) of the original image
    key_frames: tuple[KeyFrame, ...] = ()
    key_items: Mapping[str, Mapping[str, tuple[Box, ...]]] = dataclasses.field(default_factory=dict)
    answer_segment: tuple[float, float] | None = None
    answer_letter: str | None = None
    answer_box: Box | None = None

    @property
    def is_video(self) -> bool:
        return self.task != VISUAL_QA

    def to_dict(self) -> dict[str, Any]:
        """The record as upstream code sees it (reward functions read these keys)."""
        d = {
            "id": self.id,
            "task": self.task,
            "source": self.source,
            "question": self.question,
            "answer": self.answer,
        }
        for name in ("reasoning_process", "video_path", "image_path"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name)
        if self.image_size is not None:
            d["image_size"] = list(self.image_size)
        if self.key_frames:
            d["key_frames"] = [dataclasses.asdict(k) for k in self.key_frames]
        if self.key_items:
            d["key_items"] = {
                i: {name: [list(b) for b in boxes] for name, boxes in objs.items()}
                for i, objs in self.key_items.items()
            }
        return d


# ---- file reading ------------------------------------------------------------------------


def read_json_records(path: str | os.PathLike) -> list[dict]:
    """Raw dicts from a JSON array file or a JSON-lines file (blank lines ignored)."""
    text = io.read_text(path)
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecordError(os.fspath(path), "json", str(e)) from e
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise RecordError(f"line {n}", "json", str(e)) from e
    for n, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RecordError(f"#{n}", "json", f"expected an object, got {type(row).__name__}")
    return rows


def load_stgr(path: str | os.PathLike, split: str) -> list[STGRRecord]:
    """Loads and validates STGR-SFT.json (split="sft") or STGR-RL.json (split="rl")."""
    return [parse_stgr(raw, split, index=n) for n, raw in enumerate(read_json_records(path))]


# ---- field validators ----------------------------------------------------------------------


def _id_of(raw: Mapping, index: int | None) -> str:
    rid = raw.get("id")
    if rid is None or isinstance(rid, (dict, list)):
        return f"#{index}" if index is not None else "<no id>"
    return str(rid)


def _str(raw, rid, field, required=True, nonempty=False) -> str | None:
    v = raw.get(field)
    if v is None:
        if required:
            raise RecordError(rid, field, "missing")
        return None
    if not isinstance(v, str):
        raise RecordError(rid, field, f"expected a string, got {type(v).__name__}")
    if nonempty and not v.strip():
        raise RecordError(rid, field, "empty")
    return v


def _number(v, rid, field) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise RecordError(rid, field, f"expected a finite number, got {v!r}")
    return v


def _box(v, rid, field) -> Box:
    if not isinstance(v, (list, tuple)) or len(v) != 4:
        raise RecordError(rid, field, f"a box must be 4 numbers [x1,y1,x2,y2], got {v!r}")
    b = tuple(float(_number(c, rid, field)) for c in v)
    if b[2] < b[0] or b[3] < b[1]:
        raise RecordError(rid, field, f"box {list(v)} has x2 < x1 or y2 < y1")
    return b


def _segment(v, rid, field) -> tuple[float, float]:
    if isinstance(v, str):
        try:
            v = ast.literal_eval(v.strip())
        except (ValueError, SyntaxError) as e:
            raise RecordError(rid, field, f"not a [start, end] list: {v!r}") from e
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise RecordError(rid, field, f"expected [start, end] in seconds, got {v!r}")
    s, e = (float(_number(x, rid, field)) for x in v)
    if s < 0 or e < s:
        raise RecordError(rid, field, f"segment [{s}, {e}] is not 0 <= start <= end")
    return s, e


def _letter(v: str, rid, field) -> str:
    m = _LETTER_RE.match(v.strip())
    if not m:
        raise RecordError(rid, field, f"expected an option letter, got {v!r}")
    return m.group(1)


def _key_frames(v, rid) -> tuple[KeyFrame, ...]:
    if not isinstance(v, list) or not v:
        raise RecordError(rid, "key_frames", "expected a non-empty list of {time, path, idx}")
    out = []
    for kf in v:
        if not isinstance(kf, dict):
            raise RecordError(rid, "key_frames", f"entry {kf!r} is not an object")
        t = _number(kf.get("time"), rid, "key_frames")
        if t < 0:
            raise RecordError(rid, "key_frames", f"negative time {t}")
        path, idx = kf.get("path"), kf.get("idx")
        if not isinstance(path, str) or not path:
            raise RecordError(rid, "key_frames", f"entry {kf!r} has no path")
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise RecordError(rid, "key_frames", f"entry {kf!r} has no integer idx")
        out.append(KeyFrame(time=t, path=path, idx=idx))
    return tuple(out)


def _key_items(v, rid) -> dict[str, dict[str, tuple[Box, ...]]]:
    if not isinstance(v, dict):
        raise RecordError(rid, "key_items", "expected {idx: {object_name: [[x1,y1,x2,y2]]}}")
    out = {}
    for idx, objs in v.items():
        if objs is None:  # Arrow key union leaves None entries; upstream deletes them
            continue
        if not isinstance(objs, dict):
            raise RecordError(rid, "key_items", f"entry {idx!r} is not an object")
        clean = {}
        for name, boxes in objs.items():
            if boxes is None:
                continue
            if not isinstance(boxes, list) or not boxes:
                raise RecordError(rid, "key_items", f"{idx}/{name}: expected a list of boxes")
            clean[name] = tuple(_box(b, rid, "key_items") for b in boxes)
        out[str(idx)] = clean
    return out


def parse_stgr(raw: Mapping[str, Any], split: str, index: int | None = None) -> STGRRecord:
    """Validates one raw STGR dict. `index` (position in the file) names id-less records."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rid = _id_of(raw, index)
    if "id" not in raw:
        raise RecordError(rid, "id", "missing")
    task = _str(raw, rid, "task")
    if task not in (SFT_TASKS if split == "sft" else TASKS):
        raise RecordError(rid, "task", f"{task!r} is not a {split} task; known: {TASKS}")
    fields: dict[str, Any] = dict(
        id=rid,
        split=split,
        task=task,
        source=_str(raw, rid, "source"),
        question=_str(raw, rid, "question", nonempty=True),
        answer=_str(raw, rid, "answer", nonempty=True),
    )
    if split == "sft":
        fields["reasoning_process"] = _str(raw, rid, "reasoning_process", nonempty=True)
    if task == VISUAL_QA:
        fields["image_path"] = _str(raw, rid, "image_path", nonempty=True)
        size = raw.get("image_size")
        if (
            not isinstance(size, (list, tuple))
            or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
        ):
            raise RecordError(rid, "image_size", f"expected [W, H] positive ints, got {size!r}")
        fields["image_size"] = (size[0], size[1])
    else:
        fields["video_path"] = _str(raw, rid, "video_path", nonempty=True)
    if task == TEMPORAL_SPATIAL:
        fields["key_frames"] = _key_frames(raw.get("key_frames"), rid)
    if raw.get("key_items") is not None:
        fields["key_items"] = _key_items(raw["key_items"], rid)
    if task == TEMPORAL_SPATIAL and split == "rl":
        missing = [k.idx for k in fields["key_frames"] if str(k.idx) not in fields["key_items"]]
        if missing:  # upstream's spatial reward raises KeyError on these
            raise RecordError(rid, "key_items", f"no boxes for key frame idx {missing}")
    if split == "rl":
        fields.update(_parse_rl_answer(task, fields["answer"], rid))
    return STGRRecord(**fields)


def _parse_rl_answer(task: str, answer: str, rid) -> dict[str, Any]:
    """RL ground-truth formats, as the reward functions read them (§1.2)."""
    if task == TEMPORAL_QA:
        return {"answer_segment": _segment(answer, rid, "answer")}
    if task == TEMPORAL_QA_MCQ:
        lines = answer.strip().split("\n", 1)
        if len(lines) != 2:
            raise RecordError(rid, "answer", "TG-MCQ answer must be '<LETTER>\\n[start, end]'")
        return {
            "answer_letter": _letter(lines[0], rid, "answer"),
            "answer_segment": _segment(lines[1], rid, "answer"),
        }
    if task == GENERAL_MCQ:
        return {"answer_letter": _letter(answer, rid, "answer")}
    if task == VISUAL_QA:
        m = _BOX_RE.search(answer)
        if not m:
            raise RecordError(rid, "answer", "visual QA answer has no <box>[x1,y1,x2,y2]</box>")
        try:
            box = json.loads(m.group(1))
        except json.JSONDecodeError as e:
            raise RecordError(rid, "answer", f"unparsable box {m.group(1)!r}") from e
        return {"answer_box": _box(box, rid, "answer")}
    return {}


# ---- geometry ----------------------------------------------------------------------------


def convert_boxes(
    boxes: Any,
    frame_size: tuple[int, int],
    source_size: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes into pixels of the frame fed to the model, clipped to it.

    boxes: float[N, 4] xyxy, normalised to [0, 1] when `source_size` is None, else in pixels of
    an image of size `source_size` = (W, H). frame_size: (W, H) after smart_resize.
    Returns (float64[N, 4] pixel boxes, bool[N] clipped). No rounding: rewards compare floats;
    targets round with Python's `round` (half to even, like upstream).
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    w, h = frame_size
    sx, sy = (w, h) if source_size is None else (w / source_size[0], h / source_size[1])
    px = b * np.array([sx, sy, sx, sy])
    clipped_px = np.clip(px, 0.0, np.array([w, h, w, h], np.float64))
    return clipped_px, np.any(clipped_px != px, axis=1)


@dataclasses.dataclass(frozen=True)
class GroundTruth:
    """Ground truth of a record in resized-frame pixels (what rewards compare against).

    key_boxes: key-frame idx -> object name -> float[N, 4] boxes; answer_box: float[4] or None;
    flags: counts of BOX_CLIPPED / TIME_BEYOND_VIDEO.
    """

    key_boxes: dict[str, dict[str, np.ndarray]]
    answer_box: np.ndarray | None
    flags: Counter


def ground_truth(
    record: STGRRecord, frame_size: tuple[int, int], duration: float | None = None
) -> GroundTruth:
    """Converts a record's GT boxes to `frame_size` pixels and flags times past `duration`."""
    flags: Counter = Counter()
    key_boxes = {}
    for idx, objs in record.key_items.items():
        key_boxes[idx] = {}
        for name, boxes in objs.items():
            px, clipped = convert_boxes(boxes, frame_size)
            key_boxes[idx][name] = px
            flags[BOX_CLIPPED] += int(clipped.sum())
    answer_box = None
    if record.answer_box is not None:
        px, clipped = convert_boxes(record.answer_box, frame_size, record.image_size)
        answer_box = px[0]
        flags[BOX_CLIPPED] += int(clipped.sum())
    if duration is not None:
        times = [k.time for k in record.key_frames]
        if record.answer_segment is not None:
            times += list(record.answer_segment)
        flags[TIME_BEYOND_VIDEO] += sum(t > duration for t in times)
    return GroundTruth(key_boxes, answer_box, +flags)


# ---- V-STaR ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VStarBox:
    timestamp: int  # whole seconds
    box: Box  # original-video pixels


@dataclasses.dataclass(frozen=True)
class VStarRecord:
    """One V-STaR item (§5.2). Boxes stay in original-video pixels, as the upstream metric
    compares them; `boxes_in_frame` converts them for a resized frame."""

    id: str
    vid: str
    domain: str
    fps: float
    frame_count: int
    width: int
    height: int
    question: str
    answer: str
    temporal_question: str
    spatial_question: str
    spatial_question_2: str
    timestamps: tuple[float, float]
    bboxes: tuple[VStarBox, ...]

    @property
    def duration(self) -> float:
        return self.frame_count / self.fps

    def flags(self) -> Counter:
        """TIME_BEYOND_VIDEO / BOX_CLIPPED counts against the video's own duration and size."""
        f: Counter = Counter()
        times = list(self.timestamps) + [b.timestamp for b in self.bboxes]
        f[TIME_BEYOND_VIDEO] += sum(t > self.duration for t in times)
        if self.bboxes:
            _, clipped = self.boxes_in_frame((self.width, self.height))
            f[BOX_CLIPPED] += int(clipped.sum())
        return +f

    def boxes_in_frame(self, frame_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(float[N, 4] boxes in `frame_size` pixels, bool[N] clipped)."""
        b = [x.box for x in self.bboxes]
        return convert_boxes(b, frame_size, (self.width, self.height))


def parse_vstar(raw: Mapping[str, Any], index: int | None = None) -> VStarRecord:
    vid = raw.get("vid")
    rid = f"{vid}#{index}" if index is not None else str(vid)
    if not isinstance(vid, (str, int)) or isinstance(vid, bool) or str(vid) == "":
        raise RecordError(rid, "vid", f"expected a video id, got {vid!r}")
    fps = _number(raw.get("fps"), rid, "fps")
    frame_count = raw.get("frame_count")
    width, height = raw.get("width"), raw.get("height")
    for name, v in (("frame_count", frame_count), ("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise RecordError(rid, name, f"expected a positive int, got {v!r}")
    if fps <= 0:
        raise RecordError(rid, "fps", f"expected a positive number, got {fps!r}")
    texts = {
        name: _str(raw, rid, name, nonempty=True)
        for name in (
            "question",
            "answer",
            "temporal_question",
            "spatial_question",
            "spatial_question_2",
        )
    }
    bboxes = raw.get("bboxes")
    if not isinstance(bboxes, list):
        raise RecordError(rid, "bboxes", "expected a list of {timestamp, xmin, ymin, xmax, ymax}")
    boxes = []
    for b in bboxes:
        if not isinstance(b, dict):
            raise RecordError(rid, "bboxes", f"entry {b!r} is not an object")
        t = _number(b.get("timestamp"), rid, "bboxes")
        coords = [b.get(k) for k in ("xmin", "ymin", "xmax", "ymax")]
        boxes.append(VStarBox(int(t), _box(coords, rid, "bboxes")))
    return VStarRecord(
        id=rid,
        vid=str(vid),
        domain=_str(raw, rid, "domain", required=False) or "",
        fps=float(fps),
        frame_count=frame_count,
        width=width,
        height=height,
        timestamps=_segment(raw.get("timestamps"), rid, "timestamps"),
        bboxes=tuple(boxes),
        **texts,
    )


def load_vstar(path: str | os.PathLike) -> list[VStarRecord]:
    return [parse_vstar(raw, index=n) for n, raw in enumerate(read_json_records(path))]


# ---- multiple-choice benchmarks ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MCQRecord:
    """A multiple-choice benchmark item (VideoMME / WorldSense / VideoMMMU style).

    options: the option texts without their letters; answer: the correct letter.
    """

    id: str
    question: str
    options: tuple[str, ...]
    answer: str
    video_path: str | None = None
    image_path: str | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def letters(self) -> str:
        return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(self.options)]

    def options_text(self) -> str:
        """'A. first\\nB. second ...' (the layout the upstream eval prompts use)."""
        return "\n".join(f"{ch}. {o}" for ch, o in zip(self.letters, self.options, strict=True))


_OPTION_PREFIX = re.compile(r"^\(?([A-Z])[\).:]\s*")
_MCQ_KNOWN = ("id", "question_id", "question", "options", "answer", "video_path", "video")


def parse_mcq(raw: Mapping[str, Any], index: int | None = None) -> MCQRecord:
    rid_raw = raw.get("id", raw.get("question_id"))
    rid = str(rid_raw) if rid_raw is not None else f"#{index}"
    question = _str(raw, rid, "question", nonempty=True)
    opts = raw.get("options")
    if isinstance(opts, dict):
        keys = sorted(opts)
        if keys != list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(keys)]):
            raise RecordError(rid, "options", f"option keys {keys} are not A, B, C, ...")
        opts = [opts[k] for k in keys]
    if not isinstance(opts, list) or len(opts) < 2 or not all(isinstance(o, str) for o in opts):
        raise RecordError(rid, "options", f"expected a list of >= 2 strings, got {opts!r}")
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(opts)]
    clean = []
    for n, o in enumerate(opts):
        m = _OPTION_PREFIX.match(o)
        if m and m.group(1) != letters[n]:
            raise RecordError(rid, "options", f"option {n} is lettered {m.group(1)!r}")
        clean.append(o[m.end() :] if m else o)
    answer = _letter(_str(raw, rid, "answer", nonempty=True), rid, "answer")
    if answer not in letters:
        raise RecordError(rid, "answer", f"letter {answer!r} is not among options {letters}")
    video = raw.get("video_path", raw.get("video"))
    if video is not None and not isinstance(video, str):
        raise RecordError(rid, "video_path", f"expected a string, got {video!r}")
    return MCQRecord(
        id=rid,
        question=question,
        options=tuple(clean),
        answer=answer,
        video_path=video,
        image_path=_str(raw, rid, "image_path", required=False),
        extra={k: v for k, v in raw.items() if k not in _MCQ_KNOWN},
    )


def load_mcq(path: str | os.PathLike) -> list[MCQRecord]:
    return [parse_mcq(raw, index=n) for n, raw in enumerate(read_json_records(path))]
