"""What the multiple-choice benchmarks share: the native-video input, voting, records, summary.

`benchmark(...)` builds a `spec.Benchmark` from a benchmark's reader, prompt and
`spec.MultipleChoice`; VideoMME, WorldSense and VideoMMMU are such records.

Records of a chunk (`records`): each item's N completions are voted on (`eval.tts.vote`,
`eval.vote` majority | confidence). With confidence voting the paths' crops of the whole chunk
are collected in a first pass, rated by the relevance scorer in one batched call, and the
votes are replayed with those ratings. An item whose `question_type` is not
"multiple-choice" (VideoMMMU's open questions) is scored by MMMU's open-answer rule instead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from o3video_jax.eval import letter_parsers, mmmu, tts
from o3video_jax.evaluate import media as media_lib
from o3video_jax.evaluate import records as records_lib
from o3video_jax.evaluate.prompts import Prompt
from o3video_jax.evaluate.spec import BatchScorer, Benchmark, MultipleChoice, Prepared

__all__ = [
    "benchmark",
    "letter_parser",
    "native_video",
    "record",
    "records",
    "report_text",
    "second_per_grid",
]


# ---- the input -----------------------------------------------------------------------------
def second_per_grid(ev) -> float | None:
    """None: 2 / sample fps ("sampled"); 1.0: what upstream's vLLM used ("upstream": frames
    handed over without fps, so the processor's default fps 2.0 set 1.0 s per grid)."""
    mode = ev.get("second_per_grid", "upstream")
    if mode not in ("upstream", "sampled"):
        raise ValueError(f"eval.second_per_grid must be 'upstream' or 'sampled', got {mode!r}")
    return 1.0 if mode == "upstream" else None


def native_video(item: Mapping, ev) -> media_lib.Media:
    """One native video as qwen_vl_utils reads it, at the video budgets of `ev`."""
    return media_lib.native_video(
        item["video"],
        max_frames=ev.max_frames,
        min_pixels=ev.video_min_pixels,
        max_pixels=ev.video_max_pixels,
        second_per_grid=second_per_grid(ev),
    )


# ---- voting --------------------------------------------------------------------------------
class _Collect:
    """A per-path scorer for `tts.vote`: records the crops (first pass) or replays replies."""

    def __init__(self, replies: Sequence[Any] | None = None):
        self.calls: list[list[np.ndarray]] = []
        self.replies = replies

    def __call__(self, crops, question):
        self.calls.append(crops)
        return 0 if self.replies is None else self.replies[len(self.calls) - 1]


def letter_parser(mc: MultipleChoice, item: Mapping, letters: str, ev):
    """The non-think letter parser: upstream's per-benchmark substring search ("upstream",
    default) or `mcq.extract_letter` ("ours": word-bounded, no letter inside a word; also
    what a benchmark without an upstream parser uses)."""
    mode = ev.get("letter_parser", "upstream")
    if mode not in letter_parsers.LETTER_PARSERS:
        raise ValueError(f"eval.letter_parser must be one of {letter_parsers.LETTER_PARSERS}")
    if mode == "ours" or mc.upstream_parser is None:
        return None
    options = item.get(mc.options_field) or ()
    return functools.partial(
        letter_parsers.upstream_letter,
        benchmark=mc.upstream_parser,
        options=list(options),
        letters=letters,
    )


def record(mc: MultipleChoice, item: Mapping, prompt: str, completions: Sequence[str],
           vote: Any | None, relevance: Sequence[Any] = ()) -> dict:  # fmt: skip
    """One multiple-choice (or VideoMMMU open) item: all N completions and the vote."""
    rec = records_lib.base(item)
    rec["prompt"] = prompt
    rec["outputs"] = list(completions)
    rec.update(mc.record_fields(item))
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


def records(mc: MultipleChoice, preps: Sequence[Prepared], outputs, ev, think: bool,
            scorer: BatchScorer | None, judge=None) -> list[dict]:  # fmt: skip
    """Records of one chunk's prepared items (one prompt each, its N completions)."""
    del judge
    votes, firsts = [], []
    for p, outs in zip(preps, outputs, strict=True):
        completions = outs[0]
        if p.item.get("question_type", "multiple-choice") != "multiple-choice":
            votes.append(None)
            firsts.append(None)
            continue
        col = _Collect()
        kw = dict(mode=ev.vote, letters=mc.letters, think_mode=think, frames=p.media.frames,
                  fps=p.media.sample_fps, question=mc.scorer_question(p.item),
                  parse_letter=letter_parser(mc, p.item, mc.letters, ev))  # fmt: skip
        tts.vote(completions, scorer=col, **kw)
        votes.append((completions, kw))
        firsts.append(col.calls)
    entries = [
        (crops, v[1]["question"])
        for v, calls in zip(votes, firsts, strict=True)
        if v is not None
        for crops in calls
    ]
    replies = scorer(entries) if entries and scorer is not None else []
    recs, pos = [], 0
    for p, outs, v, calls in zip(preps, outputs, votes, firsts, strict=True):
        if v is None:
            recs.append(record(mc, p.item, p.texts[0], outs[0], None))
            continue
        mine = list(replies[pos : pos + len(calls)])
        pos += len(calls)
        result = tts.vote(v[0], scorer=_Collect(mine), **v[1])
        recs.append(record(mc, p.item, p.texts[0], v[0], result, mine))
    return recs


def failed(mc: MultipleChoice, item: Mapping, reason: str, detail: str) -> dict:
    rec = records_lib.failed_base(item, reason, detail)
    rec["pred"], rec["correct"] = None, False
    rec.update(mc.failed_fields(item))
    return rec


def report_text(rec: Mapping) -> str:
    """The completion drawn in the report: the first path that voted for the prediction."""
    letters = rec.get("path_letters") or []
    pick = letters.index(rec["pred"]) if rec.get("pred") in letters else 0
    return rec["outputs"][pick]


def benchmark(
    name: str,
    *,
    read: Callable[[str], list],
    check: Callable[[Mapping, str, dict], dict],
    id_field: str,
    prompt: Callable[[Mapping, bool], Prompt],
    mc: MultipleChoice,
    media: Callable[[Mapping, Any], media_lib.Media] = native_video,
) -> Benchmark:
    """A multiple-choice benchmark: one prompt per item (`prompt(item, think)`), voted records,
    accuracy overall and by `mc.categories`."""
    return Benchmark(
        name=name,
        read=read,
        check=check,
        id_field=id_field,
        media=media,
        prompts=lambda item, m, think: [prompt(item, think)],
        records=functools.partial(records, mc),
        failed=functools.partial(failed, mc),
        summarize=lambda ok, judge: records_lib.accuracy_by(ok, mc.categories),
        columns=lambda summary: ["n", "correct", "acc"],
        report_text=report_text,
        mcq=mc,
    )
