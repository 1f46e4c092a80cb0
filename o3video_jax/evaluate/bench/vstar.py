"""V-STaR: What / When / Where with five model calls per item (docs/open_o3_video.md §5).

Reader: V_STaR_test.json (a JSON list); videos `<vid>.mp4` anywhere below `eval.media_root`.
Input: 16 frames at 1 fps as separate images (`media.vstar_frames`); prompts
`prompts.vstar_prompts` (What, chain-1 When and Where, chain-2 Where and When). Records carry
the upstream worker's fields (`test_vstar_multi_images.py`); the summary is
`eval.vstar.metrics`. "What" is scored by the judge configured with `eval.judge_url`, or by
exact match of normalised strings, which the summary then names (`_exact_match` suffixes).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

from o3video_jax.eval import vstar
from o3video_jax.eval.vstar_parse import answer_content, parse_spatial_answer, parse_temporal_answer
from o3video_jax.evaluate import media as media_lib
from o3video_jax.evaluate import prompts, readers
from o3video_jax.evaluate import records as records_lib
from o3video_jax.evaluate.spec import Benchmark

__all__ = ["BENCHMARK", "WHAT_KEYS", "WHAT_NOTE", "record"]

_FIELDS = (
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


def check(row: Mapping, media_root: str, cache: dict) -> dict:
    readers.need(row, _FIELDS)
    for f in ("fps", "frame_count", "width", "height"):
        readers.number(row, f, positive=True)
    readers.span(row["timestamps"], "timestamps")
    boxes = row["bboxes"]
    if not isinstance(boxes, list) or not boxes:
        raise readers.ItemError("record", "bboxes must be a non-empty list")
    for b in boxes:
        if not isinstance(b, Mapping) or not all(
            k in b for k in ("timestamp", "xmin", "ymin", "xmax", "ymax")
        ):
            raise readers.ItemError("record", f"bbox {b!r} lacks timestamp/xmin/ymin/xmax/ymax")
    if "index" not in cache:
        cache["index"] = _video_index(media_root)
    path = cache["index"].get(f"{row['vid']}.mp4")
    if path is None:
        raise readers.ItemError("missing_video", f"{row['vid']}.mp4 not found under {media_root!r}")
    return {**row, "video": path}


def load_media(item: Mapping, ev) -> media_lib.Media:
    return media_lib.vstar_frames(
        item["video"],
        max_frames=ev.max_frames,
        min_pixels=ev.image_min_pixels,
        max_pixels=ev.image_max_pixels,
    )


def record(item: Mapping, outputs: Mapping[str, str], prompt_texts: Mapping[str, str],
           frame_times: Sequence[float], size: tuple[int, int], think: bool,
           judge: Callable | None = None) -> dict:  # fmt: skip
    """The upstream worker's fields (`test_vstar_multi_images.py`) for one item's 5 outputs."""
    rec = records_lib.base(item)
    vqa = outputs["vqa"]
    rec["answer_vqa_raw_output"] = vqa
    rec["answer_vqa"] = answer_content(vqa) if think and "<answer>" in vqa else vqa
    for call, field in (("temporal", ""), ("temporal_2", "_2")):
        rec[f"answer_temporal_pre{field}"] = outputs[call]
        rec[f"answer_temporal{field}"] = parse_temporal_answer(outputs[call])
    for call, field in (("spatial", ""), ("spatial_2", "_2")):
        rec[f"answer_spatial_pre{field}"] = outputs[call]
        rec[f"answer_spatial{field}"] = parse_spatial_answer(outputs[call])
    rec["input_shape"] = list(size)
    rec["frame_times"] = [float(t) for t in frame_times]
    rec["prompts"] = dict(prompt_texts)
    if judge is not None and str(rec["answer_vqa"]).strip():
        rec["vqa_score"] = int(judge(rec["question"], rec["answer"], rec["answer_vqa"]))
    return rec


def records(preps, outputs, ev, think, scorer, judge) -> list[dict]:
    del ev, scorer
    recs = []
    for p, outs in zip(preps, outputs, strict=True):
        by_call = {pr.call: o[0] for pr, o in zip(p.prompts, outs, strict=True)}
        texts = {pr.call: t for pr, t in zip(p.prompts, p.texts, strict=True)}
        recs.append(record(p.item, by_call, texts, p.media.times, p.media.size, think, judge))
    return recs


def failed(item: Mapping, reason: str, detail: str) -> dict:
    rec = records_lib.failed_base(item, reason, detail)
    rec.update(answer_vqa="", answer_temporal=[], answer_temporal_2=[],
               answer_spatial=None, answer_spatial_2=None)  # fmt: skip
    return rec


WHAT_NOTE = (
    "V-STaR What: {exact} of {n} answers scored by exact match of normalised strings, not by "
    "the paper's Qwen2.5-72B-Instruct judge (score >= 2 correct); the figures that depend on it "
    "end in _exact_match. For judge scores serve the judge with an OpenAI-compatible API (e.g. "
    "`vllm serve Qwen/Qwen2.5-72B-Instruct --tensor-parallel-size 8`) and rerun the same command "
    "with --config.eval.judge_url=http://HOST:8000/v1 "
    "--config.eval.judge_model=Qwen/Qwen2.5-72B-Instruct (finished items are judged from "
    "items.jsonl)."
)
# V-STaR figures that depend on the What score.
WHAT_KEYS = ("acc", "avg_score", "avg_valid_score", "AM1", "AM2", "mAM", "LGM1", "LGM2", "mLGM")


def _exact_named(summary: Mapping) -> dict:
    def rename(d: Mapping) -> dict:
        out = {}
        for k, v in d.items():
            if k.startswith("by_") and isinstance(v, Mapping):
                out[k] = {g: rename(m) for g, m in v.items()}
            elif k in WHAT_KEYS or k.startswith("vqa&"):
                out[k + "_exact_match"] = v
            else:
                out[k] = v
        return out

    return rename(summary)


def summarize(ok: Sequence[Mapping], judge) -> dict:
    """`eval.vstar.metrics` (judge scores stored as `vqa_score` are used as written)."""
    scored = [vstar.score_item(r, judge) for r in ok]
    summary = vstar.metrics(ok, scored=scored)
    exact = sum(s.get("score_source") == "exact" for s in scored)
    judged = any(s.get("score_source") == "judge" for s in scored) or (
        judge is not None and not exact
    )
    if exact or not judged:
        summary = _exact_named(summary)
        summary["what_scoring"] = "mixed" if judged else "exact_match"
        summary["what_note"] = WHAT_NOTE.format(exact=exact, n=len(ok))
    else:
        summary["what_scoring"] = "judge"
    return summary


def columns(summary: Mapping) -> list[str]:
    if summary.get("what_scoring") in ("exact_match", "mixed"):
        return ["n", "acc_exact_match", "tiou_1", "tiou_2", "viou_1", "viou_2",
                "mAM_exact_match", "mLGM_exact_match"]  # fmt: skip
    return ["n", "acc", "tiou_1", "tiou_2", "viou_1", "viou_2", "mAM", "mLGM"]


BENCHMARK = Benchmark(
    name="vstar",
    read=readers.read_json_list,
    check=check,
    id_field="vid",
    media=load_media,
    prompts=lambda item, m, think: prompts.vstar_prompts(item, m.times, think),
    records=records,
    failed=failed,
    summarize=summarize,
    columns=columns,
    report_text=lambda rec: rec["answer_vqa_raw_output"],
    judged=True,
)
