"""Packing parsed completions into the fixed-size arrays of the jitted scorer."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from o3video_jax.rewards.config import RewardConfig
from o3video_jax.rewards.parse import TAG_COUNT_NAMES, Completion, parse_completion


@dataclasses.dataclass(frozen=True)
class ParsedBatch:
    """Fixed-size arrays of N parsed completions (numpy, float64 so that time comparisons are
    bit-identical to the original's Python floats). Padding entries are 0 with mask False.

      has_think, has_answer:  bool[N]
      tag_counts:             int32[N, 10]      TAG_COUNT_NAMES
      vqa_pair:               bool[N]
      times:                  float64[N, MT]    bare think times (0 where not finite)
      times_ok:               bool[N, MT]       present and finite
      num_times:              int32[N]          all bare times, including dropped ones
      claim_time:             float64[N, C]     0 where not finite
      claim_time_ok:          bool[N, C]        claim present with a finite time
      claim_mask:             bool[N, C]        claim present
      claim_boxes:            float64[N, C, MB, 4]
      claim_box_ok:           bool[N, C, MB]
      num_claims:             int32[N]          all parsed claims, including dropped ones
      think_boxes:            float64[N, TB, 4]
      think_box_ok:           bool[N, TB]
      num_think_boxes:        int32[N]          JSON-parsable think boxes, including dropped
      span:                   float64[N, 2]
      span_ok:                bool[N]           span found, finite and end >= start
      answer_box:             float64[N, 4]
      answer_box_ok:          bool[N]
      dropped_times, dropped_claims, dropped_claim_boxes, dropped_think_boxes: int32[N]
        items beyond the budgets (their share of numerators is lost, denominators are exact)
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
    dropped_times: np.ndarray
    dropped_claims: np.ndarray
    dropped_claim_boxes: np.ndarray
    dropped_think_boxes: np.ndarray
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
    """Array extent: the ceiling, or with bucketing the next power of two >= need (>= 1)."""
    return min(ceiling, 1 << max(need - 1, 0).bit_length()) if bucket else ceiling


def zeros(shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
    """np.zeros with its data 64-byte aligned: XLA's CPU client then uses the buffer in place
    instead of copying it (a copy of the fixed-budget tables costs more than scoring them).
    The pages stay untouched, hence free, until written."""
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    raw = np.zeros(count * dtype.itemsize + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start : start + count * dtype.itemsize].view(dtype).reshape(shape)


def _scatter(shape: tuple[int, ...], index: list, values: list, value_shape=()):
    """float64[*shape, *value_shape] zeros with `values` at `index`, and the bool[*shape] mask."""
    out, mask = np.zeros(shape + value_shape), np.zeros(shape, bool)
    if index:
        idx = tuple(np.array(index, np.intp).T)
        out[idx], mask[idx] = values, True
    return out, mask


def pack(parsed: Sequence[Completion], config: RewardConfig | None = None) -> ParsedBatch:
    """Packs parsed completions into a `ParsedBatch` with the budgets of `config`."""
    cfg = config or RewardConfig()
    n = len(parsed)
    num_times = [len(c.times) for c in parsed]
    num_claims = [len(c.claims) for c in parsed]
    num_think_boxes = [len(c.think_boxes) for c in parsed]
    most_boxes = max((len(cl.boxes) for c in parsed for cl in c.claims), default=0)
    b = cfg.bucket_shapes
    mt = budget(max(num_times, default=0), cfg.max_times, b)
    mc = budget(max(num_claims, default=0), cfg.max_claims, b)
    mb = budget(most_boxes, cfg.max_claim_boxes, b)
    tb = budget(max(num_think_boxes, default=0), cfg.max_think_boxes, b)
    # Flat (index, value) lists, scattered into the padded arrays by one numpy call each.
    t_idx, t_val, c_idx, c_time, cb_idx, cb_val, tb_idx, tb_val = ([] for _ in range(8))
    m_idx, s_idx, s_val, a_idx, a_val = [], [], [], [], []
    dropped_boxes = [0] * n
    for i, c in enumerate(parsed):
        for j, t in enumerate(c.times[:mt]):
            if t - t == 0:  # finite
                t_idx.append((i, j))
                t_val.append(t)
        for j, claim in enumerate(c.claims[:mc]):
            m_idx.append((i, j))
            if claim.time - claim.time == 0:
                c_idx.append((i, j))
                c_time.append(claim.time)
            for k, box in enumerate(claim.boxes[:mb]):
                if box is not None:
                    cb_idx.append((i, j, k))
                    cb_val.append(box)
            dropped_boxes[i] += max(0, len(claim.boxes) - mb)
        for j, box in enumerate(c.think_boxes[:tb]):
            if box is not None:
                tb_idx.append((i, j))
                tb_val.append(box)
        if c.span is not None and all(map(math.isfinite, c.span)) and c.span[1] >= c.span[0]:
            s_idx.append((i,))
            s_val.append(c.span)
        if c.answer_box is not None:
            a_idx.append((i,))
            a_val.append(c.answer_box)
    times, times_ok = _scatter((n, mt), t_idx, t_val)
    claim_time, claim_time_ok = _scatter((n, mc), c_idx, c_time)
    _, claim_mask = _scatter((n, mc), m_idx, [0.0] * len(m_idx))
    claim_boxes, claim_box_ok = _scatter((n, mc, mb), cb_idx, cb_val, (4,))
    think_boxes, think_box_ok = _scatter((n, tb), tb_idx, tb_val, (4,))
    span, span_ok = _scatter((n,), s_idx, s_val, (2,))
    answer_box, answer_box_ok = _scatter((n,), a_idx, a_val, (4,))
    num_times, num_claims, num_think_boxes = (
        np.array(v, np.int32).reshape(n) for v in (num_times, num_claims, num_think_boxes)
    )
    return ParsedBatch(
        has_think=np.array([c.think is not None for c in parsed], bool).reshape(n),
        has_answer=np.array([c.has_answer for c in parsed], bool).reshape(n),
        tag_counts=np.array([c.tag_counts for c in parsed], np.int32).reshape(
            n, len(TAG_COUNT_NAMES)
        ),
        vqa_pair=np.array([c.vqa_pair for c in parsed], bool).reshape(n),
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
        span=span,
        span_ok=span_ok,
        answer_box=answer_box,
        answer_box_ok=answer_box_ok,
        dropped_times=np.maximum(num_times - mt, 0),
        dropped_claims=np.maximum(num_claims - mc, 0),
        dropped_claim_boxes=np.array(dropped_boxes, np.int32).reshape(n),
        dropped_think_boxes=np.maximum(num_think_boxes - tb, 0),
        answers=[c.answer for c in parsed],
        choices=[c.choice for c in parsed],
    )


def parse_batch(
    completions: Sequence[str],
    config: RewardConfig | None = None,
    tasks: Sequence[str] | None = None,
) -> ParsedBatch:
    """Parses N completions (optionally only the fields their `tasks` need) into arrays."""
    if tasks is None:
        return pack([parse_completion(text) for text in completions], config)
    return pack([parse_completion(t, k) for t, k in zip(completions, tasks, strict=True)], config)
