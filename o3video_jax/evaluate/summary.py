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

Each benchmark's records and metrics are in its module under `evaluate/bench/` (`records`,
`failed`, `summarize`, `columns` of its `spec.Benchmark`); this module dispatches on the name
through `registry` and adds what every summary has (`n_bad`, `bad`, `n_failed`, `failed`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from o3video_jax.evaluate import registry
from o3video_jax.evaluate.bench.tvg import record as tvg_record
from o3video_jax.evaluate.bench.vstar import WHAT_KEYS, WHAT_NOTE
from o3video_jax.evaluate.bench.vstar import record as vstar_record

__all__ = [
    "CATEGORIES",
    "WHAT_KEYS",
    "WHAT_NOTE",
    "failed_record",
    "summarize",
    "tvg_record",
    "vstar_record",
]

# The accuracy breakdown fields of the repository's multiple-choice benchmarks.
CATEGORIES = {
    name: registry.get(name).mcq.categories
    for name in registry.BUILTIN_NAMES
    if registry.get(name).mcq is not None
}


def failed_record(benchmark: str, item: Mapping, reason: str, detail: str) -> dict:
    """An item that could not be run (e.g. over the budgets), scored as a failure inside n."""
    return registry.get(benchmark).failed(item, reason, detail)


def summarize(benchmark: str, records: Sequence[Mapping], judge: Callable | None = None) -> dict:
    """The benchmark's metrics over the ok records, plus `n_bad` and `bad` (key, reason).

    vstar: `eval.vstar.metrics` (judge scores stored as `vqa_score` are used as written);
    videomme / worldsense / videommmu: accuracy overall and per category (VideoMMMU counts
    open questions by MMMU's open-answer rule); tvg: `eval.grounding.metrics`.
    """
    bench = registry.get(benchmark)
    ok = [r for r in records if r.get("status", "ok") in ("ok", "failed")]
    bad = [r for r in records if r.get("status") == "bad"]
    failed = [r for r in ok if r.get("status") == "failed"]
    summary: dict[str, Any] = bench.summarize(ok, judge) if ok else {"n": 0}
    summary["n_bad"] = len(bad)
    summary["bad"] = [{"key": r["key"], "id": r.get("id"), "reason": r["reason"]} for r in bad]
    summary["n_failed"] = len(failed)
    summary["failed"] = [
        {"key": r["key"], "id": r.get("id"), "reason": r["reason"]} for r in failed
    ]
    return summary


def mean(xs) -> float:
    return float(np.mean(xs)) if len(xs) else 0.0
