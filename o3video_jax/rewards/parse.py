"""Total, linear-time parser of policy completions (untrusted text).

Every pattern of the original reward code (reference §2, `reward_func.py`) is re-expressed as
`str.find` scans that select exactly the match Python's backtracking regex selects; the
derivation is written beside each scanner. The original regexes backtrack quadratically or
worse on adversarial text (e.g. the claim pattern nests lazy `.*?` inside `(...)+`); these scans
touch each character a bounded number of times, so 100k characters of nested or unclosed tags
parse in milliseconds. Numbers go through the same converters as the original (`float`,
`json.loads`), so they parse to the same values; anything that raises there is unparsable here.

`parse_completion` returns a `Completion` of Python values; `parse_batch` packs a list of them
into the fixed-size arrays of a `ParsedBatch` (DESIGN decision 7).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence

import numpy as np

from o3video_jax.rewards.config import RewardConfig

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
_THINK_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_INNER_TAGS = ("<obj>", "</obj>", "<t>", "</t>", "<box>", "</box>")

_DIGITS_DOTS = re.compile(r"[\d.]*")  # a single greedy class: no backtracking
_VQA_PREFIX = re.compile(r"<obj>\w+</obj><box>\[")  # `\w+` is followed by '<': linear


@dataclasses.dataclass(frozen=True)
class Claim:
    """One grounded claim `<obj>name</obj><box>[..]</box>+at<t>time</t>s` of the think block.

    boxes: one entry per `[..]` of the box run; None where it is not a list of 4 finite
      numbers (such a box scores IoU 0, as `calculate_iou` gives it).
    time: float(T); may be nan/inf, which never passes the temporal gate.
    """

    name: str
    boxes: tuple[Box | None, ...]
    time: float


@dataclasses.dataclass(frozen=True)
class Completion:
    """Structured fields of one completion (reference §2).

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
    if not isinstance(value, list) or len(value) != 4:
        return None
    out = []
    for v in value:
        if isinstance(v, bool | int | float | str):
            try:
                f = float(v)
            except (ValueError, OverflowError):
                return None
        else:  # None (nan in numpy), nested lists, dicts
            return None
        if not math.isfinite(f):
            return None
        out.append(f)
    return tuple(out)


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
    while True:
        s = think.find("<obj>", pos)
        if s < 0:
            break
        a = think.find("</obj><box>[", s + 5)
        if a < 0:
            break
        r = think.find("]</box>at<t>", a + 12)
        if r < 0:
            break
        e = think.find("</t>s", r + 12)
        if e < 0:
            break
        pos = e + 5
        try:
            time = float(think[r + 12 : e].strip())
            values = [json.loads(b) for b in _bracket_spans(think[a + 6 : r + 7])]
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
            continue
        boxes = tuple(as_box(v) for v in values)
        claims.append(Claim(name=think[s + 5 : a].strip(), boxes=boxes, time=time))
    return claims


def _times(think: str) -> tuple[float, ...]:
    """`[float(m) for m in re.findall(r'<t>([\\d.]+)</t>s', think)]`, () if any float fails."""
    values, pos = [], 0
    while True:
        p = think.find("<t>", pos)
        if p < 0:
            break
        end = _DIGITS_DOTS.match(think, p + 3).end()
        if end > p + 3 and think.startswith("</t>s", end):
            try:
                values.append(float(think[p + 3 : end]))
            except ValueError:  # '1.2.3', '.'
                return ()
            pos = end + 5
        else:
            pos = end  # no `<t>` starts inside a digit run
    return tuple(values)


def _is_decimal_number(s: str) -> bool:
    """fullmatch(r'\\d+\\.?\\d*') for a string made of `\\d` and '.' characters."""
    return bool(s) and s[0] != "." and s.count(".") <= 1


def _span(answer: str) -> tuple[float, float] | None:
    """`re.search(r'<t>(\\d+\\.?\\d*)</t>s to <t>(\\d+\\.?\\d*)</t>s', answer)` as floats.

    Each candidate is anchored at an occurrence k of the literal `</t>s to <t>`: the first
    number is the maximal run of digits/dots ending at k (it must follow `<t>`), the second the
    maximal run starting at k+12 (it must precede `</t>s`). Candidates come in the order of
    their match starts, so the first valid one is the regex's leftmost match. Runs are scanned
    at most twice in total.
    """
    sep = "</t>s to <t>"
    k = answer.find(sep)
    while k >= 0:
        i = k
        while i > 0 and (answer[i - 1] == "." or answer[i - 1].isdecimal()):
            i -= 1
        first = answer[i:k]
        j = _DIGITS_DOTS.match(answer, k + 12).end()
        second = answer[k + 12 : j]
        if (
            answer.endswith("<t>", 0, i)
            and _is_decimal_number(first)
            and _is_decimal_number(second)
            and answer.startswith("</t>s", j)
        ):
            return float(first), float(second)
        k = answer.find(sep, k + 1)
    return None


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


def _json_box(s: str) -> Box | None:
    try:
        return as_box(json.loads(s))
    except (ValueError, RecursionError):
        return None


def _think_boxes(think: str) -> tuple[Box | None, ...]:
    """Think boxes of the visual QA spatial reward: `<box>(\\[.*?\\])</box>` matches; those
    failing `json.loads` are dropped (`except: pass`), other non-boxes become None."""
    boxes = []
    for s in box_tag_spans(think):
        try:
            value = json.loads(s)
        except (ValueError, RecursionError):
            continue
        boxes.append(as_box(value))
    return tuple(boxes)


def parse_completion(text: str) -> Completion:
    """Parses one completion. Total: never raises for any `str`."""
    if not isinstance(text, str):
        raise TypeError(f"completion must be a str, got {type(text).__name__}")
    think_span = first_block(text, "<think>", "</think>")
    think = None if think_span is None else text[think_span[0] : think_span[1]]
    has_answer = first_block(text, "<answer>", "</answer>") is not None
    answer = extract_answer(text)
    inner = think or ""
    counts = tuple(text.count(t) for t in _THINK_TAGS) + tuple(inner.count(t) for t in _INNER_TAGS)
    first_answer_box = next(box_tag_spans(answer), None)
    parts = answer.split("Correct Option:", 2)
    return Completion(
        think=think,
        has_answer=has_answer,
        answer=answer,
        claims=tuple(_claims(inner)),
        times=_times(inner),
        think_boxes=_think_boxes(inner),
        span=_span(answer),
        answer_box=None if first_answer_box is None else _json_box(first_answer_box),
        choice=parts[1].strip() if len(parts) > 1 else None,
        tag_counts=counts,
        vqa_pair=_vqa_pair(text),
    )


@dataclasses.dataclass(frozen=True)
class ParsedBatch:
    """Fixed-size arrays of N parsed completions (numpy, float64 so that time comparisons are
    bit-identical to the original's Python floats). Padding entries are 0 with mask False.

      has_think, has_answer:  bool[N]
      tag_counts:             int32[N, 10]      TAG_COUNT_NAMES
      vqa_pair:               bool[N]
      times:                  float64[N, MT]    bare think times; times_ok: present and finite
      times_ok:               bool[N, MT]
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


def parse_batch(
    completions: Sequence[str], config: RewardConfig | None = None
) -> ParsedBatch:
    """Parses N completions into a `ParsedBatch` with the budgets of `config`."""
    cfg = config or RewardConfig()
    parsed = [parse_completion(text) for text in completions]
    n, mt, mc, mb, tb = len(parsed), cfg.max_times, cfg.max_claims, cfg.max_claim_boxes, cfg.max_think_boxes
    times = np.zeros((n, mt))
    times_ok = np.zeros((n, mt), bool)
    claim_time = np.zeros((n, mc))
    claim_time_ok = np.zeros((n, mc), bool)
    claim_mask = np.zeros((n, mc), bool)
    claim_boxes = np.zeros((n, mc, mb, 4))
    claim_box_ok = np.zeros((n, mc, mb), bool)
    think_boxes = np.zeros((n, tb, 4))
    think_box_ok = np.zeros((n, tb), bool)
    span = np.zeros((n, 2))
    span_ok = np.zeros(n, bool)
    answer_box = np.zeros((n, 4))
    answer_box_ok = np.zeros(n, bool)
    dropped = np.zeros((4, n), np.int32)
    for i, c in enumerate(parsed):
        for j, t in enumerate(c.times[:mt]):
            if math.isfinite(t):
                times[i, j], times_ok[i, j] = t, True
        for j, claim in enumerate(c.claims[:mc]):
            claim_mask[i, j] = True
            if math.isfinite(claim.time):
                claim_time[i, j], claim_time_ok[i, j] = claim.time, True
            for k, box in enumerate(claim.boxes[:mb]):
                if box is not None:
                    claim_boxes[i, j, k], claim_box_ok[i, j, k] = box, True
            dropped[2, i] += max(0, len(claim.boxes) - mb)
        for j, box in enumerate(c.think_boxes[:tb]):
            if box is not None:
                think_boxes[i, j], think_box_ok[i, j] = box, True
        if c.span is not None and all(map(math.isfinite, c.span)) and c.span[1] >= c.span[0]:
            span[i], span_ok[i] = c.span, True
        if c.answer_box is not None:
            answer_box[i], answer_box_ok[i] = c.answer_box, True
        dropped[0, i] = max(0, len(c.times) - mt)
        dropped[1, i] = max(0, len(c.claims) - mc)
        dropped[3, i] = max(0, len(c.think_boxes) - tb)
    return ParsedBatch(
        has_think=np.array([c.think is not None for c in parsed], bool),
        has_answer=np.array([c.has_answer for c in parsed], bool),
        tag_counts=np.array([c.tag_counts for c in parsed], np.int32).reshape(n, 10),
        vqa_pair=np.array([c.vqa_pair for c in parsed], bool),
        times=times,
        times_ok=times_ok,
        num_times=np.array([len(c.times) for c in parsed], np.int32),
        claim_time=claim_time,
        claim_time_ok=claim_time_ok,
        claim_mask=claim_mask,
        claim_boxes=claim_boxes,
        claim_box_ok=claim_box_ok,
        num_claims=np.array([len(c.claims) for c in parsed], np.int32),
        think_boxes=think_boxes,
        think_box_ok=think_box_ok,
        num_think_boxes=np.array([len(c.think_boxes) for c in parsed], np.int32),
        span=span,
        span_ok=span_ok,
        answer_box=answer_box,
        answer_box_ok=answer_box_ok,
        dropped_times=dropped[0],
        dropped_claims=dropped[1],
        dropped_claim_boxes=dropped[2],
        dropped_think_boxes=dropped[3],
        answers=[c.answer for c in parsed],
        choices=[c.choice for c in parsed],
    )
