"""VideoMMMU: multiple choice (options A-J) and open questions over one lecture video.

Reader: a directory of {Perception,Comprehension,Adaptation}/test-00000-of-00001.parquet, or
one such parquet; videos <Art|Science|...>/<id>.mp4 below `eval.media_root` (the folder of
the id's subject, upstream's table). An Adaptation item's image follows the video
(`eval.videommmu_image`: "upstream" = qwen_vl_utils' image budget, "capped" = 854x480).
Prompt `prompts.videommmu_prompt`; an item whose `question_type` is not "multiple-choice" is
open and scored by MMMU's open-answer rule; accuracy by category, subdomain, question type.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from o3video_jax.eval import mcq
from o3video_jax.evaluate import media as media_lib
from o3video_jax.evaluate import prompts, readers
from o3video_jax.evaluate.bench import multiple_choice
from o3video_jax.evaluate.spec import MultipleChoice

__all__ = ["BENCHMARK", "CAPPED_IMAGE_PIXELS", "CATEGORIES", "image_max_pixels", "subject_dir"]

CATEGORIES = ("Perception", "Comprehension", "Adaptation")

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

# The image cap if `eval.videommmu_image="capped"`: the max_pixels upstream gives the
# processor it uses only for the chat template (eval/models/model_vllm.py).
CAPPED_IMAGE_PIXELS = 854 * 480


def _subdomain(item_id) -> str:
    return "_".join(str(item_id).split("_")[1:-1])


def subject_dir(item_id: str) -> str:
    """The video folder of a VideoMMMU id "<split>_<Subject_Name>_<n>" (upstream's table)."""
    subject = _subdomain(item_id)
    for folder, subjects in _SUBJECT_DIRS.items():
        if subject in subjects:
            return folder
    raise readers.ItemError("record", f"id {item_id!r}: subject {subject!r} not recognised")


def read(path: str) -> list[dict]:
    if os.path.isdir(path):
        rows = []
        for cat in CATEGORIES:
            p = os.path.join(path, cat, "test-00000-of-00001.parquet")
            if os.path.exists(p):
                rows += [{**r, "category": cat} for r in readers.read_parquet(p)]
        if not rows:
            raise FileNotFoundError(
                f"{path}: no {'/'.join(CATEGORIES)}/test-00000-of-00001.parquet"
            )
        return rows
    cat = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return [{"category": cat, **r} for r in readers.read_parquet(path)]


def check(row: Mapping, media_root: str, cache: dict) -> dict:
    readers.need(row, ("id", "question", "options", "answer", "category"))
    # upstream: doc.get("question_type", "None"); anything but "multiple-choice" is open
    qtype = str(row.get("question_type", "None"))
    options = (
        readers.options(row["options"])
        if qtype == "multiple-choice"
        else list(row["options"] or [])
    )
    if qtype == "multiple-choice" and len(options) > 10:
        raise readers.ItemError("record", f"{len(options)} options; VideoMMMU letters stop at J")
    folder = subject_dir(row["id"])
    path = readers.existing(os.path.join(media_root, folder, f"{row['id']}.mp4"))
    image = row.get("image")
    image_bytes = image.get("bytes") if isinstance(image, Mapping) else None
    out = {**row, "options": [str(o) for o in options], "question_type": qtype, "video": path}
    out["answer"] = row["answer"] if isinstance(row["answer"], list) else str(row["answer"])
    out.pop("image", None)
    out["image_bytes"] = image_bytes
    return out


def image_max_pixels(ev) -> int:
    mode = ev.get("videommmu_image", "upstream")
    if mode not in ("upstream", "capped"):
        raise ValueError(f"eval.videommmu_image must be 'upstream' or 'capped', got {mode!r}")
    return ev.image_max_pixels if mode == "upstream" else CAPPED_IMAGE_PIXELS


def load_media(item: Mapping, ev) -> media_lib.Media:
    """The native video, then (an Adaptation item) its image."""
    m = multiple_choice.native_video(item, ev)
    if item.get("image_bytes") is not None:
        img = media_lib.decode_image(
            item["image_bytes"], min_pixels=ev.image_min_pixels, max_pixels=image_max_pixels(ev)
        )
        m = dataclasses.replace(m, items=m.items + (img,))
    return m


BENCHMARK = multiple_choice.benchmark(
    "videommmu",
    read=read,
    check=check,
    id_field="id",
    prompt=prompts.videommmu_prompt,
    media=load_media,
    mc=MultipleChoice(
        categories=("category", "subdomain", "question_type"),
        letters=mcq.LETTERS_A_TO_J,
        # upstream's test_videommmu.py: the question, then the options lettered
        scorer_question=lambda item: item["question"] + "\n" + prompts._lettered(item["options"]),
        upstream_parser="videommmu",
        record_fields=lambda item: {"subdomain": _subdomain(item["id"])},
        failed_fields=lambda item: {"subdomain": _subdomain(item["id"])},
    ),
)
