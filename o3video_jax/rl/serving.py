"""Rollouts in a serving layout (docs/design.md decision 15).

The training layout keeps float32 master weights sharded by FSDP over every chip, so a decode
step on it gathers the whole model onto every chip, once per token. Once per rollout batch,
`ServingLayout.reshard` (one jitted program) turns the policy into its serving layout instead:

  weights   `model.dtype` (bfloat16 in the shipped configs), tensor-parallel over `tensor` chips
            (heads, KV heads, MLP, vocabulary, vision qkv/MLP: the entries the rule table maps
            to `tensor`), replicated over the rest: no weight collective in the decode loop;
  rows      prompts and samples split over the other chips (`rows` = devices / tensor);
  KV cache  [N, B, K, S, H] split by rows and KV heads (its logical axes, `cache.py`).

Prefill and the decode loop run there (`make_sampler(model, cfg, mesh=layout.mesh,
rules=layout.rules)`); the log-prob forwards and the update stay on the training layout.

The serving mesh has the axes of the training mesh, `("data", "fsdp", "tensor")`, sized
`(rows, 1, tensor)`, over the training mesh's devices in the same order (a jitted program's
inputs and outputs must share one ordered device assignment, which is what makes the reshard a
single program). A tensor group is therefore `tensor` consecutive chips of the training mesh,
which `train.sharding.make_mesh` lays along the torus. Its rule table is the training table with
`data` and `fsdp` removed from every entry but `batch` (`serving_rules`); with `fsdp` of size 1
the rows split over `data` alone.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from o3video_jax.mesh import BATCH_AXES, MESH_AXES, MeshAxes

LAYOUTS = ("serving", "training")  # rl.serving.layout: where rollouts decode


def auto_tensor(host_devices: int, heads: int, kv_heads: int) -> int:
    """The default tensor-parallel width: the chips of one host, reduced to the largest
    divisor of that count which splits the attention heads and the KV heads evenly (7B: 28
    heads, 4 KV heads -> 4 on a 4-chip host; 3B: 16 / 2 -> 2)."""
    return math.gcd(max(int(host_devices), 1), math.gcd(int(heads), int(kv_heads)))


def serving_rules(rules: Sequence[tuple[str, MeshAxes]]) -> tuple[tuple[str, MeshAxes], ...]:
    """The serving rule table: `rules` with `data` / `fsdp` dropped from every entry except
    `batch` (rows keep the batch axes; weights and the other activations keep `tensor` only)."""
    out = []
    for name, axes in (tuple(r) for r in rules):
        if name == "batch" or axes is None:
            out.append((name, tuple(axes) if isinstance(axes, list) else axes))
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        kept = tuple(a for a in axes if a not in BATCH_AXES)
        out.append((name, kept[0] if len(kept) == 1 else (kept or None)))
    return tuple(out)


def serving_mesh(mesh: Mesh, tensor: int) -> Mesh:
    """The (rows, 1, tensor) mesh over `mesh`'s devices in their order (see the module doc)."""
    devices = np.asarray(mesh.devices).reshape(-1)
    if tensor < 1 or devices.size % tensor:
        raise ValueError(
            f"rl.serving.tensor={tensor} does not divide the {devices.size} devices of the mesh"
        )
    grid = devices.reshape(devices.size // tensor, 1, tensor)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _serving_spec(spec: PartitionSpec) -> PartitionSpec:
    """A weight's training PartitionSpec without its data / fsdp axes (== `serving_rules`)."""

    def keep(entry):
        if entry is None:
            return None
        axes = (entry,) if isinstance(entry, str) else tuple(entry)
        kept = tuple(a for a in axes if a not in BATCH_AXES)
        return kept[0] if len(kept) == 1 else (kept or None)

    return PartitionSpec(*(keep(e) for e in spec))


def _cast(params, dtype):
    cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    return jax.tree.map(cast, params)


@dataclasses.dataclass(frozen=True)
class ServingLayout:
    """Where rollouts run: `mesh` and `rules` for the sampler, `shardings` of the serving
    params, `dtype` of their floating leaves; `reshard(train_params) -> serving params` is the
    one jitted program that moves the policy there (its inputs stay untouched: the training
    state keeps its master weights). `train_mesh`: the mesh whose batch layout callers feed."""

    mesh: Mesh
    rules: tuple[tuple[str, MeshAxes], ...]
    shardings: Any
    dtype: Any
    train_mesh: Mesh
    tensor: int
    reshard: Any = dataclasses.field(repr=False, compare=False)

    @property
    def rows(self) -> int:
        """Row shards of the serving mesh (devices / tensor)."""
        return self.mesh.devices.size // self.tensor


def make_layout(
    train_mesh: Mesh,
    rules: Sequence[tuple[str, MeshAxes]],
    param_shardings: Any,
    tensor: int,
    dtype,
) -> ServingLayout:
    """The serving layout of a policy whose training params have `param_shardings`
    (NamedShardings on `train_mesh`, from the logical `rules`), `tensor` chips per group,
    weights in `dtype` (the model's compute dtype, `model.dtype`)."""
    mesh = serving_mesh(train_mesh, tensor)
    shardings = jax.tree.map(
        lambda s: NamedSharding(mesh, _serving_spec(s.spec)),
        param_shardings,
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )
    dtype = jnp.dtype(dtype)
    with jax.named_scope("rollout/reshard"):
        reshard = jax.jit(functools.partial(_cast, dtype=dtype), out_shardings=shardings)
    return ServingLayout(
        mesh=mesh,
        rules=serving_rules(rules),
        shardings=shardings,
        dtype=dtype,
        train_mesh=train_mesh,
        tensor=int(tensor),
        reshard=reshard,
    )


def layout_for(config, mesh: Mesh, rules, param_shardings, model_config) -> ServingLayout | None:
    """The rollout layout `config.rl.serving` asks for (None: sample on the training layout).

    `rl.serving.tensor` is resolved by preflight; 0 here (an unchecked config) takes the
    chips of this host (`auto_tensor`)."""
    spec = config.rl.get("serving")
    if spec is None or spec.layout == "training":
        return None
    if spec.layout not in LAYOUTS:
        raise ValueError(f"rl.serving.layout={spec.layout!r} is not one of {LAYOUTS}")
    text = model_config.text
    tensor = int(spec.tensor) or auto_tensor(
        jax.local_device_count(), text.num_attention_heads, text.num_key_value_heads
    )
    return make_layout(mesh, rules, param_shardings, tensor, model_config.dtype)
