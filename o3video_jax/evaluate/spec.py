"""`Benchmark`: everything the evaluation driver needs to know about one benchmark, as one record.

The driver (`runner.evaluate`) knows no benchmark by name. It looks the record up in
`registry` and calls its pieces in this order (docs/extending.md walks through a new one):

  read(eval.data) -> rows; check(row, media_root, cache) -> item     (readers.read_items)
  media(item, eval config) -> Media                                  (frames / video items)
  prompts(item, media, think) -> [Prompt]                            (one model call each)
  records(prepared items, their generations, ...) -> [record]        (items.jsonl lines)
  failed(item, reason, detail) -> record                             (an item over the budgets)
  summarize(ok records, judge) -> metrics; columns(metrics) -> table columns
  report_text(record) -> the completion drawn on the frames in report.md

`mcq` (a `MultipleChoice`) marks a multiple-choice benchmark: it enables `eval.samples > 1`
(test-time scaling), majority / confidence voting and the model's relevance ratings, and its
records come from `bench.multiple_choice` (which fills in `records`, `failed`, `summarize`,
`columns` and `report_text`). `judged` builds the V-STaR "What" judge from `eval.judge_url`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from o3video_jax.evaluate.generate import Request
from o3video_jax.evaluate.media import Media
from o3video_jax.evaluate.prompts import Prompt

__all__ = ["BatchScorer", "Benchmark", "MultipleChoice", "Prepared", "RecordsFn"]

# scorer(list of (crops, question)) -> one reply (text or 0/1/2) per entry, batched.
BatchScorer = Callable[[list[tuple[list[np.ndarray], str]]], list[Any]]


@dataclasses.dataclass
class Prepared:
    """One item ready for the sampler: its media, prompts, rendered chats and requests."""

    item: dict
    media: Media
    prompts: list[Prompt]
    texts: list[str]  # the rendered chats, one per prompt
    requests: list[Request]


# records(preps, outputs, ev, think, scorer, judge) -> one record per prepared item, in order;
# outputs[i][j] is the list of G completions of prompt j of item i.
RecordsFn = Callable[
    [Sequence[Prepared], Sequence[Sequence[Sequence[str]]], Any, bool, "BatchScorer | None", Any],
    list[dict],
]


@dataclasses.dataclass(frozen=True)
class MultipleChoice:
    """What a multiple-choice benchmark adds (`bench/multiple_choice.py` uses it).

    categories: item fields the accuracy is broken down by (`by_<field>` in the summary).
    letters: the option letters a vote may return ("ABCD"; VideoMMMU "ABCDEFGHIJ").
    scorer_question: item -> the question text the relevance scorer sees (confidence voting).
    upstream_parser: the benchmark whose upstream non-think letter parser applies
      (`eval.letter_parser="upstream"`, `eval.letter_parsers.upstream_letter`), or None: always
      the word-bounded `mcq.extract_letter`.
    options_field: the item field holding the option texts (for the upstream parser).
    record_fields / failed_fields: item -> extra fields of its record / of its failed record,
      written after the completions (resp. after `pred` / `correct`).
    """

    categories: tuple[str, ...]
    letters: str
    scorer_question: Callable[[Mapping], str]
    upstream_parser: str | None = None
    options_field: str = "options"
    record_fields: Callable[[Mapping], dict] = lambda item: {}
    failed_fields: Callable[[Mapping], dict] = lambda item: {}


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One benchmark (module docstring). `name` is `eval.benchmark`; `id_field` names the row
    field kept as the item's `id` (the row's index when it is missing)."""

    name: str
    read: Callable[[str], list]
    check: Callable[[Mapping, str, dict], dict]
    id_field: str
    media: Callable[[Mapping, Any], Media]
    prompts: Callable[[Mapping, Media, bool], list[Prompt]]
    records: RecordsFn
    failed: Callable[[Mapping, str, str], dict]
    summarize: Callable[[Sequence[Mapping], Any], dict]
    columns: Callable[[Mapping], list[str] | None]
    report_text: Callable[[Mapping], str]
    mcq: MultipleChoice | None = None
    judged: bool = False
