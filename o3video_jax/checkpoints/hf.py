"""Hugging Face Qwen2.5-VL checkpoints: import into our Flax tree and export back.

    config, params = hf.load("/ckpt/Qwen2.5-VL-7B-Instruct")                 # host arrays
    config, params = hf.load(path, jnp.bfloat16, mesh=mesh, rules=rules)    # sharded
    hf.save("/out", config, params)        # transformers / vLLM can `from_pretrained` it

Our parameter tree mirrors the HF names (BRIEF "Flax parameter tree"), so the mapping is
mechanical: `blocks_3` <-> `blocks.3`, `mlp_0` <-> `mlp.0`, leaf `kernel` <-> `weight`
transposed ([in, out] vs torch's [out, in]), `scale` / `embedding` <-> `weight`, and the
Conv3d patch embedding (Dv, C, T, P, P) <-> a [C*T*P*P, Dv] kernel. Both key layouts are read:
4.x / Hub (`visual.*`, `model.layers.*`) and 5.x (`model.visual.*`,
`model.language_model.*`); we write the Hub layout, which transformers 5.x also writes.

Loading is shapes first (`jax.eval_shape` of the model init), then validation of every
checkpoint key and shape against them (before any tensor is read), then one tensor at a time:
with a mesh each tensor goes straight into its NamedSharding, and each device's slice is read
from the memory-mapped file, so no host ever holds more than one full tensor (docs/design.md decision 4).

Both parameter layouts (`config.scan_layers`, see `checkpoints.layout`) map to the same
per-layer checkpoint keys: a stacked parameter [N, ...] is N tensors `...layers.{i}...`. Loading
into the scanned layout assembles each device's slice of the stack from the N files' slices;
saving writes one layer at a time.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import traverse_util
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from o3video_jax import io
from o3video_jax.checkpoints import layout, safetensors_io
from o3video_jax.mesh import DEFAULT_RULES, MeshAxes
from o3video_jax.models.qwen2_5_vl import Qwen25VL, Qwen25VLConfig
from o3video_jax.models.qwen2_5_vl.inputs import init_inputs

Path_ = tuple[str, ...]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_PATCH_EMBED = ("visual", "patch_embed", "kernel")
# HF 5.x in-memory prefixes -> the Hub / 4.x prefixes we use as canonical names.
_V5_PREFIXES = (("model.visual.", "visual."), ("model.language_model.", "model."))
# Non-parameter buffers that some exporters include.
_IGNORED = re.compile(r".*\.(inv_freq|rotary_emb\..*)$")


# ---- names and layouts ---------------------------------------------------------------------
def hf_name(path: Path_) -> str:
    """Our param path -> the Hub checkpoint key, e.g. model/layers_0/mlp/up_proj/kernel ->
    model.layers.0.mlp.up_proj.weight."""
    if path == _PATCH_EMBED:
        return "visual.patch_embed.proj.weight"
    parts = []
    for p in path[:-1]:
        m = re.fullmatch(r"(blocks|layers|mlp)_(\d+)", p)
        parts += [m.group(1), m.group(2)] if m else [p]
    leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
    if path[-1] not in leaf:
        raise ValueError(f"parameter {'/'.join(path)} has no Hugging Face equivalent")
    return ".".join(parts + [leaf[path[-1]]])


def canonical_name(key: str) -> str:
    """A checkpoint key in either layout -> the Hub / 4.x layout."""
    for new, old in _V5_PREFIXES:
        if key.startswith(new):
            return old + key[len(new) :]
    return key


def hf_shape(config: Qwen25VLConfig, path: Path_, shape: Sequence[int]) -> tuple[int, ...]:
    """The checkpoint shape of our parameter `path` of shape `shape`."""
    if path == _PATCH_EMBED:
        v = config.vision
        return (shape[1], v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    if path[-1] == "kernel":
        return tuple(reversed(shape))
    return tuple(shape)


def _to_ours(path: Path_, w: np.ndarray) -> np.ndarray:
    """Checkpoint tensor -> our layout. Views only (transpose / reshape), so it stays lazy."""
    if path == _PATCH_EMBED:
        return w.reshape(w.shape[0], -1).T  # (Dv, C, T, P, P) -> [C*T*P*P, Dv]
    if path[-1] == "kernel":
        return w.T
    return w


def _to_hf(config: Qwen25VLConfig, path: Path_, x: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel":
        return x.T.reshape(hf_shape(config, path, x.shape))
    return x


# ---- shapes and shardings ------------------------------------------------------------------
def abstract_params(config: Qwen25VLConfig):
    """The (possibly logically boxed) params of `Qwen25VL(config)` as ShapeDtypeStructs."""
    model = Qwen25VL(config)
    init = lambda: model.init(jax.random.key(0), init_inputs(config))
    return jax.eval_shape(init)["params"]


def param_shardings(abstract, mesh: jax.sharding.Mesh, rules: Sequence[tuple[str, MeshAxes]]):
    """NamedSharding per param from the model's logical axis names and the rule table."""
    specs = nn.get_partition_spec(abstract)
    return nn.logical_to_mesh_sharding(specs, mesh, list(rules))


def _flat(tree) -> dict[Path_, object]:
    return traverse_util.flatten_dict(nn.meta.unbox(tree))


# ---- load ----------------------------------------------------------------------------------
def _open_checkpoint(path: Path) -> dict[str, safetensors_io.SafetensorsFile]:
    """Canonical key -> the file that holds it (single file or index-listed shards)."""
    if (path / INDEX_FILE).exists():
        weight_map = json.loads((path / INDEX_FILE).read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    elif (path / SINGLE_FILE).exists():
        names = [SINGLE_FILE]
    else:
        raise ValueError(f"{path} has neither {SINGLE_FILE} nor {INDEX_FILE}")
    files: dict[str, safetensors_io.SafetensorsFile] = {}
    located: dict[str, tuple[str, safetensors_io.SafetensorsFile]] = {}
    for name in names:
        if not (path / name).exists():
            raise ValueError(f"{path / INDEX_FILE} lists {name}, which does not exist")
        files[name] = safetensors_io.SafetensorsFile(path / name)
        for key in files[name].keys():
            canon = canonical_name(key)
            if canon in located:
                raise ValueError(
                    f"checkpoint key {key} duplicates {located[canon][0]} (same tensor twice)"
                )
            located[canon] = (key, files[name])
    return located


def load(
    path: str | os.PathLike,
    dtype=jnp.float32,
    *,
    mesh: jax.sharding.Mesh | None = None,
    rules: Sequence[tuple[str, MeshAxes]] | None = None,
    progress: bool = True,
    scan_layers: bool = False,
) -> tuple[Qwen25VLConfig, dict]:
    """Reads an HF Qwen2.5-VL directory (config.json + safetensors) into our param tree.

    Returns (config, params): params are `dtype` arrays in our layout, placed into their
    NamedShardings on `mesh` (logical rules: `rules`, default `DEFAULT_RULES`) when a mesh is
    given. The config's `param_dtype` and compute `dtype` are set to `dtype`, its `scan_layers`
    (the params' layout, `checkpoints.layout`) to `scan_layers`.
    Raises ValueError naming the key for missing, unexpected or mis-shaped tensors, and for a
    config.json of another architecture. A tied checkpoint may omit `lm_head.weight`; when
    present it is ignored (the tied model unembeds with `embed_tokens`).
    """
    path = Path(io.local_dir(path))  # gs://: a per-process cached copy (memory-mapped below)
    dtype_name = jnp.dtype(dtype).name
    config = Qwen25VLConfig.from_hf_json(
        path, dtype=dtype_name, param_dtype=dtype_name, scan_layers=scan_layers
    )
    checkpoint = _open_checkpoint(path)

    abstract = abstract_params(config)
    flat_abstract = _flat(abstract)
    shardings = None
    if mesh is not None:
        shardings = _flat(
            param_shardings(abstract, mesh, DEFAULT_RULES if rules is None else rules)
        )

    # Checkpoint key -> (our param path, its unrolled path, layer index or None).
    wanted = {}
    for p in flat_abstract:
        for unrolled, i in _per_layer(config, p):
            wanted[hf_name(unrolled)] = (p, unrolled, i)
    missing = sorted(set(wanted) - set(checkpoint))
    if missing:
        raise ValueError(f"checkpoint {path} is missing {len(missing)} tensors: {missing[:8]}")
    ignored = {"lm_head.weight"} if config.tie_word_embeddings else set()
    unexpected = sorted(k for k in checkpoint if k not in wanted and k not in ignored)
    unexpected = [k for k in unexpected if not _IGNORED.match(k)]
    if unexpected:
        raise ValueError(f"checkpoint {path} has unexpected tensors: {unexpected[:8]}")
    for name, (p, unrolled, i) in wanted.items():
        key, file = checkpoint[name]
        shape = flat_abstract[p].shape[0 if i is None else 1 :]
        want = hf_shape(config, unrolled, shape)
        if file.shape(key) != want:
            raise ValueError(
                f"checkpoint tensor {key} has shape {file.shape(key)}, expected {want} "
                f"for {Path(file.path).name} under {path / 'config.json'}"
            )

    np_dtype = np.dtype(dtype)
    # Our param path -> its checkpoint tensors (lazy views in our layout), one per layer.
    sources: dict[Path_, list] = {p: [] for p in flat_abstract}
    for name, (p, unrolled, _) in wanted.items():
        key, file = checkpoint[name]
        sources[p].append(
            lambda unrolled=unrolled, key=key, file=file: _to_ours(unrolled, file.get(key))
        )
    flat_params = {}
    for p, tensors in tqdm(sources.items(), desc=f"loading {path.name}", disable=not progress):
        stacked = _per_layer(config, p)[0][1] is not None
        views = [t() for t in tensors]  # in layer order (wanted lists layers 0..N-1)
        if shardings is None:
            host = [np.asarray(v, dtype=np_dtype) for v in views]
            flat_params[p] = jnp.asarray(np.stack(host) if stacked else host[0])
        elif stacked:
            # Each device's slice of the stack: its layers' slices of their files.
            def read(idx, views=views):
                return np.stack([np.asarray(v[idx[1:]], np_dtype) for v in views[idx[0]]])

            flat_params[p] = jax.make_array_from_callback(
                flat_abstract[p].shape, shardings[p], read
            )
        else:
            tensor = views[0]
            flat_params[p] = jax.make_array_from_callback(
                tensor.shape, shardings[p], lambda idx, t=tensor: np.asarray(t[idx], np_dtype)
            )
    return config, traverse_util.unflatten_dict(flat_params)


def _per_layer(config: Qwen25VLConfig, path: Path_) -> list[tuple[Path_, int | None]]:
    """The unrolled paths (and layer indexes) of one of our param paths (see `layout`)."""
    n = config.vision.depth if path[0] == "visual" else config.text.num_hidden_layers
    return layout.per_layer_paths(path, n)


# ---- save ----------------------------------------------------------------------------------
def _parse_size(size: int | str) -> int:
    """'5GB' -> 5e9, '500MiB' -> 500 * 2**20 (transformers' convention), ints pass through."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)\s*", size.upper())
    if not m:
        raise ValueError(f"max_shard_size {size!r} is not like '5GB' or '500MiB'")
    unit = m.group(2)
    base = 1024 if "I" in unit else 1000
    power = "BKMGT".index(unit[0]) if unit != "B" else 0
    return int(float(m.group(1)) * base**power)


def _host_array(x) -> np.ndarray:
    """A full host copy of one (possibly sharded, possibly multi-host) array."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def save(
    path: str | os.PathLike,
    config: Qwen25VLConfig,
    params,
    *,
    max_shard_size: int | str = "5GB",
    dtype=None,
    progress: bool = True,
) -> None:
    """Writes config.json and safetensors in the Hub key layout (`from_pretrained` reads it).

    config.json is `config.to_hf_dict()`: the source checkpoint's config.json unchanged when
    the config was loaded from one (only a declared dtype follows `dtype`), else generated.

    Tensors above `max_shard_size` in total are split into model-0000k-of-0000n.safetensors
    with a model.safetensors.index.json. Arrays are gathered one tensor at a time; `dtype`
    casts on the way out (default: keep each param's dtype). Either parameter layout is
    accepted (`checkpoints.layout`; the checkpoint is the same). Every process must call this
    in a multi-host run (the gathers are collective); only process 0 writes.
    """
    path = epath.Path(os.fspath(path))  # local or gs://
    flat = _flat(params)
    unrolled_cfg = config.replace(scan_layers=False)
    config = config.replace(scan_layers=bool(layout.is_stacked(params)))
    expected = _flat(abstract_params(config))
    if set(flat) != set(expected):
        extra, absent = sorted(set(flat) - set(expected)), sorted(set(expected) - set(flat))
        raise ValueError(f"params do not match the config: extra {extra[:4]}, missing {absent[:4]}")
    for p, x in flat.items():
        if tuple(x.shape) != tuple(expected[p].shape):
            raise ValueError(
                f"param {'/'.join(p)} has shape {tuple(x.shape)}, the config expects "
                f"{tuple(expected[p].shape)}"
            )

    # Tensors in the unrolled layout's order, so both layouts write identical files.
    located = {u: (p, i) for p in flat for u, i in _per_layer(config, p)}
    order = list(flat) if not config.scan_layers else list(_flat(abstract_params(unrolled_cfg)))
    specs, sources = [], {}
    for unrolled in order:
        p, i = located[unrolled]
        x = flat[p]
        out_dtype = np.dtype(dtype if dtype is not None else x.dtype)
        name = hf_name(unrolled)
        shape = tuple(x.shape)[0 if i is None else 1 :]
        specs.append((name, hf_shape(config, unrolled, shape), out_dtype))
        sources[name] = (p, unrolled, i)
    shards = _plan_shards(specs, _parse_size(max_shard_size))

    writer = jax.process_index() == 0
    if writer:
        io.makedirs(path)
        hf_config = config.to_hf_dict()
        if dtype is not None:  # the declared dtype follows a cast; no key is added
            for d in (hf_config, hf_config.get("text_config") or {}):
                for key in ("dtype", "torch_dtype"):
                    if key in d:
                        d[key] = np.dtype(dtype).name
        (path / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        for stale in [*path.glob("model*.safetensors"), path / INDEX_FILE]:
            stale.unlink(missing_ok=True)

    bar = tqdm(total=len(specs), desc=f"saving {path.name}", disable=not progress)

    def fetch(name: str) -> np.ndarray:
        p, unrolled, i = sources[name]
        bar.update()
        x = flat[p] if i is None else flat[p][i]  # one layer of a stack at a time
        return _to_hf(config, unrolled, _host_array(x))

    names = (
        [SINGLE_FILE]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    for file_name, shard in zip(names, shards, strict=True):
        if writer:
            safetensors_io.write(path / file_name, shard, fetch)
        else:  # still take part in the collective gathers
            for name, _, _ in shard:
                fetch(name)
    bar.close()
    if writer and len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(_nbytes(s) for s in specs)},
            "weight_map": {s[0]: f for f, shard in zip(names, shards, strict=True) for s in shard},
        }
        (path / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _nbytes(spec: tuple[str, tuple[int, ...], np.dtype]) -> int:
    return int(np.prod(spec[1], dtype=np.int64)) * np.dtype(spec[2]).itemsize


def _plan_shards(specs, max_bytes: int) -> list[list]:
    """Greedy split in order; a tensor larger than the limit gets a shard of its own."""
    shards, current, size = [], [], 0
    for spec in specs:
        if current and size + _nbytes(spec) > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(spec)
        size += _nbytes(spec)
    shards.append(current)
    return shards
