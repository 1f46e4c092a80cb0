"""Open-o3 Video rewards: a total host-side parser and one jitted scorer (docs/design.md decision 7)."""

from o3video_jax.rewards.batch import ParsedBatch
from o3video_jax.rewards.config import (
    TASKS,
    RewardConfig,
    sigma_schedule,
    step_fraction,
)
from o3video_jax.rewards.parse import Claim, Completion, extract_answer, parse_completion
from o3video_jax.rewards.registry import REWARD_NAMES, REWARDS, Reward
from o3video_jax.rewards.rewards import compute_rewards
from o3video_jax.rewards.scan import parse_batch
from o3video_jax.rewards.targets import Targets, build_targets

__all__ = [
    "REWARDS",
    "REWARD_NAMES",
    "Reward",
    "TASKS",
    "Claim",
    "Completion",
    "ParsedBatch",
    "RewardConfig",
    "Targets",
    "build_targets",
    "compute_rewards",
    "extract_answer",
    "parse_batch",
    "parse_completion",
    "sigma_schedule",
    "step_fraction",
]
