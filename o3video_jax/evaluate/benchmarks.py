"""Benchmark readers: each benchmark's released file format -> validated items + bad items.

| name       | file (`eval.data`)                                   | video (`eval.media_root`)         |
|------------|------------------------------------------------------|-----------------------------------|
| vstar      | V_STaR_test.json (a JSON list)                       | `<vid>.mp4` anywhere below root   |
| videomme   | videomme/test-00000-of-00001.parquet                 | data/<videoID>.mp4 (.MP4, .mkv)   |
| worldsense | WorldSense.tsv                                       | <video>.mp4                       |
| videommmu  | a directory of {Perception,Comprehension,Adaptation}/test-00000-of-00001.parquet, or one such parquet | <Art|Science|...>/<id>.mp4 |
| tvg        | a JSON list of {video, query, span: [s, e], [duration]} (TVGBench style; aliases vid/sentence/timestamps), or Charades-STA's native `vid start end##sentence` lines (charades_sta_test.txt) | <video> (".mp4" added if it has no extension) |

Every item is a dict with `key` (its position in the file, the resume key), `video` (resolved
path) and the benchmark's own fields. An item whose fields are malformed or whose video is
missing is not fatal: it becomes a `BadItem` (index, id, reason, detail) that the runner
counts and lists.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["BENCHMARKS", "BadItem", "Loaded", "read_benchmark", "videommmu_subject_dir"]

BENCHMARKS = ("vstar", "videomme", "worldsense", "videommmu", "tvg")
VIDEOMMMU_CATEGORIES = ("Perception", "Comprehension", "Adaptation")


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


class _ItemError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _need(row: Mapping, fields: tuple[str, ...]) -> None:
    missing = [f for f in fields if f not in row or row[f] is None]
    if missing:
        raise _ItemError("record", f"missing field(s) {missing}")


def _number(row: Mapping, field: str, positive: bool = False) -> float:
    try:
        v = float(row[field])
    except (TypeError, ValueError):
        raise _ItemError("record", f"{field}={row.get(field)!r} is not a number") from None
    if not math.isfinite(v) or (positive and v <= 0):
        raise _ItemError(
            "record", f"{field}={v!r} must be a finite{' positive' if positive else ''} number"
        )
    return v


def _span(value, field: str) -> list[float]:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise _ItemError("record", f"{field}={value!r} is not a [start, end] list") from None
    try:
        s, e = (float(x) for x in value)
    except (TypeError, ValueError):
        raise _ItemError("record", f"{field}={value!r} is not a [start, end] pair") from None
    if not (math.isfinite(s) and math.isfinite(e) and 0 <= s <= e):
        raise _ItemError("record", f"{field}={[s, e]} must satisfy 0 <= start <= end")
    return [s, e]


def _existing(*candidates: str) -> str:
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise _ItemError("missing_video", f"no video at {candidates[0]!r}")


# ---- V-STaR --------------------------------------------------------------------------------
_VSTAR_FIELDS = (
    "vid", "domain", "fps", "frame_count", "width", "height", "question", "answer",
    "temporal_question", "spatial_question", "spatial_question_2", "timestamps", "bboxes",
)  # fmt: skip


def _video_index(root: str) -> dict[str, str]:
    """`<name>` -> path of every file below root (first one in walk order wins, as upstream's
    os.walk search)."""
    index: dict[str, str] = {}
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        for f in sorted(files):
            index.setdefault(f, os.path.join(dirpath, f))
    return index


def _vstar(row: Mapping, media_root: str, cache: dict) -> dict:
    _need(row, _VSTAR_FIELDS)
    for f in ("fps", "frame_count", "width", "height"):
        _number(row, f, positive=True)
    _span(row["timestamps"], "timestamps")
    boxes = row["bboxes"]
    if not isinstance(boxes, list) or not boxes:
        raise _ItemError("record", "bboxes must be a non-empty list")
    for b in boxes:
        if not isinstance(b, Mapping) or not all(
            k in b for k in ("timestamp", "xmin", "ymin", "xmax", "ymax")
        ):
            raise _ItemError("record", f"bbox {b!r} lacks timestamp/xmin/ymin/xmax/ymax")
    if "index" not in cache:
        cache["index"] = _video_index(media_root)
    path = cache["index"].get(f"{row['vid']}.mp4")
    if path is None:
        raise _ItemError("missing_video", f"{row['vid']}.mp4 not found under {media_root!r}")
    return {**row, "video": path}


# ---- VideoMME ------------------------------------------------------------------------------
def _options(value, field: str = "options") -> list[str]:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise _ItemError("record", f"{field} {value!r} is not a list literal") from None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value:
        raise _ItemError("record", f"{field} must be a non-empty list, got {value!r}")
    return [str(v) for v in value]


def _videomme(row: Mapping, media_root: str, cache: dict) -> dict:
    _need(row, ("videoID", "question", "options", "answer"))
    options = _options(row["options"])
    if len(options) > 4:
        raise _ItemError("record", f"{len(options)} options; VideoMME has 4 (A-D)")
    base = os.path.join(media_root, "data", str(row["videoID"]))
    path = _existing(base + ".mp4", base + ".MP4", base + ".mkv")
    return {**row, "options": options, "answer": str(row["answer"]).strip(), "video": path}


# ---- WorldSense ----------------------------------------------------------------------------
def _worldsense(row: Mapping, media_root: str, cache: dict) -> dict:
    _need(row, ("video", "question", "candidates", "answer"))
    candidates = _options(row["candidates"], "candidates")
    path = _existing(os.path.join(media_root, str(row["video"]) + ".mp4"))
    return {**row, "candidates": candidates, "answer": str(row["answer"]).strip(), "video": path}


# ---- VideoMMMU -----------------------------------------------------------------------------
_SUBJECT_DIRS = {
    "Art": ("Art", "Art_Theory", "Design", "Music"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Humanities": ("History", "Literature", "Sociology", "Psychology"),
    "Engineering": (
        "Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics",
        "Energy_and_Power", "Materials", "Mechanical_Engineering",
    ),
    "Medicine": (
        "Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
        "Pharmacy", "Public_Health",
    ),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
}  # fmt: skip


def videommmu_subject_dir(item_id: str) -> str:
    """The video folder of a VideoMMMU id "<split>_<Subject_Name>_<n>" (upstream's table)."""
    subject = "_".join(str(item_id).split("_")[1:-1])
    for folder, subjects in _SUBJECT_DIRS.items():
        if subject in subjects:
            return folder
    raise _ItemError("record", f"id {item_id!r}: subject {subject!r} not recognised")


def _videommmu(row: Mapping, media_root: str, cache: dict) -> dict:
    _need(row, ("id", "question", "options", "answer", "category"))
    # upstream: doc.get("question_type", "None"); anything but "multiple-choice" is open
    qtype = str(row.get("question_type", "None"))
    options = _options(row["options"]) if qtype == "multiple-choice" else list(row["options"] or [])
    if qtype == "multiple-choice" and len(options) > 10:
        raise _ItemError("record", f"{len(options)} options; VideoMMMU letters stop at J")
    folder = videommmu_subject_dir(row["id"])
    path = _existing(os.path.join(media_root, folder, f"{row['id']}.mp4"))
    image = row.get("image")
    image_bytes = image.get("bytes") if isinstance(image, Mapping) else None
    out = {**row, "options": [str(o) for o in options], "question_type": qtype, "video": path}
    out["answer"] = row["answer"] if isinstance(row["answer"], list) else str(row["answer"])
    out.pop("image", None)
    out["image_bytes"] = image_bytes
    return out


# ---- temporal grounding --------------------------------------------------------------------
def _pick(row: Mapping, names: tuple[str, ...]):
    for n in names:
        if row.get(n) is not None:
            return row[n]
    raise _ItemError("record", f"missing field: one of {list(names)}")


def _tvg(row: Mapping, media_root: str, cache: dict) -> dict:
    video = str(_pick(row, ("video", "vid", "video_path")))
    query = str(_pick(row, ("query", "sentence", "question")))
    span = _span(_pick(row, ("span", "timestamps", "timestamp")), "span")
    name = video if os.path.splitext(video)[1] else video + ".mp4"
    path = _existing(os.path.join(media_root, name))
    return {**row, "video": path, "query": query, "span": span}


# ---- file formats --------------------------------------------------------------------------
def _read_json_list(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of items, got {type(data).__name__}")
    return data


def _read_tvg(path: str) -> list:
    """A JSON list, or Charades-STA's native annotation lines `vid start end##sentence` (blank
    lines skipped; a malformed line becomes an item without fields, counted as bad)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        return _read_json_list(path)
    rows: list = []
    for line in text.splitlines():
        if not line.strip():
            continue
        head, sep, sentence = line.partition("##")
        parts = head.split()
        if not sep or len(parts) != 3 or not sentence.strip():
            rows.append({"line": line})
            continue
        vid, start, end = parts
        rows.append({"id": vid, "video": vid, "query": sentence.strip(), "span": [start, end]})
    return rows


def _read_parquet(path: str) -> list[dict]:
    import pyarrow.parquet as pq  # optional dependency (setup.py extra "eval")

    return pq.read_table(path).to_pylist()


def _read_tsv(path: str) -> list[dict]:
    csv.field_size_limit(1 << 30)
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _read_videommmu(path: str) -> list[dict]:
    if os.path.isdir(path):
        rows = []
        for cat in VIDEOMMMU_CATEGORIES:
            p = os.path.join(path, cat, "test-00000-of-00001.parquet")
            if os.path.exists(p):
                rows += [{**r, "category": cat} for r in _read_parquet(p)]
        if not rows:
            raise FileNotFoundError(
                f"{path}: no {'/'.join(VIDEOMMMU_CATEGORIES)}/test-00000-of-00001.parquet"
            )
        return rows
    cat = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return [{"category": cat, **r} for r in _read_parquet(path)]


_READERS: dict[str, tuple[Callable[[str], list], Callable, str]] = {
    "vstar": (_read_json_list, _vstar, "vid"),
    "videomme": (_read_parquet, _videomme, "question_id"),
    "worldsense": (_read_tsv, _worldsense, "index"),
    "videommmu": (_read_videommmu, _videommmu, "id"),
    "tvg": (_read_tvg, _tvg, "id"),
}


def read_benchmark(name: str, data: str, media_root: str, limit: int = 0) -> Loaded:
    """Reads and validates the first `limit` (0 = all) items of benchmark `name`.

    Raises FileNotFoundError / ValueError for an unreadable file (nothing to evaluate); items
    with bad fields or missing videos are returned in `Loaded.bad`, never raised.
    """
    if name not in _READERS:
        raise ValueError(f"unknown benchmark {name!r}; known: {list(BENCHMARKS)}")
    if not data or not os.path.exists(data):
        raise FileNotFoundError(f"{name}: benchmark file {data!r} does not exist (eval.data)")
    read, check, id_field = _READERS[name]
    rows = read(data)
    if limit and limit > 0:
        rows = rows[:limit]
    items, bad, cache = [], [], {}
    for i, row in enumerate(rows):
        key = str(i)
        rid = str(row.get(id_field, key)) if isinstance(row, Mapping) else key
        if not isinstance(row, Mapping):
            bad.append(BadItem(key, rid, "record", f"item is a {type(row).__name__}, not a dict"))
            continue
        try:
            item = check(row, media_root, cache)
        except _ItemError as e:
            bad.append(BadItem(key, rid, e.reason, e.detail))
            continue
        items.append({**item, "key": key, "id": rid})
    return Loaded(items, bad)
