"""Many plain decimal numbers to float64 at once, with exactly `float`'s values.

`scan.parse_batch` collects the coordinates of a whole batch as text and converts them here
in a few numpy passes instead of one `float` call per number. A number is a maximal run of
[-.0-9] characters of the form `-?digits` with at most one '.'; with m the integer of all
its digits (at most 15, so m < 2**53) and k <= 22 digits after the point, float(s) is
m / 10**k: both operands are exact doubles and IEEE division rounds correctly, which is
the correctly rounded value `float` returns (Clinger's fast path). Longer numbers go
through `float` itself. A run without digits (`MISSING`) reads as nan; `decimal_text`
writes any float (or None) so that it reads back exactly.
"""

from __future__ import annotations

import decimal

import numpy as np

MISSING = "-."  # a run without digits: nan (what parse's None becomes)
_POW10 = 10.0 ** np.arange(23)  # exact doubles


def decimal_text(x: float | None) -> str:
    """A plain decimal that parses back to exactly x (MISSING for None, nan and inf)."""
    if x is None or x - x != 0:
        return MISSING
    text = repr(x)  # round-trips; fixed-point unless it has an exponent
    return format(decimal.Decimal(x), "f") if "e" in text else text


def parse_decimals(pieces: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(float64[R] values, int64[R] index of the piece each comes from) of the R numbers in
    ASCII `pieces` (which hold no '|')."""
    text = "|".join(pieces)
    buf = np.frombuffer(text.encode("ascii"), np.uint8)
    code = buf - np.uint8(ord("-"))  # '-' 0, '.' 1, '/' 2, '0'..'9' 3..12, others wrap
    value = code - np.uint8(3)  # digits 0..9, others >= 10
    digit = value < 10
    point = code == 1
    inside = np.concatenate([[False], digit | point | (code == 0), [False]]).view(np.int8)
    edges = np.diff(inside)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    before = np.zeros(len(buf) + 1, np.int64)  # before[x]: digits in text[:x]
    np.cumsum(digit, out=before[1:])
    count = before[ends] - before[starts]
    # Digits after the point: the first '.' at or after the start, if inside the number.
    points = np.append(np.flatnonzero(point), len(buf))
    dot = points[np.searchsorted(points, starts)]
    fraction = np.where(dot < ends, before[ends] - before[np.minimum(dot, len(buf))], 0)
    # m: each digit times 10 ** (digits after it in its number); digits come number by number.
    number = np.repeat(np.arange(len(starts)), count)
    after = np.minimum(np.repeat(before[ends], count) - np.arange(1, len(number) + 1), 22)
    weights = value[digit] * _POW10[after]
    mantissa = np.bincount(number, weights, minlength=len(starts))
    values = mantissa / _POW10[np.minimum(fraction, 22)]
    values = np.where(code[starts] == 0, -values, values)
    values[count == 0] = np.nan
    for q in np.flatnonzero((count > 15) | (fraction > 22)):
        values[q] = float(text[starts[q] : ends[q]])
    bars = np.flatnonzero(code == ord("|") - ord("-"))
    return values, np.searchsorted(bars, starts)
