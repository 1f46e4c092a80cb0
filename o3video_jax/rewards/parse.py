"""Total, linear-time parser of policy completions (untrusted text).

Every pattern of the original reward code (docs/open_o3_video.md §2, `reward_func.py`) is re-expressed as
`str.find` scans that select exactly the match Python's backtracking regex selects; the
derivation is written beside each scanner. The original regexes backtrack quadratically or
worse on adversarial text (e.g. the claim pattern nests lazy `.*?` inside `(...)+`); these scans
touch each character a bounded number of times, so 100k characters of nested or unclosed tags
parse in milliseconds. Numbers go through the same converters as the original (`float`,
`json.loads`), so they parse to the same values; anything that raises there is unparsable here.

`parse_completion` returns a `Completion` of Python values; `batch.parse_batch` packs them into
fixed-size arrays (docs/design.md decision 7).
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

from o3video_jax.rewards.config import (
    GENERAL_FREE_FORM,
    GENERAL_MCQ,
    TEMPORAL_QA,
    TEMPORAL_QA_MCQ,
    TEMPORAL_SPATIAL,
    VISUAL_QA,
)

Box = tuple[float, float, float, float]

# Order of `Completion.tag_counts` / `ParsedBatch.tag_counts`: the first four count the whole
# completion, the last six count inside the first think block (the format reward's inputs).
TAG_COUNT_NAMES = (
    "think_open",
    "think_close",
    "answer_open",
    "answer_close",
    "obj_open",
    "obj_close",
    "t_open",
    "t_close",
    "box_open",
    "box_close",
)

_TIMES = re.compile(r"<t>([\d.]+)</t>s")  # linear: see _times
_SPAN = re.compile(r"<t>(\d+(?:\.\d*)?)</t>s to <t>(\d+(?:\.\d*)?)</t>s")  # see _span
_VQA_PREFIX = re.compile(r"<obj>\w+</obj><box>\[")  # `\w+` is followed by '<': linear


class Claim(NamedTuple):
    """One grounded claim `<obj>name</obj><box>[..]</box>+at<t>time</t>s` of the think block.

    boxes: one entry per `[..]` of the box run; None where it is not a list of 4 finite
      numbers (such a box scores IoU 0, as `calculate_iou` gives it).
    time: float(T); may be nan/inf, which never passes the temporal gate.
    """

    name: str
    boxes: tuple[Box | None, ...]
    time: float


class Completion(NamedTuple):
    """Structured fields of one completion (docs/open_o3_video.md §2).

    think: content of the first `<think>(.*?)</think>` (DOTALL), None if absent.
    has_answer: whether `<answer>.*?</answer>` (DOTALL) occurs.
    answer: first `<answer>\\s*(.*?)\\s*</answer>` match, stripped; "" if none.
    claims: grounded claims of the think block whose time and boxes parse.
    times: values of `<t>([\\d.]+)</t>s` in the think block; empty when any fails `float`
      (the original's try/except around the whole list).
    think_boxes: JSON-parsable `<box>(\\[.*?\\])</box>` of the think block (None: not a box).
    span: (start, end) of the first `<t>a</t>s to <t>b</t>s` in the answer, None if none.
    answer_box: first `<box>(\\[.*?\\])</box>` of the answer; None if absent or not a box.
    choice: the TG-MCQ choice, text after the first `Correct Option:` of the answer, stripped.
    tag_counts: see TAG_COUNT_NAMES.
    vqa_pair: `<obj>(\\w+)</obj><box>(\\[.*?\\])</box>` occurs anywhere (visual QA format).
    """

    think: str | None
    has_answer: bool
    answer: str
    claims: tuple[Claim, ...]
    times: tuple[float, ...]
    think_boxes: tuple[Box | None, ...]
    span: tuple[float, float] | None
    answer_box: Box | None
    choice: str | None
    tag_counts: tuple[int, ...]
    vqa_pair: bool


def first_block(text: str, open_tag: str, close_tag: str) -> tuple[int, int] | None:
    """Span of the first `open(.*?)close` match (DOTALL): the first opening tag, then the first
    closing tag after it. If the first opening tag has no closing tag after it, no later one has."""
    i = text.find(open_tag)
    if i < 0:
        return None
    start = i + len(open_tag)
    j = text.find(close_tag, start)
    return None if j < 0 else (start, j)


def extract_answer(text: str) -> str:
    """`re.search(r'<answer>\\s*(.*?)\\s*</answer>', text, DOTALL)`, group 1 stripped, else "".

    The lazy group ends at the first `</answer>` (a later one would need whitespace across the
    '<' of the first), and the two `\\s*` remove exactly the surrounding whitespace; `\\s`
    and `str.isspace` agree on every code point.
    """
    span = first_block(text, "<answer>", "</answer>")
    return "" if span is None else text[span[0] : span[1]].strip()


def as_box(value) -> Box | None:
    """A JSON value as `calculate_iou` reads a predicted box: a list of 4 numbers (bools and
    numeric strings convert as numpy does), else None. Non-finite coordinates also give None:
    the original's IoU with them is always 0 (the box area is nan or inf)."""
    if type(value) is not list or len(value) != 4:
        return None
    try:  # float() rejects None, lists and dicts, which numpy turns into nan or an error
        x1, y1, x2, y2 = map(float, value)
    except (TypeError, ValueError, OverflowError):
        return None
    # x - x is 0 exactly when x is finite.
    if x1 - x1 == 0 and y1 - y1 == 0 and x2 - x2 == 0 and y2 - y2 == 0:
        return x1, y1, x2, y2
    return None


# Four plain JSON numbers (ASCII digits, JSON whitespace) skip json.loads: the values equal
# float(json.loads(..)) since both round the same decimal string correctly. Integer parts are
# capped at 31 digits so that json's int digit limit (a ValueError) keeps its meaning.
_JSON_NUMBER = r"[ \t\n\r]*(-?(?:0|[1-9][0-9]{0,30})(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)[ \t\n\r]*"
_PLAIN_BOX = re.compile(r"\[" + ",".join([_JSON_NUMBER] * 4) + r"\]")


def load_box(text: str):
    """(parsed, box): json.loads(text) succeeded, and the value as a box (or None)."""
    m = _PLAIN_BOX.fullmatch(text)
    if m is not None:
        x1, y1, x2, y2 = box = tuple(map(float, m.groups()))
        # x - x is 0 exactly when x is finite ('1e999' matches the pattern).
        finite = x1 - x1 == 0 and y1 - y1 == 0 and x2 - x2 == 0 and y2 - y2 == 0
        return True, box if finite else None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError, the int digit limit, deep nesting
        return False, None
    return True, as_box(value)


def _bracket_spans(s: str):
    """`re.findall(r'\\[.*?\\]', s)` without DOTALL: from each '[', the first ']' unless a
    newline comes first. Cached next-']' and next-newline pointers keep it linear."""
    pos, close, newline = 0, -1, -1
    while True:
        p = s.find("[", pos)
        if p < 0:
            return
        if close <= p:
            close = s.find("]", p + 1)
            if close < 0:
                return
        if newline <= p:
            newline = s.find("\n", p + 1)
            if newline < 0:
                newline = len(s)
        if newline < close:
            pos = newline + 1
            continue
        yield s[p : close + 1]
        pos = close + 1


def box_tag_spans(s: str):
    """`re.finditer(r'<box>(\\[.*?\\])</box>', s)` without DOTALL, as group-1 strings: from
    each `<box>[`, the first `]</box>` unless a newline comes first (the lazy `.*?` may cross
    ']' but not a newline)."""
    pos, close, newline = 0, -1, -1
    while True:
        p = s.find("<box>[", pos)
        if p < 0:
            return
        if close < p + 6:
            close = s.find("]</box>", p + 6)
            if close < 0:
                return
        if newline < p + 6:
            newline = s.find("\n", p + 6)
            if newline < 0:
                newline = len(s)
        if newline < close:
            pos = newline + 1
            continue
        yield s[p + 5 : close + 1]
        pos = close + 7


def claim_at(think: str, s: int) -> tuple[Claim | None, int] | None:
    """One step of `_claims` from the `<obj>` at s: (the claim, or None if it is skipped,
    and where the next search starts), or None when no claim matches from s (nor from any
    later `<obj>`)."""
    a = think.find("</obj><box>[", s + 5)
    if a < 0:
        return None
    r = think.find("]</box>at<t>", a + 12)
    if r < 0:
        return None
    e = think.find("</t>s", r + 12)
    if e < 0:
        return None
    try:
        time = float(think[r + 12 : e].strip())
    except ValueError:
        return None, e + 5
    boxes = []
    for piece in _bracket_spans(think[a + 6 : r + 7]):
        parsed, box = load_box(piece)
        if not parsed:
            return None, e + 5
        boxes.append(box)
    return Claim(name=think[s + 5 : a].strip(), boxes=tuple(boxes), time=time), e + 5


def _claims(think: str) -> list[Claim]:
    """`re.finditer(r'<obj>(.*?)</obj>((?:<box>\\[.*?\\]</box>)+)at<t>(.*?)</t>s', think, DOTALL)`.

    From an `<obj>` at s the regex matches iff there is a `</obj><box>[` at a >= s+5, then a
    `]</box>at<t>` at r >= a+12, then a `</t>s` at e >= r+12; each condition only gets harder
    for later positions, so the engine's first (lazy-shortest) choice is the first of each,
    and if the first `<obj>` has no match no later one does. The box group is think[a+6:r+7]:
    its inner `.*?` may cross `]</box>` boundaries, which the `[..]` split below recovers.
    Claims whose time fails `float` or whose `[..]` pieces fail `json.loads` are skipped.
    """
    claims, pos = [], 0
    while (s := think.find("<obj>", pos)) >= 0 and (step := claim_at(think, s)) is not None:
        claim, pos = step
        if claim is not None:
            claims.append(claim)
    return claims


def _times(think: str) -> tuple[float, ...]:
    """`[float(m) for m in re.findall(r'<t>([\\d.]+)</t>s', think)]`, () if any float fails.

    The pattern itself is linear here: a `[\\d.]+` run cannot contain the '<' of `</t>s`,
    so each attempt (one per `<t>`) backtracks only over its own run, and runs after
    different `<t>` are disjoint.
    """
    try:
        return tuple(map(float, _TIMES.findall(think)))
    except ValueError:  # '1.2.3', '.'
        return ()


def _span(answer: str) -> tuple[float, float] | None:
    """`re.search(r'<t>(\\d+\\.?\\d*)</t>s to <t>(\\d+\\.?\\d*)</t>s', answer)` as floats.

    `\\d+\\.?\\d*` and `\\d+(?:\\.\\d*)?` match the same strings, so the search finds the same
    leftmost match with the same groups; the second form splits a digit run in one way only,
    so each attempt (one per `<t>`) backtracks over its own runs once: linear time, where the
    original's two ways of splitting a run are quadratic in its length.
    """
    m = _SPAN.search(answer)
    return None if m is None else (float(m.group(1)), float(m.group(2)))


def _vqa_pair(text: str) -> bool:
    """`re.search(r'<obj>(\\w+)</obj><box>(\\[.*?\\])</box>', text)` is not None."""
    close, newline = -1, -1
    for m in _VQA_PREFIX.finditer(text):
        q = m.end()
        if close < q:
            close = text.find("]</box>", q)
            if close < 0:
                return False
        if newline < q:
            newline = text.find("\n", q)
            if newline < 0:
                newline = len(text)
        if close < newline:
            return True
    return False


def _think_boxes(think: str) -> tuple[Box | None, ...]:
    """Think boxes of the visual QA spatial reward: `<box>(\\[.*?\\])</box>` matches; those
    failing `json.loads` are dropped (`except: pass`), other non-boxes become None."""
    boxes = []
    for s in box_tag_spans(think):
        parsed, box = load_box(s)
        if parsed:
            boxes.append(box)
    return tuple(boxes)


# Fields each task's rewards read; parse_completion(text, task) skips the others (they stay
# empty), since every reward of another task's fields is 0 for this task anyway.
_TASK_FIELDS = {
    TEMPORAL_SPATIAL: frozenset({"claims", "times"}),
    VISUAL_QA: frozenset({"think_boxes", "answer_box", "vqa_pair"}),
    TEMPORAL_QA: frozenset({"times", "span"}),
    TEMPORAL_QA_MCQ: frozenset({"times", "span", "choice"}),
    GENERAL_MCQ: frozenset(),
    GENERAL_FREE_FORM: frozenset(),
}
_ALL_FIELDS = frozenset().union(*_TASK_FIELDS.values())


def parse_completion(text: str, task: str | None = None) -> Completion:
    """Parses one completion; total: never raises for any `str`.

    With `task` (one of config.TASKS), only the fields that task's rewards read are parsed;
    the others are left empty (None / ()).
    """
    if not isinstance(text, str):
        raise TypeError(f"completion must be a str, got {type(text).__name__}")
    fields = _ALL_FIELDS if task is None else _TASK_FIELDS[task]
    think_span = first_block(text, "<think>", "</think>")
    think = None if think_span is None else text[think_span[0] : think_span[1]]
    answer_span = first_block(text, "<answer>", "</answer>")
    answer = "" if answer_span is None else text[answer_span[0] : answer_span[1]].strip()
    inner = think or ""
    count, inner_count = text.count, inner.count
    counts = (
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
    answer_box, choice = None, None
    if "answer_box" in fields:
        first = next(box_tag_spans(answer), None)
        answer_box = None if first is None else load_box(first)[1]
    if "choice" in fields:
        parts = answer.split("Correct Option:", 2)
        choice = parts[1].strip() if len(parts) > 1 else None
    return Completion(
        think=think,
        has_answer=answer_span is not None,
        answer=answer,
        claims=tuple(_claims(inner)) if "claims" in fields else (),
        times=_times(inner) if "times" in fields else (),
        think_boxes=_think_boxes(inner) if "think_boxes" in fields else (),
        span=_span(answer) if "span" in fields else None,
        answer_box=answer_box,
        choice=choice,
        tag_counts=counts,
        vqa_pair=_vqa_pair(text) if "vqa_pair" in fields else False,
    )
