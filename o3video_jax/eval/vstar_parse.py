"""Parsers for V-STaR model outputs (temporal spans, per-second box dicts, judge replies).

They follow the original `test_vstar_multi_images.py` / `eval_vstar.py` closely, quirks
included, because the published V-STaR numbers were produced with them: a "better" parser
would make our numbers incomparable. Each quirk is marked "Faithful:" below. All functions
are total: any string goes in, a value (possibly empty) comes out.
"""

from __future__ import annotations

import json
import re

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_MINSEC_RE = re.compile(r"(\d+):(\d+)")
# Faithful: `\b` after the number means "2.5s" yields only "2" (5 and s are both word chars).
_NUMBER_RE = re.compile(r"\b\d+(?:\.\d+)?\b")
_FENCED_JSON_RE = re.compile(r"```json\s*\n(\[.*?\]|\{.*?\})\s*\n```", re.DOTALL)
_GREEDY_JSON_RE = re.compile(r"(\[[\s\S]*\]|\{[\s\S]*\})")


def answer_content(text: str) -> str:
    """The stripped content of the first `<answer>…</answer>`, else `text` unchanged."""
    match = _ANSWER_RE.search(text)
    return match.group(1).strip() if match else text


def parse_temporal_answer(text: str) -> list[float]:
    """`[start, end]` seconds from a "When" answer, or `[]` if it does not hold exactly 2 numbers.

    Takes the `<answer>` content if present, rewrites `m:ss` as seconds, then collects every
    number; anything but exactly two (e.g. a leaked `<think>` with more numbers) gives `[]`.
    """
    if not isinstance(text, str):
        return []
    text = answer_content(text)
    text = _MINSEC_RE.sub(lambda m: f"<t>{int(m.group(1)) * 60 + int(m.group(2))}</t>s", text)
    numbers = _NUMBER_RE.findall(text)
    return [float(numbers[0]), float(numbers[1])] if len(numbers) == 2 else []


def balance_brackets(json_str: str) -> str:
    """Close (or open) unbalanced `[` and `{` by counting, as the original `fix_incomplete_json`.

    Counting ignores nesting order, so it repairs truncated outputs like `{"1": [1, 2, 3, 4]`
    but not interleavings; the caller simply gives up when `json.loads` still fails.
    """
    for opening, closing in ("[]", "{}"):
        missing = json_str.count(opening) - json_str.count(closing)
        if missing > 0:
            json_str += closing * missing
        elif missing < 0:
            json_str = opening * (-missing) + json_str
    return json_str


def _to_box_dict(parsed):
    """Normalise the JSON layouts models emit into `{second_str: box}`; raises on odd lists."""
    if isinstance(parsed, list) and all(isinstance(item, dict) for item in parsed):
        merged = {}
        for item in parsed:  # [{"1": box}, {"2": box}] -> {"1": box, "2": box}
            merged.update(item)
        parsed = merged
    if isinstance(parsed, list):  # [[1, box], [2, box]] -> {"1": box, "2": box}
        return {str(pair[0]): pair[1] for pair in parsed}
    if isinstance(parsed, dict):
        return dict(parsed)
    raise TypeError(f"not a box layout: {type(parsed).__name__}")


def parse_spatial_answer(text: str) -> dict | list | None:
    """Per-second boxes from a "Where" answer: `{"12": [x1, y1, x2, y2], ...}`, or None.

    Takes the `<answer>` content, then a ```json fenced block if present, else the greedy
    span from the first `[`/`{` to the last `]`/`}`; single quotes become double quotes.
    A list of dicts is merged; a list of `[second, box]` pairs becomes a dict keyed by
    `str(second)`. If that fails, brackets are balanced and parsing is retried.

    Faithful: the retry returns a list as it is (not converted to a dict). `vstar` scores a
    list as "no box at any GT second", i.e. IoU 0, exactly as the original evaluation.
    """
    if not isinstance(text, str):
        return None
    text = answer_content(text)
    match = _FENCED_JSON_RE.search(text) or _GREEDY_JSON_RE.search(text)
    if match is None:
        return None
    json_str = match.group(1).strip().replace("'", '"')
    try:
        return _to_box_dict(json.loads(json_str))
    except (ValueError, TypeError, IndexError, KeyError, RecursionError):
        pass
    try:
        parsed = json.loads(balance_brackets(json_str))
    except (ValueError, RecursionError):
        return None
    if isinstance(parsed, list):
        return list(parsed)
    if isinstance(parsed, dict):
        return dict(parsed)
    return None


def parse_judge_reply(text: str) -> int:
    """The LLM judge's rating as upstream reads it: `int(reply)` (whitespace tolerated), -1
    for a reply that is not an integer. Out-of-range integers are kept as upstream keeps them
    (a "5" counts as correct there, a "-2" lowers the average score)."""
    try:
        return int(str(text).strip())
    except ValueError:
        return -1
