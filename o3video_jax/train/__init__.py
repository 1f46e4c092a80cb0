"""Training: mesh and sharded state, optimiser, chunked losses, the jitted SFT step."""

from o3video_jax.train.sharding import (
    DEFAULT_RULES,
    make_mesh,
    make_sharded_state,
    shard_batch,
    state_shardings,
)
from o3video_jax.train.state import TrainState, make_optimizer
from o3video_jax.train.steps import NonFiniteLossError, check_finite, make_sft_step

__all__ = [
    "DEFAULT_RULES",
    "NonFiniteLossError",
    "TrainState",
    "check_finite",
    "make_mesh",
    "make_optimizer",
    "make_sft_step",
    "make_sharded_state",
    "shard_batch",
    "state_shardings",
]
