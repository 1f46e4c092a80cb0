"""Reward configuration: task names, reward names and the fixed array budgets.

The budgets fix every array shape the jitted scorer sees (docs/design.md decision 2), so one compile
serves a whole run. With `bucket_shapes=True` each extent is instead the next power of two of
what the batch needs, capped by the budget: large offline batches (evaluation, benchmarks) then
avoid scoring mostly padding, at the price of one compile per distinct bucket. A batch with a
completion that exceeds a completion-side budget gets arrays of the next power of two instead
(one more compile for such batches), so every time, claim and box is scored, as the original
does for any count; examples whose ground truth exceeds a ground-truth budget are rejected with
a ValueError, because dropping ground truth would silently change the reward.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from o3video_jax.tasks import (  # noqa: F401 - re-exported: the task vocabulary
    GENERAL_FREE_FORM,
    GENERAL_MCQ,
    TASK_IDS,
    TASKS,
    TEMPORAL_QA,
    TEMPORAL_QA_MCQ,
    TEMPORAL_SPATIAL,
    VISUAL_QA,
)

# The seven reward functions of the original's `reward_func.py`, in registration order: the
# first entries of the reward table (`rewards.registry`, which adds any others after them).
OPEN_O3_REWARDS = (
    "ans_acc",
    "ans_tiou",
    "ans_viou",
    "thk_temporal_point",
    "thk_temporal_segment",
    "thk_spatial",
    "format",
)


@dataclasses.dataclass(frozen=True)
class Reward:
    """name; score: None for the original's seven, else (parsed arrays, target arrays) ->
    float[N]; weight: its default weight in the total."""

    name: str
    score: Callable[[dict[str, Any], dict[str, Any]], Any] | None = None
    weight: float = 1.0


SPATIAL_GATES = ("intended", "reference")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Static array budgets of the reward pipeline.

    Completion side (a batch that needs more grows to the next power of two; nothing is
    dropped):
      max_claims: grounded `<obj>..<box>..at<t>..</t>s` claims kept per completion.
      max_claim_boxes: boxes kept per claim.
      max_times: bare `<t>T</t>s` times kept per completion (think block).
      max_think_boxes: `<box>[..]</box>` kept per think block (visual QA spatial reward).
    Ground-truth side (exceeding raises ValueError):
      max_key_frames: key frames per example.
      max_frame_boxes: annotated boxes per key frame, all objects together.
    bucket_shapes: size arrays by the batch (powers of two, capped by the budgets above).
    """

    max_claims: int = 32
    max_claim_boxes: int = 4
    max_times: int = 64
    max_think_boxes: int = 16
    max_key_frames: int = 16
    max_frame_boxes: int = 16
    bucket_shapes: bool = False

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if field.name == "bucket_shapes":
                continue
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"RewardConfig.{field.name} must be a positive int, got {value!r}")


def sigma_schedule(step_fraction: float) -> float:
    """Adaptive Gaussian width of thk_temporal_point: 4(1 - p) for p < 0.75, else 1."""
    p = float(step_fraction)
    if not 0.0 <= p <= 1.0:  # also rejects nan
        raise ValueError(f"step_fraction must lie in [0, 1], got {step_fraction!r}")
    return 4 * (1 - p) if p < 3 / 4 else 1.0


def step_fraction(completed_steps: int, total_steps: int) -> float:
    """The original's p = (global_step + 1) / max_steps for the step about to run.

    `completed_steps` is the 0-based global_step (steps finished before this one), so the
    first step has p = 1 / total and the last p = 1.
    """
    if total_steps < 1 or completed_steps < 0:
        raise ValueError(
            f"need total_steps >= 1, completed_steps >= 0; got {total_steps}, {completed_steps}"
        )
    return min((completed_steps + 1) / total_steps, 1.0)
