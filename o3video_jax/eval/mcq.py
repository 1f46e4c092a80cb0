"""Multiple-choice evaluation (VideoMME, WorldSense, VideoMMMU): letter extraction and accuracy.

`extract_letter` turns a free-form model reply into one option letter (or None):
  1. a TG-MCQ "Correct Option: X" line wins outright;
  2. the `<answer>` content is used if present;
  3. a reply that is just the letter ("B", "B.", "(B)") is that letter;
  4. MMMU-style candidate search over marked forms (`A.`, `A:`, `A)`, `(A)`, `**A**`, `{A}`,
     `[A]`), then, only if none is found, bare letters between whitespace (`A `); within a
     tier the letter whose last occurrence is latest wins (models restate options first and
     conclude last);
  5. if the reply has more than 5 words, the option text: the option whose text occurs last.
A letter glued to other letters or digits ("USA.", "A1") never counts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

__all__ = ["DEFAULT_CATEGORIES", "accuracy", "extract_letter", "option_texts"]

LETTERS_ABCD = "ABCD"
LETTERS_A_TO_J = "ABCDEFGHIJ"  # VideoMMMU
DEFAULT_CATEGORIES = (
    "duration",
    "domain",
    "sub_category",
    "task_type",
    "task_domain",
    "audio_class",
    "category",
)

_ANSWER_RE = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
_OPTION_PREFIX_RE = re.compile(r"^\s*\(?([A-Z])[\.\):]\s*")


def _check_letters(letters: str) -> str:
    if (
        not letters
        or not all("A" <= c <= "Z" for c in letters)
        or len(set(letters)) != len(letters)
    ):
        raise ValueError(f"letters must be distinct upper-case A-Z characters, got {letters!r}")
    return letters


def option_texts(options, letters: str = LETTERS_ABCD) -> dict[str, str]:
    """`{letter: text}` from `{"A": "red"}` or `["A. red", "B. blue"]` / `["red", "blue"]`."""
    if options is None:
        return {}
    if isinstance(options, Mapping):
        return {str(k).strip().upper(): str(v).strip() for k, v in options.items()}
    out = {}
    for i, opt in enumerate(options):
        match = _OPTION_PREFIX_RE.match(str(opt))
        if match:
            out[match.group(1)] = str(opt)[match.end() :].strip()
        elif i < len(letters):
            out[letters[i]] = str(opt).strip()
    return out


def _last_positions(text: str, patterns: Sequence[str], letters: str) -> dict[str, int]:
    """Latest start index of any pattern per letter (letters without a hit are absent)."""
    found = {}
    for letter in letters:
        for pattern in patterns:
            for match in re.finditer(pattern.format(L=letter), text):
                found[letter] = max(found.get(letter, -1), match.start())
    return found


# `(?<![A-Za-z0-9])` / `(?![A-Za-z0-9])` keep letters inside words ("USA.", "A1") out.
_MARKED = (
    r"\({L}\)",
    r"\*\*{L}\*\*",
    r"\{{{L}\}}",
    r"\[{L}\]",
    r"(?<![A-Za-z0-9]){L}[\.:\)](?![A-Za-z0-9])",
)
_BARE = (r"(?<!\S){L}(?!\S)",)


def extract_letter(text: str, letters: str = LETTERS_ABCD, options=None) -> str | None:
    """The option letter a reply commits to, or None ("No Answer Found").

    Args:
      text: the model's reply (raw, with or without `<think>`/`<answer>` tags).
      letters: allowed letters, "ABCD" or "ABCDEFGHIJ" (VideoMMMU).
      options: optional option texts (see `option_texts`) for the content-match fallback.
    """
    letters = _check_letters(letters)
    if not isinstance(text, str):
        return None
    tg = re.findall(rf"Correct Option:\s*[\(\[\*]*([{letters}])(?![A-Za-z0-9])", text, re.I)
    if tg:
        return tg[-1].upper()
    match = _ANSWER_RE.search(text)
    if match:
        text = match.group(1)
    text = text.strip()
    whole = re.fullmatch(rf"[\(\[\{{\*]*([{letters}])[\)\]\}}\*\.:]*", text)
    if whole:
        return whole.group(1)
    for tier in (_MARKED, _BARE):
        found = _last_positions(text, tier, letters)
        if found:
            return max(found, key=found.get)
    if len(text.split()) > 5:
        lowered = text.lower()
        found = {
            letter: lowered.rfind(body.lower())
            for letter, body in option_texts(options, letters).items()
            if letter in letters and body and body.lower() in lowered
        }
        if found:
            return max(found, key=found.get)
    return None


def _acc(records: Sequence[Mapping], pred_key: str, answer_key: str) -> dict:
    correct = sum(
        r.get(pred_key) is not None
        and str(r[pred_key]).strip().upper() == str(r[answer_key]).strip().upper()
        for r in records
    )
    return {"n": len(records), "correct": int(correct), "acc": correct / len(records)}


def accuracy(
    records: Sequence[Mapping],
    *,
    pred_key: str = "pred",
    answer_key: str = "answer",
    categories: Sequence[str] = DEFAULT_CATEGORIES,
) -> dict:
    """Overall accuracy plus `by_<field>` breakdowns for every category field present.

    A record counts correct when its predicted letter (None = no answer) equals the gold one,
    case-insensitively. A field in `categories` that some records lack groups them as
    "unknown"; a field no record has is skipped.

    Returns:
      `{"n", "correct", "acc", "by_<field>": {value: {"n", "correct", "acc"}}}`.
    """
    if not records:
        raise ValueError("accuracy() needs at least one record")
    for i, r in enumerate(records):
        if answer_key not in r:
            raise ValueError(f"record {i} lacks the answer field {answer_key!r}")
    out = _acc(records, pred_key, answer_key)
    for field in categories:
        if not any(field in r for r in records):
            continue
        groups: dict[str, list[Mapping]] = {}
        for r in records:
            groups.setdefault(str(r.get(field, "unknown")), []).append(r)
        out[f"by_{field}"] = {k: _acc(v, pred_key, answer_key) for k, v in sorted(groups.items())}
    return out
