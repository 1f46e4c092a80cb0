"""Batch parsing of completions straight into the scorer's arrays (`parse_batch`).

Same fields and values as packing `parse.parse_completion` results (`batch.pack`), without
building a Python object per completion, claim or box:

  * one loop over the batch collects flat lists (values plus per-row counts), which numpy
    turns into the padded arrays in a few vectorised calls;
  * each row parses only the fields its task's rewards read (parse._TASK_FIELDS);
  * claims and think boxes first try one compiled regex for their canonical form
    (`<obj>name</obj><box>[x1, y1, x2, y2]</box>..at<t>T</t>s`, plain decimal coordinates).
    A fast result is used only when it provably equals the exact scanner's: every `<obj>`
    (resp. `<box>`) of the think block starts a canonical match. Otherwise the row goes
    through parse.py's exact scanners. Both regexes run in linear time (no nested
    quantifiers; every attempt starts at a tag and stops at the next '<').
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from o3video_jax.rewards import parse
from o3video_jax.rewards.batch import ParsedBatch, budget, zeros
from o3video_jax.rewards.config import RewardConfig

_NAN4 = (math.nan,) * 4  # "not a box": valid boxes are finite, so nan marks the others

# A plain JSON number without exponent: float() of it equals float(json.loads(..)) (both
# round the decimal string correctly) and is finite (at most 31 integer digits).
_NUM = r"-?(?:0|[1-9][0-9]{0,30})(?:\.[0-9]+)?"
_BOX = r"\[ *" + " *, *".join([_NUM] * 4) + r" *\]"
# A canonical claim: name and time without '<', boxes of 4 plain numbers. Groups: the box
# run, the time text.
_CLAIM = re.compile(r"<obj>[^<]*</obj>((?:<box>" + _BOX + r"</box>)+)at<t>([^<]*)</t>s")
_BOX_TAG = re.compile(r"<box>(" + _BOX + r")</box>")
_NUMBER = re.compile(_NUM)
# parse._times: the original pattern is linear here, since a `[\d.]+` run cannot contain '<'.
_TIME = re.compile(r"<t>([\d.]+)</t>s")


def _claims(inner: str, times: list, nboxes: list, boxes: list) -> int:
    """Appends the claims of a think block (time, box count, 4 values per box); returns the
    number of claims. See parse._claims for the matching rule."""
    found = _CLAIM.findall(inner)
    if len(found) == inner.count("<obj>"):
        # Every `<obj>` starts a canonical claim, so parse._claims' scans land exactly on
        # the canonical matches: first `</obj><box>[` after the name (names have no '<'),
        # first `]</box>at<t>` (only the last box is followed by `at<t>`), first `</t>s`.
        count = 0
        for run, text in found:
            try:
                time = float(text.strip())
            except ValueError:
                continue  # the original skips the claim
            values = _NUMBER.findall(run)
            times.append(time)
            nboxes.append(len(values) >> 2)
            boxes.extend(map(float, values))
            count += 1
        return count
    claims = parse._claims(inner)
    for claim in claims:
        times.append(claim.time)
        nboxes.append(len(claim.boxes))
        for box in claim.boxes:
            boxes.extend(_NAN4 if box is None else box)
    return len(claims)


def _think_boxes(inner: str, boxes: list) -> int:
    """Appends the think boxes of the visual QA spatial reward; returns their number."""
    found = _BOX_TAG.findall(inner)
    if len(found) == inner.count("<box>"):
        # Every `<box>` is followed by a canonical box and `</box>`: exactly the spans of
        # parse.box_tag_spans, each a plain box.
        for text in found:
            boxes.extend(map(float, _NUMBER.findall(text)))
        return len(found)
    parsed = parse._think_boxes(inner)
    for box in parsed:
        boxes.extend(_NAN4 if box is None else box)
    return len(parsed)


def _answer_box(answer: str) -> tuple[float, ...]:
    p = answer.find("<box>[")
    if p < 0:
        return _NAN4
    m = _BOX_TAG.match(answer, p)
    if m is not None:  # the first span of parse.box_tag_spans, a plain box
        return tuple(map(float, _NUMBER.findall(m.group(1))))
    box = parse.load_box(next(parse.box_tag_spans(answer), "x"))[1]
    return _NAN4 if box is None else box


def _times(inner: str, values: list) -> int:
    """Appends the bare think times (parse._times); returns their number."""
    found = _TIME.findall(inner)
    try:
        values += map(float, found)
    except ValueError:  # '1.2.3', '.': the original's try/except empties the list
        del values[len(values) - _count_floats(found) :]  # what += appended before failing
        return 0
    return len(found)


def _count_floats(found: list) -> int:
    """Number of leading entries of `found` that float() accepts."""
    for i, text in enumerate(found):
        try:
            float(text)
        except ValueError:
            return i
    return len(found)


def parse_batch(
    completions: Sequence[str],
    config: RewardConfig | None = None,
    tasks: Sequence[str] | None = None,
) -> ParsedBatch:
    """Parses N completions (optionally only the fields their `tasks` need) into arrays."""
    cfg = config or RewardConfig()
    n = len(completions)
    if tasks is None:
        tasks = [None] * n
    elif len(tasks) != n:
        raise ValueError(f"got {len(tasks)} tasks for {n} completions")
    has_think, has_answer, counts, vqa, answers, choices = [], [], [], [], [], []
    num_times, time_values = [], []
    num_claims, claim_times, claim_nboxes, claim_boxes = [], [], [], []
    num_think_boxes, think_boxes, spans, answer_boxes = [], [], [], []
    fields_of = {task: parse._ALL_FIELDS if task is None else parse._TASK_FIELDS[task]
                 for task in set(tasks)}
    for text, task in zip(completions, tasks, strict=True):
        if type(text) is not str:
            raise TypeError(f"completion must be a str, got {type(text).__name__}")
        fields = fields_of[task]
        i = text.find("<think>")
        j = -1 if i < 0 else text.find("</think>", i + 7)
        inner = "" if j < 0 else text[i + 7 : j]
        a = text.find("<answer>")
        b = -1 if a < 0 else text.find("</answer>", a + 8)
        answer = "" if b < 0 else text[a + 8 : b].strip()
        has_think.append(j >= 0)
        has_answer.append(b >= 0)
        answers.append(answer)
        count, inner_count = text.count, inner.count
        counts += (
            count("<think>"),
            count("</think>"),
            count("<answer>"),
            count("</answer>"),
            inner_count("<obj>"),
            inner_count("</obj>"),
            inner_count("<t>"),
            inner_count("</t>"),
            inner_count("<box>"),
            inner_count("</box>"),
        )
        if not fields:
            num_times.append(0)
            num_claims.append(0)
            num_think_boxes.append(0)
            vqa.append(False)
            choices.append(None)
            spans += (math.nan, math.nan)
            answer_boxes += _NAN4
            continue
        num_times.append(_times(inner, time_values) if "times" in fields else 0)
        num_claims.append(
            _claims(inner, claim_times, claim_nboxes, claim_boxes) if "claims" in fields else 0
        )
        num_think_boxes.append(
            _think_boxes(inner, think_boxes) if "think_boxes" in fields else 0
        )
        vqa.append(parse._vqa_pair(text) if "vqa_pair" in fields else False)
        span = parse._span(answer) if "span" in fields else None
        spans += (math.nan, math.nan) if span is None else span
        answer_boxes += _answer_box(answer) if "answer_box" in fields else _NAN4
        if "choice" in fields:
            parts = answer.split("Correct Option:", 2)
            choices.append(parts[1].strip() if len(parts) > 1 else None)
        else:
            choices.append(None)
    return _pack(
        cfg, n, has_think, has_answer, counts, vqa, answers, choices,
        num_times, time_values, num_claims, claim_times, claim_nboxes, claim_boxes,
        num_think_boxes, think_boxes, spans, answer_boxes,
    )  # fmt: skip
