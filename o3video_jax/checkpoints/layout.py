"""The two parameter layouts of `Qwen25VL` and the conversion between them.

Unrolled (`scan_layers=False`): one subtree per layer, `model/layers_{i}/...` and
`visual/blocks_{i}/...`. Scanned (`scan_layers=True`): one subtree each, `model/layers/...` and
`visual/blocks/...`, every leaf stacked on a leading layer axis in layer order. Everything else
is shared. The conversion is exact (a stack / an index). It works on any pytree that holds
such parameter dicts (params, a TrainState whose Adam moments mirror them, abstract trees of
`jax.ShapeDtypeStruct`s, whose NamedShardings gain or lose the unsharded leading axis) and
leaves everything outside the layers untouched. `checkpoints.hf` maps stacked parameters to
per-layer keys with `per_layer_paths`; `checkpoints.orbax` restores either layout into either.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

# Stacked name -> per-layer prefix (model/layers <-> model/layers_{i}, visual/blocks <->
# visual/blocks_{i}).
STACKS = {"layers": "layers_", "blocks": "blocks_"}
_NUMBERED = re.compile(r"(layers|blocks)_(\d+)")

Path = tuple[str, ...]


def _numbered(node: Mapping, prefix: str) -> list[str]:
    """`prefix{i}` keys of node, checked to be 0..n-1, in index order."""
    found = sorted(
        (int(k[len(prefix) :]), k)
        for k in node
        if isinstance(k, str) and re.fullmatch(re.escape(prefix) + r"\d+", k)
    )
    if [i for i, _ in found] != list(range(len(found))):
        raise ValueError(f"per-layer keys {[k for _, k in found]} are not {prefix}0..{prefix}n-1")
    return [k for _, k in found]


def _stack_leaf(*xs):
    x = xs[0]
    if isinstance(x, jax.ShapeDtypeStruct):
        sharding = x.sharding
        if isinstance(sharding, NamedSharding):
            sharding = NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec))
        return jax.ShapeDtypeStruct((len(xs), *x.shape), x.dtype, sharding=sharding)
    if isinstance(x, np.ndarray):
        return np.stack(xs)
    return jnp.stack(xs)


def _index_leaf(x, i: int):
    if isinstance(x, jax.ShapeDtypeStruct):
        sharding = x.sharding
        if isinstance(sharding, NamedSharding):
            sharding = NamedSharding(sharding.mesh, PartitionSpec(*tuple(sharding.spec)[1:]))
        return jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=sharding)
    return x[i]


def _stack_level(node: Mapping) -> dict:
    out = dict(node)
    for stacked, prefix in STACKS.items():
        keys = _numbered(node, prefix)
        if keys:
            layers = [out.pop(k) for k in keys]
            out[stacked] = jax.tree.map(_stack_leaf, *layers)
    return out


def _unstack_level(node: Mapping) -> dict:
    out = dict(node)
    for stacked, prefix in STACKS.items():
        if isinstance(out.get(stacked), Mapping):
            tree = out.pop(stacked)
            n = jax.tree.leaves(tree)[0].shape[0]
            for i in range(n):
                out[f"{prefix}{i}"] = jax.tree.map(lambda x, i=i: _index_leaf(x, i), tree)
    return out


def _walk(tree: Any, level: Callable[[Mapping], dict]) -> Any:
    """Applies `level` to every dict of the tree, top down, then rebuilds the tree."""
    if isinstance(tree, Mapping):
        return {k: _walk(v, level) for k, v in level(tree).items()}
    is_map = lambda x: isinstance(x, Mapping)
    return jax.tree.map(lambda x: _walk(x, level) if is_map(x) else x, tree, is_leaf=is_map)


def stack_layers(tree: Any) -> Any:
    """Unrolled -> scanned layout (parts already scanned are left as they are)."""
    return _walk(tree, _stack_level)


def unstack_layers(tree: Any) -> Any:
    """Scanned -> unrolled layout (parts already unrolled are left as they are)."""
    return _walk(tree, _unstack_level)


def is_stacked(tree: Any) -> bool | None:
    """True for the scanned layout, False for the unrolled one, None when the tree has no
    layers (judged by the dict keys on its paths, e.g. Orbax metadata trees too)."""
    keys = set()
    for path, _ in jax.tree_util.tree_leaves_with_path(tree):
        keys.update(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
    if any(_NUMBERED.fullmatch(k) for k in keys):
        return False
    if keys & set(STACKS):
        return True
    return None


def to_layout(tree: Any, scan_layers: bool) -> Any:
    """`tree` in the layout of a model with `config.scan_layers == scan_layers`."""
    return stack_layers(tree) if scan_layers else unstack_layers(tree)


def per_layer_paths(path: Path, num_layers: int) -> list[tuple[Path, int | None]]:
    """The unrolled paths a parameter path stands for, with the layer index into its leading
    axis: [(path, None)] outside the stacks, [(.../layers_i/..., i) for each i] inside."""
    for j, part in enumerate(path[:-1]):
        if part in STACKS:
            prefix = STACKS[part]
            return [(path[:j] + (f"{prefix}{i}",) + path[j + 1 :], i) for i in range(num_layers)]
    return [(path, None)]
