"""Train state and the optimiser built from the config (AdamW, schedules, masks, freezing).

The optimiser section of an experiment config (`config.optimizer`, an ml_collections
ConfigDict) has these fields:

  lr             peak learning rate (float)
  schedule       "cosine" | "linear" | "constant": after warm-up, cosine or linear decay to 0
                 at `total_steps` (the Hugging Face Trainer schedules), or constant
  warmup_steps   linear warm-up from 0 to `lr` over this many optimiser updates (int, may be 0)
  total_steps    number of optimiser updates of the run (int > 0; the decay horizon)
  weight_decay   decoupled AdamW weight decay; never applied to biases and norm scales
  b1, b2, eps    AdamW moments and epsilon
  grad_clip      global-norm clipping of the trainable gradients (0 or None: off)
  freeze_regex   regex searched in "/"-joined parameter paths (e.g. "^visual/"); matching
                 parameters get zero updates and no optimiser state ("" or None: none frozen)
  microbatches   gradient accumulation: the step splits its batch into this many microbatches
                 and scans over them, so one step is still exactly one optimiser update

Schedules count optimiser updates (optax's internal count, `update_count`), so skipped
non-finite steps do not advance them. An experiment config's `optim` section is turned into
these units (horizon and warm-up in updates: GSPO makes several per rollout step) by
`drivers.preflight.optimizer_config`.
"""

from __future__ import annotations

import re
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

FROZEN, TRAINABLE = "frozen", "trainable"
_NO_DECAY_LEAVES = ("bias", "scale")  # Dense biases and RMSNorm/LayerNorm scales


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes; a plain pytree (checkpointable as is).

    params:    the model parameters (unboxed)
    opt_state: the optax state of `make_optimizer(cfg)`
    step:      int32[] steps taken, including skipped non-finite ones
    rng:       uint32[2] base key; a step uses `fold_in(rng, step)`
    """

    params: Any
    opt_state: Any
    step: jax.Array
    rng: jax.Array

    @classmethod
    def create(cls, params: Any, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
        return cls(
            params=params,
            opt_state=tx.init(params),
            step=jnp.zeros((), jnp.int32),
            rng=jnp.asarray(rng, jnp.uint32),
        )


def path_str(path: tuple[Any, ...]) -> str:
    """ "/"-joined names of a pytree key path, e.g. "visual/blocks_0/attn/qkv/kernel"."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        else:
            parts.append(str(k))
    return "/".join(parts)


def freeze_labels(params: Any, freeze_regex: str | None) -> Any:
    """Tree of "frozen" / "trainable" labels; raises when the regex matches no parameter."""
    if not freeze_regex:
        return jax.tree.map(lambda _: TRAINABLE, params)
    pattern = re.compile(freeze_regex)
    labels = jax.tree_util.tree_map_with_path(
        lambda p, _: FROZEN if pattern.search(path_str(p)) else TRAINABLE, params
    )
    if FROZEN not in jax.tree.leaves(labels):
        raise ValueError(f"freeze_regex {freeze_regex!r} matches no parameter path")
    return labels


def decay_mask(params: Any) -> Any:
    """Tree of bools: True where weight decay applies (not biases, not norm scales)."""

    def decays(path, leaf):
        last = path_str(path).rsplit("/", 1)[-1]
        return last not in _NO_DECAY_LEAVES and jnp.ndim(leaf) >= 2

    return jax.tree_util.tree_map_with_path(decays, params)


def make_schedule(cfg: Any) -> optax.Schedule:
    """Learning rate per optimiser update (see the module docstring for the fields)."""
    lr, warmup, total = float(cfg.lr), int(cfg.warmup_steps), int(cfg.total_steps)
    if total <= 0:
        raise ValueError(f"optimizer.total_steps must be positive, got {total}")
    if not 0 <= warmup <= total:
        raise ValueError(f"optimizer.warmup_steps={warmup} must lie in [0, total_steps={total}]")
    if cfg.schedule == "constant":
        decay = optax.constant_schedule(lr)
    elif cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(lr, max(total - warmup, 1))
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(lr, 0.0, max(total - warmup, 1))
    else:
        raise ValueError(
            f"optimizer.schedule must be 'cosine', 'linear' or 'constant', got {cfg.schedule!r}"
        )
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def update_count(opt_state: Any) -> jax.Array:
    """int32[] optimiser updates applied so far: the step the schedule is evaluated at (the
    `count` of optax's schedule / Adam state; skipped non-finite updates leave it unchanged)."""
    counts = [
        leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]
        if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "count"
    ]
    if not counts:
        raise ValueError("the optimiser state holds no update count")
    return counts[0]


def make_optimizer(cfg: Any) -> optax.GradientTransformation:
    """AdamW with warm-up + decay schedule, global-norm clipping, decay mask and freezing."""
    if int(cfg.get("microbatches", 1)) < 1:
        raise ValueError(f"optimizer.microbatches must be >= 1, got {cfg.microbatches}")
    parts = []
    if cfg.get("grad_clip"):
        parts.append(optax.clip_by_global_norm(float(cfg.grad_clip)))
    parts.append(
        optax.adamw(
            make_schedule(cfg),
            b1=float(cfg.b1),
            b2=float(cfg.b2),
            eps=float(cfg.eps),
            weight_decay=float(cfg.weight_decay),
            mask=decay_mask,
        )
    )
    trainable = optax.chain(*parts)
    regex = cfg.get("freeze_regex")
    if not regex:
        return trainable
    # Clipping sits inside the trainable branch: frozen gradients never enter the global norm
    # (as in PyTorch, where frozen weights have no .grad), and XLA drops their backward pass.
    return optax.multi_transform(
        {TRAINABLE: trainable, FROZEN: optax.set_to_zero()},
        lambda params: freeze_labels(params, regex),
    )


def trainable_mask(params: Any, cfg: Any) -> Any:
    """Tree of bools: True for parameters the optimiser updates."""
    labels = freeze_labels(params, cfg.get("freeze_regex"))
    return jax.tree.map(lambda lab: lab == TRAINABLE, labels)
