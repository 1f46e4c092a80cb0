"""Batch parsing of completions straight into the scorer's arrays (`parse_batch`).

Same fields and values as packing `parse.parse_completion` results (`batch.pack`), at a
fraction of the cost, by never building a Python object per completion, claim or number:

  * tags.scan_tags finds the think/answer blocks and the format reward's tag counts of the
    whole batch in a few numpy passes;
  * one loop over the batch collects flat lists, parsing only the fields each row's task
    reads (parse._TASK_FIELDS); coordinates and claim times stay text, and pack_rows
    converts all of them at once (decimals.parse_decimals, exactly `float`'s values);
  * claims and think boxes are first matched in their canonical form
    (`<obj>name</obj><box>[x1, y1, x2, y2]</box>..at<t>T</t>s`, plain decimal numbers) by
    one compiled regex. That result is used only where it provably equals parse.py's exact
    scanners: where every `<obj>` (resp. `<box>`) of the think block starts a canonical
    match. Otherwise the claims are walked one by one, canonical ones whole and the others
    through parse's exact step. The regexes run in linear time (unambiguous patterns;
    every attempt starts at a tag and stops at the next '<').
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Sequence

import numpy as np

from o3video_jax.rewards import parse
from o3video_jax.rewards.batch import MISSING_BOX, ParsedBatch, Rows, box_text, pack_rows
from o3video_jax.rewards.config import RewardConfig
from o3video_jax.rewards.decimals import decimal_text
from o3video_jax.rewards.tags import scan_tags

# Possessive quantifiers (Python >= 3.11) where giving characters back can never lead to a
# match (what follows each one cannot start with a character it consumed): the same
# matches as plain greedy ones, found without futile backtracking, about twice as fast.
_P = "+" if sys.version_info >= (3, 11) else ""
# A plain JSON number without exponent: float() of it equals float(json.loads(..)) (both
# round the decimal string correctly) and is finite (at most 31 integer digits).
_NUM = rf"-?{_P}(?:0|[1-9][0-9]{{0,30}}{_P})(?:\.[0-9]+{_P})?{_P}"
_BOX = rf"\[ *{_P}" + rf" *{_P}, *{_P}".join([_NUM] * 4) + rf" *{_P}\]"
# A canonical claim: name without '<', boxes of 4 plain numbers, a plain decimal time (which
# float() accepts and strip() leaves alone). Groups: the box run, the time.
_CLAIM = re.compile(
    rf"<obj>[^<]*{_P}</obj>((?:<box>{_BOX}</box>)+{_P})"
    rf"at<t>([0-9]+{_P}(?:\.[0-9]*{_P})?{_P}|\.[0-9]+{_P})</t>s"
)
_BOX_TAG = re.compile(rf"<box>({_BOX})</box>")


def _claims(inner: str, times: list, boxes: list) -> int:
    """Appends the claims of a think block (time text, box run text; see batch.Rows);
    returns the number of claims. See parse._claims for the matching rule."""
    found = _CLAIM.findall(inner)
    if len(found) == inner.count("<obj>"):
        # Every `<obj>` starts a canonical claim, so parse._claims' scans land exactly on
        # the canonical matches: first `</obj><box>[` after the name (names have no '<'),
        # first `]</box>at<t>` (only the last box is followed by `at<t>`), first `</t>s`.
        # Each `[..]` of a run is a plain box, and the runs hold no other numbers.
        if found:
            runs, texts = zip(*found, strict=True)
            times += texts
            boxes += runs
        return len(found)
    # Some claim is not canonical: walk the claims as parse._claims does, taking each
    # canonical one whole (the scans from its `<obj>` land on the canonical match) and the
    # others through parse's exact step.
    count, pos = 0, 0
    while (s := inner.find("<obj>", pos)) >= 0:
        m = _CLAIM.match(inner, s)
        if m is not None:
            boxes.append(m.group(1))
            times.append(m.group(2))
            count, pos = count + 1, m.end()
            continue
        step = parse.claim_at(inner, s)
        if step is None:
            break
        claim, pos = step
        if claim is not None:
            times.append(decimal_text(claim.time))
            boxes.append(",".join(map(box_text, claim.boxes)))
            count += 1
    return count


def _think_boxes(inner: str, boxes: list) -> int:
    """Appends the think boxes of the visual QA spatial reward (text, see batch.Rows);
    returns their number."""
    found = _BOX_TAG.findall(inner)
    if len(found) == inner.count("<box>"):
        # Every `<box>` is followed by a canonical box and `</box>`: exactly the spans of
        # parse.box_tag_spans, each a plain box.
        boxes += found
        return len(found)
    parsed = parse._think_boxes(inner)
    boxes += map(box_text, parsed)
    return len(parsed)


def _answer_box(answer: str) -> str:
    """The first `<box>[..]</box>` of the answer as box text (see batch.Rows)."""
    p = answer.find("<box>[")
    if p < 0:
        return MISSING_BOX
    m = _BOX_TAG.match(answer, p)
    if m is not None:  # the first span of parse.box_tag_spans, a plain box
        return m.group(1)
    return box_text(parse.load_box(next(parse.box_tag_spans(answer), "x"))[1])


def _times(inner: str, values: list) -> int:
    """Appends the bare think times (parse._times); returns their number."""
    found = parse._TIMES.findall(inner)
    try:
        values += list(map(float, found))
    except ValueError:  # '1.2.3', '.': the original's try/except empties the list
        return 0
    return len(found)


def parse_batch(
    completions: Sequence[str],
    config: RewardConfig | None = None,
    tasks: Sequence[str] | None = None,
) -> ParsedBatch:
    """Parses N completions (optionally only the fields their `tasks` need) into arrays."""
    n = len(completions)
    if tasks is None:
        tasks = [None] * n
    elif len(tasks) != n:
        raise ValueError(f"got {len(tasks)} tasks for {n} completions")
    unknown = set(tasks) - set(parse._TASK_FIELDS) - {None}
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; expected {list(parse._TASK_FIELDS)}")
    fields_of = {task: parse._TASK_FIELDS.get(task, parse._ALL_FIELDS) for task in set(tasks)}
    scanned = scan_tags(completions)
    answers = []
    # Per-row fields start at their empty values; rows whose task reads them overwrite.
    vqa, choices, spans = [False] * n, [None] * n, [math.nan] * 2 * n
    num_times, num_claims, num_think_boxes = [0] * n, [0] * n, [0] * n
    time_values, claim_times, claim_boxes, think_boxes = [], [], [], []
    answer_box_rows, answer_boxes = [], []
    for r, (text, task, ts, te, ans, ane) in enumerate(
        zip(completions, tasks, *scanned[1:], strict=True)
    ):
        answer = text[ans:ane].strip() if ane >= 0 else ""
        answers.append(answer)
        fields = fields_of[task]
        if not fields:
            continue
        inner = text[ts:te] if te >= 0 else ""
        if "times" in fields:
            num_times[r] = _times(inner, time_values)
        if "claims" in fields:
            num_claims[r] = _claims(inner, claim_times, claim_boxes)
        if "think_boxes" in fields:
            num_think_boxes[r] = _think_boxes(inner, think_boxes)
        if "vqa_pair" in fields:
            vqa[r] = parse._vqa_pair(text)
        if "span" in fields:
            span = parse._span(answer)
            if span is not None:
                spans[2 * r : 2 * r + 2] = span
        if "answer_box" in fields:
            answer_box_rows.append(r)
            answer_boxes.append(_answer_box(answer))
        if "choice" in fields:
            parts = answer.split("Correct Option:", 2)
            choices[r] = parts[1].strip() if len(parts) > 1 else None
    has_think = np.array(scanned.think_end) >= 0
    has_answer = np.array(scanned.answer_end) >= 0
    rows = Rows(
        has_think, has_answer, scanned.counts, vqa, answers, choices,
        num_times, time_values, num_claims, claim_times, claim_boxes,
        num_think_boxes, think_boxes, spans, answer_box_rows, answer_boxes,
    )  # fmt: skip
    return pack_rows(rows, config)
