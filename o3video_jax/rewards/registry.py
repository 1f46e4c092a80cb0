"""The reward table: Open-o3 Video's seven rewards, then any added ones (docs/extending.md).

A reward is a `Reward` record. The original's seven (docs/open_o3_video.md §3) are computed
together in `scoring.score_batch`, where they share intermediate arrays, and carry no function
here. An added reward carries `score(parsed, targets) -> float[N]`: a jittable function of the
parsed completion arrays (`ParsedBatch.arrays()`) and the ground-truth arrays
(`Targets.arrays()`), run inside the same jitted call (float64 on the CPU). Adding one is one
module with its function and its `Reward`, and one entry in `ADDED` below; its name then
appears in `REWARD_NAMES`, in every reward dict, in the weights (`rl.reward_weights`, default
`weight`), in the GSPO metrics (`reward/<name>`) and in the held-out averages.

An added reward's module imports `Reward` from `rewards.config` and may use anything else below
this table (`rewards.scoring`'s `box_iou` and `temporal_iou`), never the table itself: nothing
below imports the table, so there is no circle (`compute_rewards` hands the added rewards to the
scorer).
"""

from __future__ import annotations

from o3video_jax.rewards.config import OPEN_O3_REWARDS, Reward

# The seven reward functions of the original's `reward_func.py`, in registration order.
OPEN_O3 = tuple(Reward(name) for name in OPEN_O3_REWARDS)

# Added rewards, after the seven: one entry per reward module (e.g. `my_reward.REWARD`).
ADDED: tuple[Reward, ...] = ()


def table(added: tuple[Reward, ...] = ()) -> tuple[Reward, ...]:
    """The seven, then `added`, validated: unique names, not "total", a score function for
    every added reward."""
    rewards = OPEN_O3 + tuple(added)
    names = [r.name for r in rewards]
    if len(set(names)) != len(names) or "total" in names:
        raise ValueError(f"reward names must be unique and not 'total', got {names}")
    for r in added:
        if not callable(r.score):
            raise ValueError(f"added reward {r.name!r} needs a score function")
    return rewards


REWARDS = table(ADDED)
REWARD_NAMES = tuple(r.name for r in REWARDS)
DEFAULT_WEIGHTS = {r.name: float(r.weight) for r in REWARDS}
