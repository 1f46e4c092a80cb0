"""Ground truth of the rewards as fixed-size arrays, built on the host from STGR records.

An example is an STGR record (reference §1.2: `task`, `answer`, `key_frames`, `key_items`,
`image_size`, ...) plus `frame_size` = [W, H] of the frames or image fed to the model. Boxes are
converted to the model's pixel space as the original does: `key_items` boxes are normalised and
scale by (W, H); the visual QA answer box is in original-image pixels and scales by
frame_size / image_size per axis. Ground truth is trusted data, so anything malformed raises a
ValueError naming the example, instead of the original's mix of crashes and silent zeros.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
from collections.abc import Mapping, Sequence

import numpy as np

from o3video_jax.rewards import parse
from o3video_jax.rewards.batch import budget, zeros
from o3video_jax.rewards.config import (
    GENERAL_FREE_FORM,
    GENERAL_MCQ,
    TASK_IDS,
    TEMPORAL_QA,
    TEMPORAL_QA_MCQ,
    TEMPORAL_SPATIAL,
    VISUAL_QA,
    RewardConfig,
)


@dataclasses.dataclass(frozen=True)
class Targets:
    """Ground truth of N examples (numpy). Key-frame data sits in tables with one slot per
    distinct example (E slots, K key frames, G annotated boxes per key frame), which rows
    reach through `example`: the G completions of a prompt share one record, and a per-row
    copy would multiply the largest arrays by G.

    task:            int32[N]             index into config.TASKS
    span:            float64[N, 2]        GT [start, end] s (temporal QA, TG-MCQ), else 0
    box:             float64[N, 4]        visual QA GT box in model pixels, else 0
    box_ok:          bool[N]
    example:         int32[N]             slot of the row's example in the kf_* tables
    kf_time:         float64[E, K]        raw key-frame times, in list order
    kf_mask:         bool[E, K]
    kf_boxes:        float64[E, K, G, 4]  key_items boxes in model pixels, grouped by object
    kf_box_mask:     bool[E, K, G]
    kf_box_object:   int32[E, K, G]       object slot (0..G-1) of each box within its frame
    kf_object_boxes: int32[E, K, G]       number of boxes of each object slot (0: no object)
    reference:       list[str | None]     ROUGE reference (free-form tasks), per row
    letter:          list[str | None]     option letter (MCQ, TG-MCQ), per row
    """

    task: np.ndarray
    span: np.ndarray
    box: np.ndarray
    box_ok: np.ndarray
    example: np.ndarray
    kf_time: np.ndarray
    kf_mask: np.ndarray
    kf_boxes: np.ndarray
    kf_box_mask: np.ndarray
    kf_box_object: np.ndarray
    kf_object_boxes: np.ndarray
    reference: list
    letter: list

    def arrays(self) -> dict[str, np.ndarray]:
        """The numeric fields, as the jitted scorer takes them."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("reference", "letter")
        }


def _size(example: Mapping, key: str, i: int) -> tuple[float, float]:
    value = example.get(key)
    try:
        w, h = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"example {i}: {key!r} must be [W, H], got {value!r}") from None
    if not (w > 0 and h > 0 and math.isfinite(w) and math.isfinite(h)):
        raise ValueError(f"example {i}: {key!r} must be positive and finite, got {value!r}")
    return w, h


def _numbers(value, n: int, what: str, i: int) -> list[float]:
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        out = []
    if len(out) != n or not all(map(math.isfinite, out)):
        raise ValueError(f"example {i}: {what} must be {n} finite numbers, got {value!r}")
    return out


def _span(answer: str, task: str, i: int) -> list[float]:
    # ans_tiou / thk_temporal_segment: literal_eval(answer), TG-MCQ: of its second line.
    text = answer
    if task == TEMPORAL_QA_MCQ:
        lines = answer.split("\n")
        if len(lines) < 2:
            raise ValueError(
                f"example {i}: TG-MCQ answer needs 'LETTER\\n[start, end]', got {answer!r}"
            )
        text = lines[1]
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError(
            f"example {i}: temporal answer {text!r} is not a [start, end] literal"
        ) from None
    return _numbers(value, 2, "temporal answer", i)


def _visual_box(example: Mapping, i: int) -> list[float]:
    # First `<box>(\[.*?\])</box>` of the GT answer, original pixels -> resized (frame_size).
    found = next(parse.box_tag_spans(example["answer"]), None)
    try:
        value = None if found is None else json.loads(found)
    except (ValueError, RecursionError):
        value = None
    if value is None:
        raise ValueError(f"example {i}: visual QA answer has no <box>[x1,y1,x2,y2]</box>")
    x1, y1, x2, y2 = _numbers(value, 4, "visual QA answer box", i)
    w0, h0 = _size(example, "image_size", i)
    w, h = _size(example, "frame_size", i)
    # convert_coord_format_gqa: coordinate * refined / original, in that order.
    return [x1 * w / w0, y1 * h / h0, x2 * w / w0, y2 * h / h0]


def _key_frames(example: Mapping, i: int, cfg: RewardConfig):
    """Key-frame times and, per frame, its objects' box lists in model pixels."""
    frames = example.get("key_frames")
    if not isinstance(frames, Sequence) or isinstance(frames, str):
        raise ValueError(f"example {i}: temporal-spatial example needs a key_frames list")
    if len(frames) > cfg.max_key_frames:
        raise ValueError(
            f"example {i}: {len(frames)} key frames exceed RewardConfig.max_key_frames="
            f"{cfg.max_key_frames}"
        )
    items = example.get("key_items") or {}
    if not isinstance(items, Mapping):
        raise ValueError(f"example {i}: key_items must be a dict, got {type(items).__name__}")
    w, h = _size(example, "frame_size", i)
    times, frames_objects = [], []
    for frame in frames:
        try:
            time, idx = float(frame["time"]), frame["idx"]
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"example {i}: key frame {frame!r} needs 'time' and 'idx'") from None
        if not math.isfinite(time):
            raise ValueError(f"example {i}: key frame time {frame['time']!r} is not finite")
        times.append(time)
        # A frame without key_items makes the original raise KeyError when a claim selects
        # it; here it has no objects, so such a claim scores 0. None values are Arrow padding.
        objects = []
        for obj in (items.get(str(idx)) or {}).values():
            if obj is None:
                continue
            if not isinstance(obj, Sequence) or isinstance(obj, str):
                raise ValueError(
                    f"example {i}: key_items of frame {idx} must map names to box lists"
                )
            # convert_coord_format: normalised [0, 1] -> pixels of the resized frame.
            objects.append(
                [
                    [x1 * w, y1 * h, x2 * w, y2 * h]
                    for x1, y1, x2, y2 in (_numbers(b, 4, "key_items box", i) for b in obj)
                ]
            )
        total = sum(map(len, objects))
        if total > cfg.max_frame_boxes:
            raise ValueError(
                f"example {i}: {total} boxes in key frame {idx} exceed "
                f"RewardConfig.max_frame_boxes={cfg.max_frame_boxes}"
            )
        frames_objects.append(objects)
    return times, frames_objects


def _row(ex, i: int, cfg: RewardConfig) -> dict:
    """Ground truth of one example as a dict of per-row values."""
    if not isinstance(ex, Mapping):
        raise ValueError(f"example {i} must be a dict, got {type(ex).__name__}")
    name = ex.get("task")
    if name not in TASK_IDS:
        raise ValueError(f"example {i}: unknown task {name!r}; expected one of {list(TASK_IDS)}")
    answer = ex.get("answer")
    if not isinstance(answer, str):
        raise ValueError(f"example {i}: answer must be a str, got {type(answer).__name__}")
    row = {"task": TASK_IDS[name], "reference": None, "letter": None}
    if name in (TEMPORAL_SPATIAL, GENERAL_FREE_FORM):
        # ans_acc scores against extract_answer(f'<answer>{answer}</answer>').
        row["reference"] = parse.extract_answer(f"<answer>{answer}</answer>")
    elif name == GENERAL_MCQ:
        row["letter"] = parse.extract_answer(f"<answer>{answer}</answer>").strip()
    elif name == TEMPORAL_QA_MCQ:
        row["letter"] = answer.split("\n")[0].strip()
    if name in (TEMPORAL_QA, TEMPORAL_QA_MCQ):
        row["span"] = _span(answer, name, i)
    if name == VISUAL_QA:
        row["box"] = _visual_box(ex, i)
    if name == TEMPORAL_SPATIAL:
        row["key_frames"] = _key_frames(ex, i, cfg)
    return row


def build_targets(examples: Sequence[Mapping], config: RewardConfig | None = None) -> Targets:
    """Ground-truth arrays of N examples; each distinct example object is converted once
    (the G completions of a prompt share one record)."""
    cfg = config or RewardConfig()
    rows, row_of = [], []
    seen: dict[int, int] = {}  # id(example) -> unique row
    for i, ex in enumerate(examples):
        r = seen.get(id(ex))
        if r is None:
            r = seen[id(ex)] = len(rows)
            rows.append(_row(ex, i, cfg))
        row_of.append(r)
    n, u = len(row_of), len(rows)
    frames = [row["key_frames"][1] for row in rows if "key_frames" in row]
    # Table extents: fixed shapes size the tables for N distinct examples (one compile per
    # batch size); only the slots in use are written.
    e = budget(u, max(n, 1), cfg.bucket_shapes)
    k = budget(max(map(len, frames), default=0), cfg.max_key_frames, cfg.bucket_shapes)
    most_boxes = max((sum(map(len, objs)) for f in frames for objs in f), default=0)
    g = budget(most_boxes, cfg.max_frame_boxes, cfg.bucket_shapes)
    task = np.array([row["task"] for row in rows], np.int32).reshape(u)
    span, box, box_ok = np.zeros((u, 2)), np.zeros((u, 4)), np.zeros(u, bool)
    # Flat (index, value) lists, written into the tables by one numpy call each.
    t_idx, t_val, b_idx, b_val, b_obj, o_idx, o_cnt = [], [], [], [], [], [], []
    for r, row in enumerate(rows):
        if "span" in row:
            span[r] = row["span"]
        if "box" in row:
            box[r], box_ok[r] = row["box"], True
        if "key_frames" in row:
            times, frame_objects = row["key_frames"]
            t_idx.extend(range(r * k, r * k + len(times)))
            t_val.extend(times)
            for f, objects in enumerate(frame_objects):
                base = (r * k + f) * g
                slot = base
                # Objects without boxes are skipped by the original (no mean to take).
                for o, obj in enumerate(b for b in objects if b):
                    b_idx.extend(range(slot, slot + len(obj)))
                    b_val.extend(obj)
                    b_obj.extend([o] * len(obj))
                    o_idx.append(base + o)
                    o_cnt.append(len(obj))
                    slot += len(obj)
    kf_time, kf_mask = zeros((e, k)), zeros((e, k), bool)
    kf_boxes, kf_box_mask = zeros((e, k, g, 4)), zeros((e, k, g), bool)
    kf_box_object, kf_object_boxes = zeros((e, k, g), np.int32), zeros((e, k, g), np.int32)
    kf_time.reshape(-1)[t_idx] = t_val
    kf_mask.reshape(-1)[t_idx] = True
    if b_idx:
        kf_boxes.reshape(-1, 4)[b_idx] = b_val
    kf_box_mask.reshape(-1)[b_idx] = True
    kf_box_object.reshape(-1)[b_idx] = b_obj
    kf_object_boxes.reshape(-1)[o_idx] = o_cnt
    idx = np.asarray(row_of, np.intp)
    return Targets(
        task=task[idx],
        span=span[idx],
        box=box[idx],
        box_ok=box_ok[idx],
        example=idx.astype(np.int32),
        kf_time=kf_time,
        kf_mask=kf_mask,
        kf_boxes=kf_boxes,
        kf_box_mask=kf_box_mask,
        kf_box_object=kf_box_object,
        kf_object_boxes=kf_object_boxes,
        reference=[rows[j]["reference"] for j in row_of],
        letter=[rows[j]["letter"] for j in row_of],
    )
