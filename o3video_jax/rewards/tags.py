"""Tag occurrences of a whole batch of completions at once (numpy), for `scan.parse_batch`.

Per completion the parser needs the first `<think>..</think>` and `<answer>..</answer>`
blocks and the ten tag counts of the format reward (parse.TAG_COUNT_NAMES): whole-text
counts of the think/answer tags, and counts of the obj/t/box tags inside the think block.
Twenty `str.find`/`str.count` passes per completion cost more than the rest of parsing, so
ASCII completions are joined into one byte buffer, every '<' is classified by the 8 bytes
that start there, and blocks and counts fall out of `searchsorted` over the sorted tag
positions. Non-ASCII completions (rare) take the `str` methods.

Why this equals the `str` methods: a tag starts with '<' and has no other '<', so two
occurrences of tags never overlap, no occurrence straddles a block boundary (boundaries are
tags) or the separator between completions (NUL, in no tag); `str.count` counts exactly
these non-overlapping occurrences and `str.find` returns the first one at or after its
start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from o3video_jax.rewards.parse import TAG_COUNT_NAMES

TAGS = (
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "<obj>",
    "</obj>",
    "<t>",
    "</t>",
    "<box>",
    "</box>",
)
assert len(TAGS) == len(TAG_COUNT_NAMES)
# Little-endian code and mask of each tag's first 8 bytes ("</answer>" also needs byte 8).
_CODES = [
    (np.uint64(int.from_bytes(t.encode()[:8], "little")), np.uint64((1 << 8 * min(len(t), 8)) - 1))
    for t in TAGS
]


class TagScan(NamedTuple):
    """counts: int32[N, 10] (TAG_COUNT_NAMES; obj/t/box counts are 0 without a think
    block). The rest: per completion, the start and end of the first think (answer)
    block's content, as lists of Python ints; -1 and -1 if there is no such block."""

    counts: np.ndarray
    think_start: list
    think_end: list
    answer_start: list
    answer_end: list


def _block(opens, closes, start, end, width):
    """(content start, content end) of the first `open..close` of each row [start, end),
    -1 where absent: the first opening tag, then the first closing tag after it."""
    last = len(opens) - 1, len(closes) - 1  # the sentinels, past every row
    i = opens[np.minimum(np.searchsorted(opens, start), last[0])]
    j = closes[np.minimum(np.searchsorted(closes, i + width), last[1])]
    found = (i < end) & (j < end)
    return np.where(found, i + width - start, -1), np.where(found, j - start, -1)


def _python(text: str) -> tuple[list[int], tuple[int, int], tuple[int, int]]:
    """One completion with str methods: its counts, think span and answer span."""
    spans = []
    for opening, closing in (("<think>", "</think>"), ("<answer>", "</answer>")):
        i = text.find(opening)
        j = -1 if i < 0 else text.find(closing, i + len(opening))
        spans.append((i + len(opening), j) if j >= 0 else (-1, -1))
    inner = text[spans[0][0] : spans[0][1]] if spans[0][1] >= 0 else ""
    counts = [text.count(t) for t in TAGS[:4]] + [inner.count(t) for t in TAGS[4:]]
    return counts, spans[0], spans[1]


def scan_tags(texts: Sequence[str]) -> TagScan:
    """Tag counts and first think/answer blocks of N completions."""
    try:
        ascii_ = list(map(str.isascii, texts))  # O(1) per str in CPython
    except TypeError:
        bad = next(t for t in texts if type(t) is not str)
        raise TypeError(f"completion must be a str, got {type(bad).__name__}") from None
    n = len(texts)
    everything = all(ascii_)
    lengths = np.array(list(map(len, texts)), np.int64).reshape(n)
    pieces = texts
    if not everything:  # left empty here, scanned with str methods below
        pieces = [t if a else "" for t, a in zip(texts, ascii_, strict=True)]
        lengths *= np.array(ascii_, bool)
    # NUL separates completions (and pads the end for the 9-byte windows below).
    buf = np.frombuffer("\0".join([*pieces, "\0" * 8]).encode("ascii"), np.uint8)
    start = np.cumsum(lengths + 1) - lengths - 1
    end = start + lengths
    lt = np.flatnonzero(buf[:-9] == ord("<"))
    # The 8 bytes at each '<' as one integer (an unaligned strided view; numpy copies).
    words = np.ndarray((len(buf) - 8,), np.uint64, buf, 0, (1,))[lt]
    sentinel = np.array([len(buf)])
    positions = []
    for tag, (code, mask) in zip(TAGS, _CODES, strict=True):
        hit = (words & mask) == code
        if len(tag) > 8:
            hit &= buf[lt + 8] == ord(tag[8])
        positions.append(np.concatenate([lt[hit], sentinel]))
    think = _block(positions[0], positions[1], start, end, len(TAGS[0]))
    answer = _block(positions[2], positions[3], start, end, len(TAGS[2]))
    counts = np.empty((n, len(TAGS)), np.int32)
    for k, p in enumerate(positions[:4]):
        counts[:, k] = np.searchsorted(p, end) - np.searchsorted(p, start)
    lo, hi = start + think[0], start + think[1]
    has_think = think[1] >= 0
    for k, p in enumerate(positions[4:], 4):
        counts[:, k] = np.where(has_think, np.searchsorted(p, hi) - np.searchsorted(p, lo), 0)
    spans = [think[0].tolist(), think[1].tolist(), answer[0].tolist(), answer[1].tolist()]
    if not everything:
        for r, a in enumerate(ascii_):
            if not a:
                counts[r], (spans[0][r], spans[1][r]), (spans[2][r], spans[3][r]) = _python(
                    texts[r]
                )
    return TagScan(counts, *spans)
