"""VideoMMMU open-question scoring: MMMU's `parse_open_response` and `eval_open` (§5.3).

An open answer is correct when a normalised gold string is contained in one of the key
sub-responses (or a gold number equals one of the extracted numbers, rounded to 2 dp).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["eval_open", "extract_numbers", "normalize_str", "parse_open_response"]

_KEY_INDICATORS = (
    "could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ", "are ",
    "in total ", "total ", "identify ", "recognize ", "calculated as ", "counted as ",
    "measured as ", "observed as ", "concluded as ", "found to be ", "equals ",
    "determined to be ", "number of ", "value is ", "adds up to ", "have ", "has ",
)  # fmt: skip
_TRIVIAL = {":", ",", ".", "!", "?", ";", "'"}


def extract_numbers(text: str) -> list[str]:
    """Numbers with thousands commas, in scientific notation, and plain ones (in that order)."""
    commas = re.findall(r"-?\b\d{1,3}(?:,\d{3})+\b", text)
    scientific = re.findall(r"-?\d+(?:\.\d+)?[eE][+-]?\d+", text)
    simple = re.findall(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])", text)
    return commas + scientific + simple


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize_str(text: str) -> list:
    """A number -> [float rounded to 2 dp]; a 1-char string -> [" c", "c "]; else [lower]."""
    text = text.strip()
    if _is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def _key_subresponses(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    subs = re.split(r"\.\s(?=[A-Z])|\n", response)
    keys = []
    for i, sub in enumerate(subs):
        indicators = _KEY_INDICATORS + (("=",) if i == len(subs) - 1 else ())
        shortest = None
        for ind in indicators:
            if ind in sub:
                tail = sub.split(ind)[-1].strip()
                if shortest is None or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL:
            keys.append(shortest)
    return keys or [response]


def parse_open_response(response: str) -> list:
    """Candidate answers (normalised strings and numbers) of a free-form reply; [] if empty."""
    if not isinstance(response, str) or not response:
        return []
    keys = _key_subresponses(response)
    preds = list(keys)
    for k in keys:
        preds += extract_numbers(k)
    out = []
    for p in preds:
        for v in normalize_str(p):
            if v not in out:
                out.append(v)
    return out


def eval_open(gold, preds: Sequence) -> bool:
    """MMMU's rule: a gold string inside a predicted string, or a gold number equal to one."""
    golds = []
    for g in gold if isinstance(gold, list) else [gold]:
        golds += normalize_str(str(g))
    for p in preds:
        if isinstance(p, str):
            if any(isinstance(g, str) and g in p for g in golds):
                return True
        elif p in golds:
            return True
    return False
