"""Temporal video grounding (TVGBench / Charades-STA style): a query -> a [start, end] span.

Reader: a JSON list of {video, query, span: [s, e], [duration]} (aliases vid / video_path,
sentence / question, timestamps / timestamp), or Charades-STA's native `vid start end##sentence`
lines (charades_sta_test.txt); videos <video> in `eval.media_root` (".mp4" added if it has no
extension). Input: the training frame layout (`media.frames_media`); prompt
`prompts.tvg_prompt`; summary `eval.grounding.metrics` (mIoU, R1@0.3/0.5/0.7).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from o3video_jax.eval import grounding
from o3video_jax.eval.vstar_parse import parse_temporal_answer
from o3video_jax.evaluate import media as media_lib
from o3video_jax.evaluate import prompts, readers
from o3video_jax.evaluate import records as records_lib
from o3video_jax.evaluate.spec import Benchmark

__all__ = ["BENCHMARK", "record"]


def check(row: Mapping, media_root: str, cache: dict) -> dict:
    video = str(readers.pick(row, ("video", "vid", "video_path")))
    query = str(readers.pick(row, ("query", "sentence", "question")))
    span = readers.span(readers.pick(row, ("span", "timestamps", "timestamp")), "span")
    name = video if os.path.splitext(video)[1] else video + ".mp4"
    path = readers.existing(os.path.join(media_root, name))
    return {**row, "video": path, "query": query, "span": span}


def read(path: str) -> list:
    """A JSON list, or Charades-STA's native annotation lines `vid start end##sentence` (blank
    lines skipped; a malformed line becomes an item without fields, counted as bad)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        return readers.read_json_list(path)
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


def load_media(item: Mapping, ev) -> media_lib.Media:
    return media_lib.frames_media(
        item["video"],
        max_frames=ev.max_frames,
        min_pixels=ev.video_min_pixels,
        max_pixels=ev.video_max_pixels,
    )


def record(item: Mapping, prompt: str, output: str) -> dict:
    rec = records_lib.base(item)
    rec["prompt"] = prompt
    rec["output"] = output
    rec["pred_span"] = parse_temporal_answer(output)
    rec["iou"] = grounding.temporal_iou(item["span"], rec["pred_span"])
    return rec


def failed(item: Mapping, reason: str, detail: str) -> dict:
    rec = records_lib.failed_base(item, reason, detail)
    rec["pred_span"], rec["iou"] = [], 0.0
    return rec


BENCHMARK = Benchmark(
    name="tvg",
    read=read,
    check=check,
    id_field="id",
    media=load_media,
    prompts=lambda item, m, think: [prompts.tvg_prompt(item, m.times, m.sample_fps, len(m.frames))],
    records=lambda preps, outputs, ev, think, scorer, judge: [
        record(p.item, p.texts[0], o[0][0]) for p, o in zip(preps, outputs, strict=True)
    ],
    failed=failed,
    summarize=lambda ok, judge: grounding.metrics(
        [r["span"] for r in ok], [r["pred_span"] for r in ok]
    ),
    columns=lambda summary: ["n", "miou", "r1@0.3", "r1@0.5", "r1@0.7"],
    report_text=lambda rec: rec["output"],
)
