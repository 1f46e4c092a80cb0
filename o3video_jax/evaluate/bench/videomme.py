"""VideoMME: four-option multiple choice over one native video.

Reader: videomme/test-00000-of-00001.parquet; videos data/<videoID>.mp4 (.MP4, .mkv) below
`eval.media_root`. Prompt `prompts.videomme_prompt`; accuracy by duration, domain,
sub-category and task type.
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
    readers.need(row, ("videoID", "question", "options", "answer"))
    options = readers.options(row["options"])
    if len(options) > 4:
        raise readers.ItemError("record", f"{len(options)} options; VideoMME has 4 (A-D)")
    base = os.path.join(media_root, "data", str(row["videoID"]))
    path = readers.existing(base + ".mp4", base + ".MP4", base + ".mkv")
    return {**row, "options": options, "answer": str(row["answer"]).strip(), "video": path}


BENCHMARK = multiple_choice.benchmark(
    "videomme",
    read=readers.read_parquet,
    check=check,
    id_field="question_id",
    prompt=prompts.videomme_prompt,
    mc=MultipleChoice(
        categories=("duration", "domain", "sub_category", "task_type"),
        letters=mcq.LETTERS_ABCD,
        # upstream's test_videomme.py: the question, then the options as given
        scorer_question=lambda item: item["question"] + "\n" + "\n".join(item["options"]),
        upstream_parser="videomme",
    ),
)
