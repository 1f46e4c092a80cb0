"""The SFT train step, and the machinery every update step shares.

A step is `step(state, batch) -> (state, metrics)`: pure, jitted once with explicit in/out
shardings and the state donated (docs/style.md rule 4). It splits the batch into `optimizer.microbatches`
strided microbatches, scans over them accumulating the gradient of a loss *sum*, divides by a
denominator computed on the whole batch (so accumulation is exact), and applies one optimiser
update. A non-finite loss or gradient norm never reaches the parameters: the update is skipped
(state unchanged except `step`, metric `skipped = 1`); with `nan_policy = "stop"` the loop then
calls `check_finite`, which raises.

SFT batch (host numpy, placed with `sharding.shard_batch`):
  inputs:    ModelInputs [B, L]
  targets:   int32[B, L]   the token position t predicts (shifted on the host; any id where
                           loss_mask is 0)
  loss_mask: float32[B, L] 1 where the target is trained

Config fields read (ml_collections ConfigDict):
  optimizer.*    see `state.py` (microbatches included)
  loss.chunk     positions unembedded at a time (the full [B, L, V] logits never exist)
  loss.normalize "token" (mean over all trained tokens) | "sequence" (mean over examples of
                 their token mean; examples are the segments of `inputs.segment_ids`)
  nan_policy     "skip" | "stop"
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from o3video_jax.train import losses
from o3video_jax.train.sharding import (
    BATCH_AXES,
    DEFAULT_RULES,
    MeshAxes,
    batch_axis_tree,
    batch_sharding,
)
from o3video_jax.train.state import TrainState, make_optimizer, trainable_mask

NAN_POLICIES = ("skip", "stop")

# loss_sum(params, microbatch, rng) -> (Σ of the microbatch's weighted losses, aux pytree)
LossSum = Callable[[Any, Any, jax.Array], tuple[jax.Array, Any]]


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient norm was NaN/inf (raised by `check_finite` under "stop")."""


def check_finite(metrics: dict[str, Any], nan_policy: str) -> None:
    """Host side, after a step: raise under "stop" when the step skipped a non-finite update."""
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    if nan_policy == "stop" and float(jax.device_get(metrics["skipped"])) > 0:
        raise NonFiniteLossError(
            f"non-finite loss {float(jax.device_get(metrics['loss']))} or gradient norm "
            f"{float(jax.device_get(metrics['grad_norm']))}; the update was not applied "
            "(nan_policy='stop'; use 'skip' to continue past such batches)"
        )


def split_microbatches(batch: Any, microbatches: int) -> Any:
    """[B, ...] leaves -> [M, B/M, ...]; microbatch m holds rows m, m + M, ... (strided), so
    a batch sharded in contiguous row blocks stays evenly sharded in every microbatch."""
    m = microbatches

    def split(x, ax):
        if ax is None:
            return jnp.broadcast_to(x, (m,) + jnp.shape(x))
        b = x.shape[ax]
        if b % m:
            raise ValueError(f"batch size {b} is not divisible by microbatches={m}")
        x = x.reshape(x.shape[:ax] + (b // m, m) + x.shape[ax + 1 :])
        return jnp.moveaxis(x, ax + 1, 0)

    return jax.tree.map(split, batch, batch_axis_tree(batch), is_leaf=lambda x: x is None)


def accumulate(
    loss_sum: LossSum,
    params: Any,
    batch: Any,
    rng: jax.Array,
    microbatches: int,
    mesh: Mesh,
    grad_shardings: Any = None,
) -> tuple[jax.Array, Any, Any]:
    """Σ loss, aux stacked over microbatches ([M, ...] leaves), Σ gradients.

    grad_shardings (the params' shardings) pins the gradient accumulator, so that it stays
    sharded like the parameters (FSDP) instead of whatever propagation picks.
    """
    grad_fn = jax.value_and_grad(loss_sum, has_aux=True)
    if microbatches == 1:
        (total, aux), grads = grad_fn(params, batch, rng)
        return total, jax.tree.map(lambda a: a[None], aux), grads

    rows = jax.tree.leaves(batch["targets"])[0].shape[0] // microbatches
    shards = math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.axis_names)
    if rows % shards:
        raise ValueError(
            f"a microbatch of {rows} rows (batch / microbatches={microbatches}) cannot be split "
            f"evenly over the {shards} data-parallel shards of the mesh"
        )
    mbs = split_microbatches(batch, microbatches)

    def body(carry, xs):
        total, grads = carry
        mb, i = xs
        mb = jax.lax.with_sharding_constraint(mb, batch_sharding(mb, mesh))
        (value, aux), g = grad_fn(params, mb, jax.random.fold_in(rng, i))
        grads = jax.tree.map(jnp.add, grads, g)
        if grad_shardings is not None:
            grads = jax.lax.with_sharding_constraint(grads, grad_shardings)
        return (total + value, grads), aux

    zeros = jax.tree.map(jnp.zeros_like, params)
    (total, grads), aux = jax.lax.scan(
        body, (jnp.zeros((), jnp.float32), zeros), (mbs, jnp.arange(microbatches))
    )
    return total, aux, grads


def apply_gradients(
    state: TrainState,
    tx: optax.GradientTransformation,
    loss: jax.Array,
    grads: Any,
    trainable: Any,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser update, skipped (all but `step` unchanged) when loss/grads are non-finite."""
    grad_norm = optax.tree.norm(
        [g for g, t in zip(jax.tree.leaves(grads), jax.tree.leaves(trainable), strict=True) if t]
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jnp.where(ok, new, old)
    new_state = state.replace(
        params=jax.tree.map(keep, params, state.params),
        opt_state=jax.tree.map(keep, opt_state, state.opt_state),
        step=state.step + 1,
    )
    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        "param_norm": optax.tree.norm(new_state.params),
        "update_norm": jnp.where(ok, optax.tree.norm(updates), 0.0),
        "skipped": (~ok).astype(jnp.int32),
    }
    return new_state, metrics


def jit_step(
    step_fn: Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]],
    mesh: Mesh,
    state_shardings: TrainState,
    rules: Sequence[tuple[str, MeshAxes]],
) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]:
    """Jits `step_fn` with the state donated, explicit shardings (batch axis over
    ("data", "fsdp"), metrics replicated) and the mesh + logical rules active while tracing.

    The returned callable also has `.lower(state, batch)` for ahead-of-time compilation.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    compiled: dict[Any, Any] = {}

    def jitted_for(batch):
        key = jax.tree.structure(batch)
        if key not in compiled:
            compiled[key] = jax.jit(
                step_fn,
                in_shardings=(state_shardings, batch_sharding(batch, mesh)),
                out_shardings=(state_shardings, replicated),
                donate_argnums=0,
            )
        return compiled[key]

    def run(state, batch):
        with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
            return jitted_for(batch)(state, batch)

    def lower(state, batch):
        with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
            return jitted_for(batch).lower(state, batch)

    run.lower = lower
    return run


def make_sft_step(
    model: nn.Module,
    cfg: Any,
    mesh: Mesh,
    state_shardings: TrainState,
    *,
    rules: Sequence[tuple[str, MeshAxes]] = DEFAULT_RULES,
) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted SFT step `(state, batch) -> (state, metrics)` for `model` on `mesh`.

    metrics (replicated scalars): loss, accuracy, tokens, grad_norm (trainable, before
    clipping), param_norm, update_norm, skipped.
    """
    tx = make_optimizer(cfg.optimizer)
    microbatches = int(cfg.optimizer.get("microbatches", 1))
    chunk = int(cfg.loss.chunk)
    normalize = cfg.loss.normalize
    if normalize not in losses.NORMALIZATIONS:
        raise ValueError(
            f"loss.normalize must be one of {losses.NORMALIZATIONS}, got {normalize!r}"
        )
    if cfg.nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {cfg.nan_policy!r}")

    def loss_sum(params, mb, rng):
        variables = {"params": params}
        hidden = model.apply(variables, mb["inputs"], method="hidden_states", rngs={"dropout": rng})
        unembed = lambda h: model.apply(variables, h, method="unembed")
        logp, correct = losses.token_logprobs(hidden, mb["targets"], unembed, chunk=chunk)
        mask = mb["loss_mask"].astype(jnp.float32)
        weights = mb["weights"]
        total = -jnp.where(weights != 0, weights * logp, 0.0).sum()
        return total, {"correct": (correct * mask).sum(), "tokens": mask.sum()}

    def step(state: TrainState, batch: Any):
        rng = jax.random.fold_in(state.rng, state.step)
        weights, denom = losses.loss_weights(
            batch["loss_mask"], batch["inputs"].segment_ids, normalize
        )
        batch = {**batch, "weights": weights}
        total, aux, grads = accumulate(
            loss_sum, state.params, batch, rng, microbatches, mesh, state_shardings.params
        )
        loss = total / denom
        grads = jax.tree.map(lambda g: g / denom, grads)
        trainable = trainable_mask(state.params, cfg.optimizer)
        state, metrics = apply_gradients(state, tx, loss, grads, trainable)
        tokens = aux["tokens"].sum()
        metrics["accuracy"] = aux["correct"].sum() / jnp.maximum(tokens, 1.0)
        metrics["tokens"] = tokens
        return state, metrics

    return jit_step(step, mesh, state_shardings, rules)
