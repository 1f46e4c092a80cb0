"""Mesh construction and the logical-axis -> mesh-axis rule table (docs/design.md decision 4).

This module sits below the model, data and checkpoint packages (they place arrays on a mesh);
the sharded training state is `o3video_jax.train.sharding`.

Weights and block-boundary activations carry logical axis names (below); one rule table maps
them to the mesh axes `data`, `fsdp`, `tensor`. The table lives in the experiment config
(`config.sharding.rules`); `DEFAULT_RULES` is the FSDP + tensor-parallel layout.

Logical axis names used by the model:
  activations: "batch", "length", "act_embed", "act_heads", "act_kv_heads", "act_mlp",
               "act_vocab", "patches"
  text weights: "vocab", "embed", "mlp", "heads", "kv_heads", "head_dim"
  vision weights: "vision_embed", "vision_mlp", "vision_qkv", "patch_dim", "merger_in"
  scalars/norms: "norm"
  stacked layers (scanned parameters, the KV cache): "layers" (no mesh axis)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MeshAxes = str | tuple[str, ...] | None

DEFAULT_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("patches", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vision_embed", "fsdp"),
    ("vision_mlp", "tensor"),
    ("vision_qkv", "tensor"),
    ("patch_dim", None),
    ("merger_in", "tensor"),
    ("norm", None),
    # The stacked-layer axis of scanned parameters and of the KV cache: never sharded (a
    # scan steps through it; each chip holds its shard of every layer).
    ("layers", None),
)


def validate_rules(rules: Sequence[tuple[str, MeshAxes]]) -> None:
    """Raises ValueError when a logical axis is assigned twice (a silent override otherwise)."""
    seen: dict[str, MeshAxes] = {}
    for name, axes in rules:
        if name in seen and seen[name] != axes:
            raise ValueError(
                f"logical axis {name!r} is mapped twice: to {seen[name]!r} and to {axes!r}"
            )
        seen[name] = axes


# ----------------------------------------------------------------------------------------------
# Mesh, shardings and sharded state creation.
#
# Multi-host: `jax.distributed.initialize()` is called once per process by the CLI before any
# of this runs; `jax.devices()` then lists the devices of every host and the mesh below spans
# the whole pod. Each process feeds only its own rows to `shard_batch` (grain shards the data
# per process), which assembles the global array without any cross-host copy.

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def num_slices(devices: Sequence[jax.Device]) -> int:
    """How many TPU slices `devices` span (multislice: joined over the data-centre network)."""
    ids = {getattr(d, "slice_index", None) for d in devices}
    ids.discard(None)
    return max(1, len(ids))


def make_mesh(
    shape: Mapping[str, int],
    devices: Sequence[jax.Device] | None = None,
    *,
    allow_fallback: bool = False,
) -> Mesh:
    """A device mesh with the axes of `shape`, in its order, e.g. {"data": -1, "fsdp": 1, "tensor": 1}.

    One size may be -1: it takes the devices left over. The axes are `Auto` (sharding
    propagation by XLA, constraints from logical axis names).

    Placement follows the topology: `mesh_utils.create_device_mesh` (splitting a physical torus
    axis when a mesh axis needs it), and over several slices (multislice, devices with
    distinct `slice_index`) `create_hybrid_device_mesh` with the `data` axis across slices
    (DCN: one gradient all-reduce per step) and every other axis within a slice (ICI). A
    placement that cannot follow the topology is an error, unless `allow_fallback`
    (`config.sharding.mesh_fallback`) accepts devices in plain enumeration order. Devices
    without a topology (CPU) are always taken in order.
    """
    devices = list(jax.devices() if devices is None else devices)
    names = tuple(shape)
    sizes = [int(shape[n]) for n in names]
    if not names:
        raise ValueError("mesh shape is empty")
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh shape {dict(shape)}: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh shape {dict(shape)}: sizes must be positive or -1")
    fixed = math.prod(s for s in sizes if s != -1)
    if len(devices) % fixed:
        raise ValueError(
            f"mesh shape {dict(shape)}: the product of the fixed sizes ({fixed}) does not divide "
            f"the device count ({len(devices)})"
        )
    sizes = [len(devices) // fixed if s == -1 else s for s in sizes]
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh shape {dict(zip(names, sizes, strict=True))} needs {math.prod(sizes)} devices, "
            f"have {len(devices)}"
        )
    grid = _place(names, sizes, devices, allow_fallback)
    return Mesh(grid, names, axis_types=(AxisType.Auto,) * len(names))


def _place(names, sizes, devices, allow_fallback: bool) -> np.ndarray:
    slices = num_slices(devices)
    resolved = dict(zip(names, sizes, strict=True))
    if slices > 1:
        data = resolved.get("data", 1)
        if data % slices:
            raise ValueError(
                f"{slices} slices: the mesh's data axis ({data}) spans the slices over DCN and "
                f"must be a multiple of {slices} (e.g. --config.mesh.data={slices})"
            )
        ici = [s // slices if n == "data" else s for n, s in zip(names, sizes, strict=True)]
        dcn = [slices if n == "data" else 1 for n in names]

        def place(split):
            return mesh_utils.create_hybrid_device_mesh(
                ici, dcn, devices, allow_split_physical_axes=split
            )
    elif devices[0].platform == "cpu":
        return np.asarray(devices, dtype=object).reshape(sizes)
    else:

        def place(split):
            return mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=split)

    errors = []
    for split in (False, True):
        try:
            return place(split)
        except (ValueError, NotImplementedError, AssertionError) as e:
            errors.append(f"{type(e).__name__}: {e}")
    if not allow_fallback:
        raise ValueError(
            f"mesh {resolved} cannot follow the topology of {len(devices)} "
            f"{devices[0].device_kind} devices ({slices} slice(s)): {errors[-1]}. Pick mesh "
            "sizes that factor the slice's torus, or set --config.sharding.mesh_fallback=True "
            "to take the devices in plain order (slower collectives)"
        )
    print(f"sharding: mesh {resolved} in plain device order ({errors[-1]})", flush=True)
    return np.asarray(devices, dtype=object).reshape(sizes)


def logical_to_sharding(tree: Any, mesh: Mesh, rules: Sequence[tuple[str, MeshAxes]]) -> Any:
    """NamedShardings for a tree of logically boxed values (concrete or `jax.eval_shape` ones).

    Leaves carrying `nn.LogicallyPartitioned` metadata are sharded by `rules`; plain leaves are
    replicated. The result has the structure of the *unboxed* tree.
    """
    validate_rules(rules)
    specs = nn.get_partition_spec(tree)
    return nn.logical_to_mesh_sharding(specs, mesh, list(rules))


def batch_axis_tree(batch: Any) -> Any:
    """For every leaf of a batch, the index of its batch axis (None for scalars).

    Every array has its batch axis first except `ModelInputs.positions` ([3, B, L]).
    """

    def axis(path, leaf):
        if np.ndim(leaf) == 0:
            return None
        last = path[-1] if path else None
        if isinstance(last, jax.tree_util.GetAttrKey) and last.name == "positions":
            return 1
        return 0

    return jax.tree_util.tree_map_with_path(axis, batch)


def batch_sharding(batch: Any, mesh: Mesh) -> Any:
    """NamedShardings that split every leaf's batch axis over ("data", "fsdp")."""
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names) or None

    def spec(ax):
        if ax is None:
            return NamedSharding(mesh, PartitionSpec())
        return NamedSharding(mesh, PartitionSpec(*([None] * ax), axes))

    return jax.tree.map(spec, batch_axis_tree(batch), is_leaf=lambda x: x is None)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Places a host batch (numpy leaves, this process's rows) on the mesh, batch axis sharded.

    Single process: the global batch is the given one. Multi-host: each process passes its
    own rows and the result is the global array (rows concatenated in process order).
    """
    shardings = batch_sharding(batch, mesh)
    n = math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.axis_names)
    local_n = n // jax.process_count() if n >= jax.process_count() else 1

    def put(x, sharding, ax):
        x = np.asarray(x)
        if ax is not None and x.shape[ax] % local_n:
            raise ValueError(
                f"batch axis of size {x.shape[ax]} (leaf shape {x.shape}) is not divisible by "
                f"the data-parallel shards of this process ({local_n})"
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, batch, shardings, batch_axis_tree(batch))


def make_sharded(
    init_fn: Callable[..., Any], mesh: Mesh, rules: Sequence[tuple[str, MeshAxes]], *args: Any
) -> tuple[Any, Any]:
    """Creates `init_fn(*args)` directly in its shardings (docs/design.md decision 4, docs/style.md rule 3).

    `init_fn` may return logically boxed leaves (e.g. params from `model.init` with
    `nn.with_logical_partitioning`): shapes come first (`jax.eval_shape`), then shardings from
    the boxes and `rules`, then a jitted init whose outputs land sharded; no unsharded copy of
    the whole tree is ever materialised on one device. Returns (unboxed tree, shardings).
    """
    abstract = jax.eval_shape(init_fn, *args)
    shardings = logical_to_sharding(abstract, mesh, rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
        tree = jax.jit(lambda *a: nn.unbox(init_fn(*a)), out_shardings=shardings)(*args)
    return tree, shardings
