"""Per-item result records (the JSONL lines) and the benchmark summaries computed from them.

A record is everything the summary needs, so `summarize(name, read_jsonl(path))` recomputes
the printed table from the file alone. Field names follow the reference scripts: V-STaR
records carry the item's fields plus `answer_vqa`, `answer_temporal(_pre)(_2)`,
`answer_spatial(_pre)(_2)` as `eval.vstar.metrics` reads them; multiple-choice records carry
`pred` (the voted letter) and the benchmark's category fields; TVG records `span`/`pred_span`.
Bad items are records with `status: "bad"` (reason, detail: the item or its video cannot be
read): counted, listed, not scored. Failed items are records with `status: "failed"` (an item
over the evaluation's token/patch budgets): scored as wrong / zero inside n (upstream scores
every item it can read) and listed under `failed`.

V-STaR "What" scored without a judge is exact match of normalised strings, not the paper's
Qwen2.5-72B judge: the summary then says so (`what_scoring`, `what_note`) and every figure that
depends on it carries the suffix `_exact_match` (acc_exact_match, mAM_exact_match, ...), in the
JSON and the table, so it cannot pass for a paper number.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from o3video_jax.eval import grounding, mcq, mmmu, vstar
from o3video_jax.eval.vstar_parse import answer_content, parse_spatial_answer, parse_temporal_answer

__all__ = [
    "CATEGORIES",
    "failed_record",
    "mcq_record",
    "summarize",
    "tvg_record",
    "vstar_record",
]

CATEGORIES = {
    "videomme": ("duration", "domain", "sub_category", "task_type"),
    "worldsense": ("duration", "domain", "sub_category", "task_domain", "task_type"),
    "videommmu": ("category", "subdomain", "question_type"),
}
_DROP = ("video", "image_bytes")  # not results; paths differ between machines


def _base(item: Mapping) -> dict:
    return {k: v for k, v in item.items() if k not in _DROP} | {"status": "ok"}


def vstar_record(item: Mapping, outputs: Mapping[str, str], prompts: Mapping[str, str],
                 frame_times: Sequence[float], size: tuple[int, int], think: bool,
                 judge: Callable | None = None) -> dict:  # fmt: skip
    """The upstream worker's fields (`test_vstar_multi_images.py`) for one item's 5 outputs."""
    rec = _base(item)
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
    rec["prompts"] = dict(prompts)
    if judge is not None and str(rec["answer_vqa"]).strip():
        rec["vqa_score"] = int(judge(rec["question"], rec["answer"], rec["answer_vqa"]))
    return rec


def mcq_record(item: Mapping, benchmark: str, prompt: str, completions: Sequence[str],
               vote: Any | None, relevance: Sequence[Any] = ()) -> dict:  # fmt: skip
    """One multiple-choice (or VideoMMMU open) item: all N completions and the vote."""
    rec = _base(item)
    rec["prompt"] = prompt
    rec["outputs"] = list(completions)
    if benchmark == "worldsense":
        rec["options"] = list(item["candidates"])
    if benchmark == "videommmu":
        rec["subdomain"] = "_".join(str(item["id"]).split("_")[1:-1])
    if vote is None:  # VideoMMMU open question: one path, MMMU's open-answer parser
        rec["parsed_pred"] = mmmu.parse_open_response(completions[0])
        rec["pred"] = None
        rec["correct"] = mmmu.eval_open(item["answer"], rec["parsed_pred"])
        return rec
    rec["pred"] = vote.pred
    rec["path_letters"] = [p.letter for p in vote.paths]
    rec["path_weights"] = [p.weight for p in vote.paths]
    rec["letter_weights"] = dict(vote.letter_weights)
    if relevance:
        rec["relevance_replies"] = list(relevance)
    rec["correct"] = str(vote.pred).strip().upper() == str(item["answer"]).strip().upper()
    return rec


def tvg_record(item: Mapping, prompt: str, output: str) -> dict:
    rec = _base(item)
    rec["prompt"] = prompt
    rec["output"] = output
    rec["pred_span"] = parse_temporal_answer(output)
    rec["iou"] = grounding.temporal_iou(item["span"], rec["pred_span"])
    return rec


def failed_record(benchmark: str, item: Mapping, reason: str, detail: str) -> dict:
    """An item that could not be run (e.g. over the budgets), scored as a failure inside n."""
    rec = _base(item) | {"status": "failed", "reason": reason, "detail": detail}
    if benchmark == "vstar":
        rec.update(answer_vqa="", answer_temporal=[], answer_temporal_2=[],
                   answer_spatial=None, answer_spatial_2=None)  # fmt: skip
    elif benchmark == "tvg":
        rec["pred_span"], rec["iou"] = [], 0.0
    else:
        rec["pred"], rec["correct"] = None, False
        if benchmark == "videommmu":
            rec["subdomain"] = "_".join(str(item["id"]).split("_")[1:-1])
    return rec


def _acc_by(records: Sequence[Mapping], fields: Sequence[str]) -> dict:
    def acc(rs):
        c = sum(bool(r["correct"]) for r in rs)
        return {"n": len(rs), "correct": c, "acc": c / len(rs)}

    out = acc(records)
    for f in fields:
        if not any(f in r for r in records):
            continue
        groups: dict[str, list] = {}
        for r in records:
            groups.setdefault(str(r.get(f, "unknown")), []).append(r)
        out[f"by_{f}"] = {k: acc(v) for k, v in sorted(groups.items())}
    return out


def summarize(benchmark: str, records: Sequence[Mapping], judge: Callable | None = None) -> dict:
    """The benchmark's metrics over the ok records, plus `n_bad` and `bad` (key, reason).

    vstar: `eval.vstar.metrics` (judge scores stored as `vqa_score` are used as written);
    videomme / worldsense / videommmu: accuracy overall and per category (VideoMMMU counts
    open questions by MMMU's open-answer rule); tvg: `eval.grounding.metrics`.
    """
    ok = [r for r in records if r.get("status", "ok") in ("ok", "failed")]
    bad = [r for r in records if r.get("status") == "bad"]
    failed = [r for r in ok if r.get("status") == "failed"]
    if not ok:
        summary: dict[str, Any] = {"n": 0}
    elif benchmark == "vstar":
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
    elif benchmark in CATEGORIES:
        summary = _acc_by(ok, CATEGORIES[benchmark])
    elif benchmark == "tvg":
        summary = grounding.metrics([r["span"] for r in ok], [r["pred_span"] for r in ok])
    else:
        raise ValueError(f"unknown benchmark {benchmark!r}")
    summary["n_bad"] = len(bad)
    summary["bad"] = [{"key": r["key"], "id": r.get("id"), "reason": r["reason"]} for r in bad]
    summary["n_failed"] = len(failed)
    summary["failed"] = [
        {"key": r["key"], "id": r.get("id"), "reason": r["reason"]} for r in failed
    ]
    return summary


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


def table_columns(benchmark: str) -> list[str] | None:
    """The markdown table's columns (None: every scalar of the overall row)."""
    if benchmark == "vstar":
        return ["n", "acc", "tiou_1", "tiou_2", "viou_1", "viou_2", "mAM", "mLGM"]
    if benchmark == "vstar_exact_match":
        return ["n", "acc_exact_match", "tiou_1", "tiou_2", "viou_1", "viou_2",
                "mAM_exact_match", "mLGM_exact_match"]  # fmt: skip
    if benchmark == "tvg":
        return ["n", "miou", "r1@0.3", "r1@0.5", "r1@0.7"]
    return ["n", "correct", "acc"]


def mcq_letters(benchmark: str, item: Mapping) -> str:
    return mcq.LETTERS_A_TO_J if benchmark == "videommmu" else mcq.LETTERS_ABCD


def mean(xs) -> float:
    return float(np.mean(xs)) if len(xs) else 0.0
