"""WorldSense: multiple choice over one native video (the audio is not used).

Reader: WorldSense.tsv; videos <video>.mp4 in `eval.media_root`. Prompt
`prompts.worldsense_prompt`; accuracy by duration, domain, sub-category, task domain and
task type. The options are the item's `candidates` (also written to the record as `options`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from o3video_jax.eval import mcq
from o3video_jax.evaluate import prompts, readers
from o3video_jax.evaluate.bench import multiple_choice
from o3video_jax.evaluate.spec import MultipleChoice

__all__ = ["BENCHMARK"]


def check(row: Mapping, media_root: str, cache: dict) -> dict:
    readers.need(row, ("video", "question", "candidates", "answer"))
    candidates = readers.options(row["candidates"], "candidates")
    path = readers.existing(os.path.join(media_root, str(row["video"]) + ".mp4"))
    return {**row, "candidates": candidates, "answer": str(row["answer"]).strip(), "video": path}


def scorer_question(item: Mapping) -> str:
    """Upstream's test_worldsense.py wraps it as "Question: ...\\n", so the relevance rubric
    reads "Question: Question: ..."."""
    return "Question: {}\n".format(item["question"] + "\n" + "\n".join(item["candidates"]))


BENCHMARK = multiple_choice.benchmark(
    "worldsense",
    read=readers.read_tsv,
    check=check,
    id_field="index",
    prompt=prompts.worldsense_prompt,
    mc=MultipleChoice(
        categories=("duration", "domain", "sub_category", "task_domain", "task_type"),
        letters=mcq.LETTERS_ABCD,
        scorer_question=scorer_question,
        upstream_parser="worldsense",
        options_field="candidates",
        record_fields=lambda item: {"options": list(item["candidates"])},
    ),
)
