"""The sharded training state: its shardings and its creation in place on the mesh.

The mesh and the logical-axis rule table live one floor lower, in `o3video_jax.mesh` (the model,
data and checkpoint packages use them too); they are re-exported here for the training code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from o3video_jax.mesh import (  # noqa: F401 - re-exported
    BATCH_AXES,
    DEFAULT_RULES,
    MESH_AXES,
    MeshAxes,
    batch_axis_tree,
    batch_sharding,
    logical_to_sharding,
    make_mesh,
    make_sharded,
    num_slices,
    shard_batch,
    validate_rules,
)
from o3video_jax.train.state import TrainState


def state_shardings(
    init_params: Callable[[jax.Array], Any],
    tx: optax.GradientTransformation,
    rng: jax.Array,
    mesh: Mesh,
    rules: Sequence[tuple[str, MeshAxes]],
) -> TrainState:
    """The shardings (a TrainState of NamedShardings) of the state `make_sharded_state` makes.

    Shapes only (`jax.eval_shape`), nothing is computed: also the target layout for restoring
    a checkpoint. The params' shardings come from their logical axes; the optimiser moments
    take the sharding of their parameter (matched by path and shape); counters, step and rng
    are replicated.
    """
    abstract_params = jax.eval_shape(init_params, jnp.asarray(rng, jnp.uint32))
    param_shardings = logical_to_sharding(abstract_params, mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    abstract_opt = jax.eval_shape(tx.init, nn.unbox(abstract_params))
    opt_shardings = _like_params(
        abstract_opt, nn.unbox(abstract_params), param_shardings, replicated
    )
    return TrainState(
        params=param_shardings, opt_state=opt_shardings, step=replicated, rng=replicated
    )


def make_sharded_state(
    init_params: Callable[[jax.Array], Any],
    tx: optax.GradientTransformation,
    rng: jax.Array,
    mesh: Mesh,
    rules: Sequence[tuple[str, MeshAxes]],
) -> tuple[TrainState, TrainState]:
    """A `TrainState` created in place on the mesh, and its shardings (`state_shardings`).

    init_params(key) -> params, possibly logically boxed, e.g.
    `lambda k: model.init(k, inputs)["params"]`; the key is split into the init key and the
    state's rng.
    """
    rng = jnp.asarray(rng, jnp.uint32)
    shardings = state_shardings(init_params, tx, rng, mesh, rules)

    def init(key):
        init_key, state_key = jax.random.split(key)
        return TrainState.create(nn.unbox(init_params(init_key)), tx, state_key)

    with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
        state = jax.jit(init, out_shardings=shardings)(rng)
    return state, shardings


def _like_params(opt_state: Any, params: Any, param_shardings: Any, other: NamedSharding) -> Any:
    """Shardings for an optimiser state: a leaf whose trailing dict-key path and shape are those
    of a parameter (Adam's mu/nu, inside any chain/multi_transform/masked wrappers) takes that
    parameter's sharding; everything else (counts, scalars) gets `other`."""
    by_path = {}
    for (path, leaf), sharding in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(param_shardings), strict=True
    ):
        by_path[tuple(path)] = (leaf.shape, sharding)

    def pick(path, leaf):
        suffix = []
        for key in reversed(path):
            if not isinstance(key, jax.tree_util.DictKey):
                break
            suffix.insert(0, key)
        hit = by_path.get(tuple(suffix))
        if hit is not None and hit[0] == leaf.shape:
            return hit[1]
        return other

    return jax.tree_util.tree_map_with_path(pick, opt_state)
