"""Evaluation: V-STaR, multiple-choice QA, temporal grounding, test-time scaling, visualisation.

from o3video_jax.eval import vstar
m = vstar.metrics(items)   # acc, tiou_1/2, viou_1/2, r1@.._k, ap@.._k, AM1/2, mAM, LGM1/2, mLGM
"""

from o3video_jax.eval import animate, grounding, mcq, mmmu, results, tts, visualize, vstar
from o3video_jax.eval.mcq import accuracy as mcq_accuracy
from o3video_jax.eval.mcq import extract_letter
from o3video_jax.eval.results import write_jsonl, write_summary
from o3video_jax.eval.tts import crop_evidence, parse_claims, vote
from o3video_jax.eval.visualize import render_example
from o3video_jax.eval.vstar import aggregate_from_dims

__all__ = [
    "aggregate_from_dims",
    "animate",
    "crop_evidence",
    "extract_letter",
    "grounding",
    "mcq",
    "mcq_accuracy",
    "mmmu",
    "parse_claims",
    "render_example",
    "results",
    "tts",
    "visualize",
    "vote",
    "vstar",
    "write_jsonl",
    "write_summary",
]
