"""Ground truth of the rewards as fixed-size arrays, built on the host from STGR records.

An example is an STGR record (docs/open_o3_video.md §1.2: `task`, `answer`, `key_frames`, `key_items`,
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
import re
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
    distinct temporal-spatial example (E slots, K key frames, G annotated boxes per key
    frame), which rows reach through `example`: the completions of a prompt share one
    record, and per-row copies would multiply the largest arrays by the group size.

    task:            int32[N]             index into config.TASKS
    span:            float64[N, 2]        GT [start, end] s (temporal QA, TG-MCQ), else 0
    box:             float64[N, 4]        visual QA GT box in model pixels, else 0
    box_ok:          bool[N]
    example:         int32[N]             slot of a temporal-spatial row's example in the kf_*
                                          tables (other rows: 0, never read)
    kf_time:         float64[E, K]        raw key-frame times, in list order
    kf_mask:         bool[E, K]
    kf_boxes:        float64[E, K, G, 4]  key_items boxes in model pixels, grouped by object
    kf_box_object:   int8[E, K, G]        1 + the object slot of each box within its frame
                                          (objects numbered from 0 in order), 0: no box
                                          (int32 when G > 127)
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
    kf_box_object: np.ndarray
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


# `[start, end]` of two plain numbers, which ast.literal_eval reads as the same floats: ints
# without leading zeros (literal_eval rejects those) and decimals, no sign (-0 reads as 0).
_PLAIN_SPAN = re.compile(
    r"\[ *((?:0|[1-9][0-9]*)(?:\.[0-9]*)?) *, *((?:0|[1-9][0-9]*)(?:\.[0-9]*)?) *\]"
)


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
    m = _PLAIN_SPAN.fullmatch(text)
    if m is not None:
        start, end = float(m.group(1)), float(m.group(2))
        if start - start == 0 and end - end == 0:  # finite
            return [start, end]
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
    """Key-frame times, per frame the box counts of its objects (those with boxes), the raw
    boxes in that order (converted and checked by `_frame_boxes`), and frame_size."""
    frames = example.get("key_frames")
    if type(frames) is not list and (not isinstance(frames, Sequence) or isinstance(frames, str)):
        raise ValueError(f"example {i}: temporal-spatial example needs a key_frames list")
    if len(frames) > cfg.max_key_frames:
        raise ValueError(
            f"example {i}: {len(frames)} key frames exceed RewardConfig.max_key_frames="
            f"{cfg.max_key_frames}"
        )
    items = example.get("key_items") or {}
    if type(items) is not dict and not isinstance(items, Mapping):
        raise ValueError(f"example {i}: key_items must be a dict, got {type(items).__name__}")
    size = _size(example, "frame_size", i)
    times, frame_counts, boxes = [], [], []
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
        counts = []
        for obj in (items.get(str(idx)) or {}).values():
            if obj is None:
                continue
            if type(obj) is not list and (not isinstance(obj, Sequence) or isinstance(obj, str)):
                raise ValueError(
                    f"example {i}: key_items of frame {idx} must map names to box lists"
                )
            if obj:  # objects without boxes are skipped by the original (no mean to take)
                counts.append(len(obj))
                boxes += obj
        if sum(counts) > cfg.max_frame_boxes:
            raise ValueError(
                f"example {i}: {sum(counts)} boxes in key frame {idx} exceed "
                f"RewardConfig.max_frame_boxes={cfg.max_frame_boxes}"
            )
        frame_counts.append(counts)
    return times, frame_counts, boxes, size


def _frame_boxes(boxes: list, first: list) -> np.ndarray:
    """float64[B, 4]: [float(v) for v in box] for the raw key_items boxes of all examples
    (`np.array` converts with `float`), else the ValueError naming the first bad example
    (`first`: per box, the index of its example)."""
    try:
        out = np.array(boxes, np.float64)
        if out.shape == (len(boxes), 4) and np.isfinite(out).all():
            return out
    except (TypeError, ValueError):
        pass
    values = [_numbers(box, 4, "key_items box", i) for box, i in zip(boxes, first, strict=True)]
    return np.array(values, np.float64).reshape(-1, 4)


def _row(ex, i: int, cfg: RewardConfig) -> dict:
    """Ground truth of one example as a dict of per-row values."""
    if type(ex) is not dict and not isinstance(ex, Mapping):
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
    n = len(examples)
    # Distinct example objects in order of first appearance, and each row's one.
    ids = np.array(list(map(id, examples)), np.uint64).reshape(n)
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty(len(order), np.intp)
    rank[order] = np.arange(len(order))
    row_of = rank[inverse.reshape(n)]
    rows = [_row(examples[i], i, cfg) for i in first[order].tolist()]
    u = len(rows)
    # Key-frame table slots: one per distinct temporal-spatial example. Other rows point at
    # slot 0, which their rewards never read.
    ts_rows = [r for r, row in enumerate(rows) if "key_frames" in row]
    slot = np.zeros(u, np.int32)
    slot[ts_rows] = np.arange(len(ts_rows))
    frames = [rows[r]["key_frames"][1] for r in ts_rows]  # per frame, objects' box counts
    # Table extents: fixed shapes size the tables for N distinct examples (one compile per
    # batch size); only the slots in use are written.
    e = budget(len(ts_rows), max(n, 1), cfg.bucket_shapes)
    k = budget(max(map(len, frames), default=0), cfg.max_key_frames, cfg.bucket_shapes)
    most_boxes = max((sum(counts) for f in frames for counts in f), default=0)
    g = budget(most_boxes, cfg.max_frame_boxes, cfg.bucket_shapes)
    nan2, nan4 = (math.nan,) * 2, (math.nan,) * 4
    task = np.array([row["task"] for row in rows], np.int32).reshape(u)
    span = np.array([row.get("span", nan2) for row in rows], np.float64).reshape(u, 2)
    box = np.array([row.get("box", nan4) for row in rows], np.float64).reshape(u, 4)
    box_ok = ~np.isnan(box[:, 0])
    span, box = np.nan_to_num(span, nan=0.0), np.where(box_ok[:, None], box, 0.0)
    # Flat (index, value) lists, written into the tables by one numpy call each.
    t_idx, t_val, b_idx, b_obj, raw, raw_first, scale = [], [], [], [], [], [], []
    first_rows = first[order].tolist()
    for e_slot, r in enumerate(ts_rows):
        times, frame_counts, boxes, (w, h) = rows[r]["key_frames"]
        t_idx += range(e_slot * k, e_slot * k + len(times))
        t_val += times
        for f, counts in enumerate(frame_counts):
            at = (e_slot * k + f) * g
            for o, count in enumerate(counts, 1):
                b_idx += range(at, at + count)
                b_obj += [o] * count
                at += count
        raw += boxes
        raw_first += [first_rows[r]] * len(boxes)
        scale += [w, h, w, h] * len(boxes)
    values = _frame_boxes(raw, raw_first)
    kf_time, kf_mask = zeros((e, k)), zeros((e, k), bool)
    kf_boxes = zeros((e, k, g, 4))
    kf_box_object = zeros((e, k, g), np.int8 if g < 128 else np.int32)
    t_idx, b_idx = np.array(t_idx, np.intp), np.array(b_idx, np.intp)
    kf_time.reshape(-1)[t_idx] = t_val
    kf_mask.reshape(-1)[t_idx] = True
    # convert_coord_format: normalised [0, 1] -> pixels of the resized frame (x * W).
    kf_boxes.reshape(-1, 4)[b_idx] = values * np.array(scale, np.float64).reshape(-1, 4)
    kf_box_object.reshape(-1)[b_idx] = b_obj
    references, letters = [row["reference"] for row in rows], [row["letter"] for row in rows]
    row_list = row_of.tolist()
    return Targets(
        task=task[row_of],
        span=span[row_of],
        box=box[row_of],
        box_ok=box_ok[row_of],
        example=slot[row_of],
        kf_time=kf_time,
        kf_mask=kf_mask,
        kf_boxes=kf_boxes,
        kf_box_object=kf_box_object,
        reference=list(map(references.__getitem__, row_list)),
        letter=list(map(letters.__getitem__, row_list)),
    )
