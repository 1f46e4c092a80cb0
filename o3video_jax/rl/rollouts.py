"""Host-side glue of the GSPO loop: prompt batches -> samples -> text -> training rows.

Kept apart from the loop so the demo's held-out evaluation (greedy rollouts + rewards) uses
exactly the code the training rollouts use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, PartitionSpec

from o3video_jax.data.tokenizer import Tokenizer
from o3video_jax.models.qwen2_5_vl import ModelInputs
from o3video_jax.rl import sampler as sampler_lib
from o3video_jax.train import losses
from o3video_jax.train.sharding import BATCH_AXES

_TEXT_FIELDS = ("input_ids", "segment_ids", "feature_index")


def trim_left(inputs: ModelInputs, pad_id: int, buckets: Sequence[int]) -> ModelInputs:
    """Drops left-padding columns shared by every row, then left-pads to the prompt bucket
    (`sampler.bucket_prompts`): the prefill sees the shortest bucket that fits the batch."""
    seg = np.asarray(inputs.segment_ids)
    used = int((seg != 0).any(axis=0).sum()) if seg.size else 0
    cut = inputs.seq_len - max(used, 1)
    if cut > 0:
        kw = {f: np.asarray(getattr(inputs, f))[:, cut:] for f in _TEXT_FIELDS}
        kw["positions"] = np.asarray(inputs.positions)[:, :, cut:]
        inputs = inputs.replace(**kw)
    return sampler_lib.bucket_prompts(inputs, buckets, pad_id)


def fill_padding_rows(inputs: ModelInputs, valid: np.ndarray) -> ModelInputs:
    """Padding prompts of a final partial batch (all-padding rows) become copies of the first
    valid prompt, so every row ends at L - 1 as the sampler requires; their results are
    masked out by the caller."""
    valid = np.asarray(valid, bool)
    if valid.all():
        return inputs
    if not valid.any():
        raise ValueError("a prompt batch without any valid prompt")
    return take_rows(inputs, np.where(valid, np.arange(len(valid)), int(np.argmax(valid))))


def take_rows(tree, idx: np.ndarray):
    """Rows `idx` of every leaf of a batch (numpy); `ModelInputs.positions` is [3, B, L]."""

    def take(path, x):
        last = path[-1] if path else None
        if isinstance(last, jax.tree_util.GetAttrKey) and last.name == "positions":
            return np.asarray(x)[:, idx]
        return np.asarray(x)[idx]

    return jax.tree_util.tree_map_with_path(take, tree)


def host_local(x: jax.Array, mesh: Mesh | None) -> np.ndarray:
    """This process's rows of a batch-sharded global array (the whole array single-process)."""
    if mesh is None or jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
    spec = PartitionSpec(axes, *([None] * (x.ndim - 1)))
    return np.asarray(multihost_utils.global_array_to_host_local_array(x, mesh, spec))


def decode_completions(
    tokenizer: Tokenizer, tokens: np.ndarray, lengths: np.ndarray, eos_ids: Sequence[int]
) -> list[str]:
    """Completion texts: tokens up to the length, a final EOS dropped."""
    out = []
    for row, n in zip(tokens, lengths, strict=True):
        ids = [int(t) for t in row[: int(n)]]
        if ids and ids[-1] in eos_ids:
            ids = ids[:-1]
        out.append(tokenizer.decode(ids))
    return out


def left_pad_rows(inputs: ModelInputs, mask: np.ndarray, length: int, pad_id: int):
    """Left-pads training rows (prompt + completion) to `length` text positions, so the
    log-prob and update steps compile once whatever the prompt bucket."""
    extra = length - inputs.seq_len
    if extra < 0:
        raise ValueError(f"rows of length {inputs.seq_len} exceed the training length {length}")

    def left(x, value):
        x = np.asarray(x)
        widths = [(0, 0)] * (x.ndim - 1) + [(extra, 0)]
        return np.pad(x, widths, constant_values=value)

    inputs = inputs.replace(
        input_ids=left(inputs.input_ids, pad_id),
        segment_ids=left(inputs.segment_ids, 0),
        positions=left(inputs.positions, 0),
        feature_index=left(inputs.feature_index, -1),
    )
    return inputs, left(mask, 0.0)


def training_rows(
    prompt: ModelInputs, out_host: sampler_lib.SampleOutput, group_size: int, length: int, pad_id
) -> dict[str, Any]:
    """Numpy rows for the log-prob and GSPO steps: inputs, shifted targets and their mask."""
    inputs, mask = sampler_lib.completion_inputs(prompt, out_host, group_size)
    inputs = jax.tree.map(np.asarray, inputs)
    inputs, mask = left_pad_rows(inputs, np.asarray(mask), length, pad_id)
    ids = np.asarray(inputs.input_ids)
    targets = np.concatenate([ids[:, 1:], np.full((ids.shape[0], 1), pad_id, ids.dtype)], 1)
    # Position p's logits predict the token at p + 1: the target mask is the mask shifted.
    tmask = np.concatenate([mask[:, 1:], np.zeros((mask.shape[0], 1), mask.dtype)], 1)
    return {"inputs": inputs, "targets": targets.astype(np.int32), "mask": tmask}


def make_logprob_fn(model: nn.Module, mesh: Mesh, rules, *, chunk: int, temperature: float):
    """`logp(params, batch) -> float32[B, L]` log-probs of batch["targets"] (0 off the mask),
    at `temperature`, computed in chunks like the training loss."""

    def fn(params, batch):
        variables = {"params": params}
        hidden = model.apply(variables, batch["inputs"], method="hidden_states")
        unembed = lambda h: model.apply(variables, h, method="unembed")
        logp, _ = losses.token_logprobs(
            hidden, batch["targets"], unembed, chunk=chunk, temperature=temperature
        )
        return jnp.where(batch["mask"] > 0, logp, 0.0)

    jitted = jax.jit(fn)

    def run(params, batch):
        with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
            return jitted(params, batch)

    return run
