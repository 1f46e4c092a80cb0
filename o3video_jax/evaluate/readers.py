"""What every benchmark reader shares: bad items, field checks, file formats, the reading loop.

A benchmark's own reader is two functions in its file under `evaluate/bench/` (see
`spec.Benchmark`): `read(path) -> rows` (usually one of the file formats below) and
`check(row, media_root, cache) -> item`, which raises `ItemError` for a malformed field or a
missing video. `read_items` runs them: every row becomes an item (with `key`, its position in
the file and the resume key, and `id`) or a `BadItem`; nothing but an unreadable file raises.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from o3video_jax.evaluate.spec import Benchmark

__all__ = [
    "BadItem",
    "ItemError",
    "Loaded",
    "existing",
    "need",
    "number",
    "options",
    "pick",
    "read_items",
    "read_json_list",
    "read_parquet",
    "read_tsv",
    "span",
]


@dataclasses.dataclass(frozen=True)
class BadItem:
    """An item that cannot be evaluated: reason in {"record", "missing_video", "decode"}."""

    key: str
    id: str
    reason: str
    detail: str


@dataclasses.dataclass(frozen=True)
class Loaded:
    items: list[dict[str, Any]]
    bad: list[BadItem]


class ItemError(Exception):
    """Raised by a benchmark's `check`: the row becomes a `BadItem` with this reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


# ---- field checks --------------------------------------------------------------------------
def need(row: Mapping, fields: tuple[str, ...]) -> None:
    missing = [f for f in fields if f not in row or row[f] is None]
    if missing:
        raise ItemError("record", f"missing field(s) {missing}")


def number(row: Mapping, field: str, positive: bool = False) -> float:
    try:
        v = float(row[field])
    except (TypeError, ValueError):
        raise ItemError("record", f"{field}={row.get(field)!r} is not a number") from None
    if not math.isfinite(v) or (positive and v <= 0):
        raise ItemError(
            "record", f"{field}={v!r} must be a finite{' positive' if positive else ''} number"
        )
    return v


def span(value, field: str) -> list[float]:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ItemError("record", f"{field}={value!r} is not a [start, end] list") from None
    try:
        s, e = (float(x) for x in value)
    except (TypeError, ValueError):
        raise ItemError("record", f"{field}={value!r} is not a [start, end] pair") from None
    if not (math.isfinite(s) and math.isfinite(e) and 0 <= s <= e):
        raise ItemError("record", f"{field}={[s, e]} must satisfy 0 <= start <= end")
    return [s, e]


def existing(*candidates: str) -> str:
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise ItemError("missing_video", f"no video at {candidates[0]!r}")


def options(value, field: str = "options") -> list[str]:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ItemError("record", f"{field} {value!r} is not a list literal") from None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value:
        raise ItemError("record", f"{field} must be a non-empty list, got {value!r}")
    return [str(v) for v in value]


def pick(row: Mapping, names: tuple[str, ...]):
    """The first of `names` present (not None) in the row."""
    for n in names:
        if row.get(n) is not None:
            return row[n]
    raise ItemError("record", f"missing field: one of {list(names)}")


# ---- file formats --------------------------------------------------------------------------
def read_json_list(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of items, got {type(data).__name__}")
    return data


def read_parquet(path: str) -> list[dict]:
    import pyarrow.parquet as pq  # optional dependency (setup.py extra "eval")

    return pq.read_table(path).to_pylist()


def read_tsv(path: str) -> list[dict]:
    csv.field_size_limit(1 << 30)
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


# ---- the reading loop ----------------------------------------------------------------------
def read_items(bench: Benchmark, data: str, media_root: str, limit: int = 0) -> Loaded:
    """Reads and validates the first `limit` (0 = all) rows of `bench`'s file `data`.

    Raises FileNotFoundError / ValueError for an unreadable file (nothing to evaluate); rows
    with bad fields or missing videos are returned in `Loaded.bad`, never raised.
    """
    if not data or not os.path.exists(data):
        raise FileNotFoundError(f"{bench.name}: benchmark file {data!r} does not exist (eval.data)")
    rows = bench.read(data)
    if limit and limit > 0:
        rows = rows[:limit]
    items, bad, cache = [], [], {}
    for i, row in enumerate(rows):
        key = str(i)
        rid = str(row.get(bench.id_field, key)) if isinstance(row, Mapping) else key
        if not isinstance(row, Mapping):
            bad.append(BadItem(key, rid, "record", f"item is a {type(row).__name__}, not a dict"))
            continue
        try:
            item = bench.check(row, media_root, cache)
        except ItemError as e:
            bad.append(BadItem(key, rid, e.reason, e.detail))
            continue
        items.append({**item, "key": key, "id": rid})
    return Loaded(items, bad)
