"""Packing parsed completions into the fixed-size arrays of the jitted scorer."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from o3video_jax.rewards.config import RewardConfig
from o3video_jax.rewards.decimals import MISSING, decimal_text, parse_decimals
from o3video_jax.rewards.parse import TAG_COUNT_NAMES, Completion


@dataclasses.dataclass(frozen=True)
class ParsedBatch:
    """Fixed-size arrays of N parsed completions (numpy, float64 so that time comparisons are
    bit-identical to the original's Python floats). Padding entries are 0 with mask False.

      has_think, has_answer:  bool[N]
      tag_counts:             int32[N, 10]      TAG_COUNT_NAMES
      vqa_pair:               bool[N]
      times:                  float64[N, MT]    bare think times (0 where not finite)
      times_ok:               bool[N, MT]       present and finite
      num_times:              int32[N]          all bare times
      claim_time:             float64[N, C]     0 where not finite
      claim_time_ok:          bool[N, C]        claim present with a finite time
      claim_mask:             bool[N, C]        claim present
      claim_boxes:            float64[N, C, MB, 4]
      claim_box_ok:           bool[N, C, MB]
      num_claims:             int32[N]          all parsed claims
      think_boxes:            float64[N, TB, 4]
      think_box_ok:           bool[N, TB]
      num_think_boxes:        int32[N]          JSON-parsable think boxes
      span:                   float64[N, 2]
      span_ok:                bool[N]           span found, finite and end >= start
      answer_box:             float64[N, 4]
      answer_box_ok:          bool[N]
        items beyond the budgets (their share of numerators is lost, denominators are exact)
      time_index:             int32[N * MT]     flat indices of the times_ok entries, in
                                                order, then 0 (the scorer visits only these)
      time_count:             int32[]           number of times_ok entries
      claim_index:            int32[N * C]      flat indices of the claim_mask entries, then 0
      claim_count:            int32[]           number of claim_mask entries
      answers:                list[str]         extracted answers (host-side ans_acc)
      choices:                list[str | None]  TG-MCQ choices
    """

    has_think: np.ndarray
    has_answer: np.ndarray
    tag_counts: np.ndarray
    vqa_pair: np.ndarray
    times: np.ndarray
    times_ok: np.ndarray
    num_times: np.ndarray
    claim_time: np.ndarray
    claim_time_ok: np.ndarray
    claim_mask: np.ndarray
    claim_boxes: np.ndarray
    claim_box_ok: np.ndarray
    num_claims: np.ndarray
    think_boxes: np.ndarray
    think_box_ok: np.ndarray
    num_think_boxes: np.ndarray
    span: np.ndarray
    span_ok: np.ndarray
    answer_box: np.ndarray
    answer_box_ok: np.ndarray
    time_index: np.ndarray
    time_count: np.ndarray
    claim_index: np.ndarray
    claim_count: np.ndarray
    answers: list
    choices: list

    def arrays(self) -> dict[str, np.ndarray]:
        """The numeric fields, as the jitted scorer takes them."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("answers", "choices")
        }


def budget(need: int, ceiling: int, bucket: bool) -> int:
    """Array extent: the ceiling, or with bucketing the next power of two >= need (>= 1).

    A batch that needs more than the ceiling gets the next power of two >= need: every item
    is scored, as the original does for any count (a new compile, only for such batches).
    """
    pow2 = 1 << max(need - 1, 0).bit_length()
    if need > ceiling:
        return pow2
    return min(ceiling, pow2) if bucket else ceiling


def zeros(shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
    """np.zeros with its data 64-byte aligned: XLA's CPU client then uses the buffer in place
    instead of copying it (a copy of the fixed-budget tables costs more than scoring them,
    and large zero arrays are mapped lazily, so padding that is never written is cheap)."""
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    raw = np.zeros(count * dtype.itemsize + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start : start + count * dtype.itemsize].view(dtype).reshape(shape)


class Rows(NamedTuple):
    """Parsed fields of N completions as flat lists: per-row values, and ragged items as
    per-row counts plus their values concatenated in order. Coordinates and claim times
    stay text until `pack_rows` converts them all at once (decimals.parse_decimals): boxes
    are 4 numbers each, `decimals.MISSING` for entries that are not boxes or times that are
    not finite (valid boxes are finite)."""

    has_think: Sequence  # N bools
    has_answer: Sequence  # N bools
    tag_counts: Sequence  # N x 10 ints, TAG_COUNT_NAMES per row (flat list or [N, 10])
    vqa_pair: list  # N bools
    answers: list  # N str
    choices: list  # N str | None
    num_times: list  # N
    times: list  # sum(num_times) floats
    num_claims: list  # N
    claim_time_text: list  # sum(num_claims) pieces of one number each
    claim_box_text: list  # sum(num_claims) pieces: the claim's boxes, 4 numbers each
    num_think_boxes: list  # N
    think_box_text: list  # pieces holding 4 sum(num_think_boxes) numbers
    spans: list  # 2 N floats, nan where there is no span
    answer_box_rows: list  # rows that have an answer box field
    answer_box_text: list  # their pieces of 4 numbers


def box_text(box) -> str:
    """A parsed box (4 floats, or None) as 4 numbers of text (see Rows)."""
    return ",".join(map(decimal_text, box)) if box is not None else MISSING_BOX


MISSING_BOX = ",".join([MISSING] * 4)


def _ragged(counts: np.ndarray):
    """(row, position within the row) of every item of ragged rows with these counts."""
    starts = np.cumsum(counts) - counts
    within = np.arange(int(counts.sum())) - np.repeat(starts, counts)
    return np.repeat(np.arange(len(counts)), counts), within


def _index(flat: np.ndarray, size: int):
    """int32[size]: the flat indices, then zeros (see ParsedBatch.time_index)."""
    out = zeros((size,), np.int32)
    out[: len(flat)] = flat
    return out


def pack_rows(rows: Rows, config: RewardConfig | None = None) -> ParsedBatch:
    """Pads flat parsed fields into a `ParsedBatch` with the budgets of `config`."""
    cfg = config or RewardConfig()
    n, b = len(rows.has_think), cfg.bucket_shapes
    num_times = np.array(rows.num_times, np.int32).reshape(n)
    num_claims = np.array(rows.num_claims, np.int32).reshape(n)
    num_think_boxes = np.array(rows.num_think_boxes, np.int32).reshape(n)
    claim_times = parse_decimals(rows.claim_time_text)[0]
    claim_box_values, claim_of_value = parse_decimals(rows.claim_box_text)
    claim_nb = np.bincount(claim_of_value, minlength=len(claim_times)) // 4
    mt = budget(int(num_times.max(initial=0)), cfg.max_times, b)
    mc = budget(int(num_claims.max(initial=0)), cfg.max_claims, b)
    mb = budget(int(claim_nb.max(initial=0)), cfg.max_claim_boxes, b)
    tb = budget(int(num_think_boxes.max(initial=0)), cfg.max_think_boxes, b)

    # Times: the first MT of each row, kept where finite.
    row, j = _ragged(num_times)
    values = np.array(rows.times, np.float64).reshape(-1)
    keep = (j < mt) & np.isfinite(values)
    flat = row[keep] * mt + j[keep]
    times, times_ok = zeros((n, mt)), zeros((n, mt), bool)
    times.reshape(-1)[flat], times_ok.reshape(-1)[flat] = values[keep], True
    time_index, time_count = _index(flat, n * mt), np.int32(len(flat))

    # Claims: the first C of each row; their first MB boxes.
    row, j = _ragged(num_claims)
    claim_flat, kept = row * mc + j, j < mc
    claim_mask = zeros((n, mc), bool)
    claim_mask.reshape(-1)[claim_flat[kept]] = True
    values = claim_times
    ok = kept & np.isfinite(values)
    claim_time, claim_time_ok = zeros((n, mc)), zeros((n, mc), bool)
    claim_time.reshape(-1)[claim_flat[ok]], claim_time_ok.reshape(-1)[claim_flat[ok]] = (
        values[ok],
        True,
    )
    claim_index = _index(claim_flat[kept], n * mc)
    claim, k = _ragged(claim_nb)
    boxes = claim_box_values.reshape(-1, 4)
    ok = kept[claim] & (k < mb) & np.isfinite(boxes).all(1)
    box_flat = claim_flat[claim[ok]] * mb + k[ok]
    claim_boxes, claim_box_ok = zeros((n, mc, mb, 4)), zeros((n, mc, mb), bool)
    claim_boxes.reshape(-1, 4)[box_flat], claim_box_ok.reshape(-1)[box_flat] = boxes[ok], True

    # Think boxes: the first TB of each row.
    row, j = _ragged(num_think_boxes)
    boxes = parse_decimals(rows.think_box_text)[0].reshape(-1, 4)
    ok = (j < tb) & np.isfinite(boxes).all(1)
    flat = row[ok] * tb + j[ok]
    think_boxes, think_box_ok = zeros((n, tb, 4)), zeros((n, tb), bool)
    think_boxes.reshape(-1, 4)[flat], think_box_ok.reshape(-1)[flat] = boxes[ok], True

    span = np.array(rows.spans, np.float64).reshape(n, 2)
    span_ok = np.isfinite(span).all(1) & (span[:, 1] >= span[:, 0])
    answer_box = np.full((n, 4), np.nan)
    answer_box[rows.answer_box_rows] = parse_decimals(rows.answer_box_text)[0].reshape(-1, 4)
    answer_box_ok = np.isfinite(answer_box).all(1)
    return ParsedBatch(
        has_think=np.array(rows.has_think, bool).reshape(n),
        has_answer=np.array(rows.has_answer, bool).reshape(n),
        tag_counts=np.array(rows.tag_counts, np.int32).reshape(n, len(TAG_COUNT_NAMES)),
        vqa_pair=np.array(rows.vqa_pair, bool).reshape(n),
        times=times,
        times_ok=times_ok,
        num_times=num_times,
        claim_time=claim_time,
        claim_time_ok=claim_time_ok,
        claim_mask=claim_mask,
        claim_boxes=claim_boxes,
        claim_box_ok=claim_box_ok,
        num_claims=num_claims,
        think_boxes=think_boxes,
        think_box_ok=think_box_ok,
        num_think_boxes=num_think_boxes,
        span=np.where(span_ok[:, None], span, 0.0),
        span_ok=span_ok,
        answer_box=np.where(answer_box_ok[:, None], answer_box, 0.0),
        answer_box_ok=answer_box_ok,
        time_index=time_index,
        time_count=time_count,
        claim_index=claim_index,
        claim_count=np.int32(np.count_nonzero(kept)),
        answers=list(rows.answers),
        choices=list(rows.choices),
    )


def pack(parsed: Sequence[Completion], config: RewardConfig | None = None) -> ParsedBatch:
    """Packs `parse.parse_completion` results into a `ParsedBatch` (the reference for
    scan.parse_batch, which parses straight into flat lists)."""
    rows = Rows(*([] for _ in Rows._fields))
    for c in parsed:
        rows.has_think.append(c.think is not None)
        rows.has_answer.append(c.has_answer)
        rows.tag_counts.extend(c.tag_counts)
        rows.vqa_pair.append(c.vqa_pair)
        rows.answers.append(c.answer)
        rows.choices.append(c.choice)
        rows.num_times.append(len(c.times))
        rows.times.extend(c.times)
        rows.num_claims.append(len(c.claims))
        for claim in c.claims:
            rows.claim_time_text.append(decimal_text(claim.time))
            rows.claim_box_text.append(",".join(map(box_text, claim.boxes)))
        rows.num_think_boxes.append(len(c.think_boxes))
        rows.think_box_text.extend(map(box_text, c.think_boxes))
        rows.spans.extend((math.nan, math.nan) if c.span is None else c.span)
        if c.answer_box is not None:
            rows.answer_box_rows.append(len(rows.answers) - 1)
            rows.answer_box_text.append(box_text(c.answer_box))
    return pack_rows(rows, config)
