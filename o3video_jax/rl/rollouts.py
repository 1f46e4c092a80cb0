"""Host-side glue of the GSPO loop: prompt batches -> samples -> text -> training rows.

Kept apart from the loop so the demo's held-out evaluation (greedy rollouts + rewards) uses
exactly the code the training rollouts use.

Shared vision (docs/design.md decision 6, training side): training rows keep the pixels once per
prompt (`sampler.VISION_FIELDS` with B // G rows, text fields with B rows) and the model runs
with `vision_group=G`, so the log-prob and update forwards run the vision tower (and store its
activations) once per prompt instead of G times. `can_share_vision` is the one rule that says
when this layout can be used; elsewhere the pixels are repeated (`expand_vision`), which gives
the same log-probs and gradients.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, PartitionSpec

from o3video_jax.data.tokenizer import Tokenizer
from o3video_jax.models.qwen2_5_vl import ModelInputs
from o3video_jax.rewards import REWARD_NAMES
from o3video_jax.rl import sampler as sampler_lib
from o3video_jax.train import losses
from o3video_jax.train.sharding import BATCH_AXES

_TEXT_FIELDS = ("input_ids", "segment_ids", "feature_index")
VISION_FIELDS = sampler_lib.VISION_FIELDS


# The reward terms a GSPO step logs: the seven rewards and their total.
REWARD_TERMS = (*REWARD_NAMES, "total")


def sampling_config(
    settings: Mapping[str, Any],
    eos_ids: Sequence[int],
    pad_id: int,
    *,
    greedy: bool = False,
    group_size: int | None = None,
    max_new_tokens: int | None = None,
) -> sampler_lib.SamplingConfig:
    """THE builder of the sampler's settings (GSPO rollouts, held-out and benchmark evaluation,
    the AOT plan, infer): from a config section (`config.rl`, `config.eval`) or a dict with
    the same field names: `max_new_tokens`, `temperature`, `top_p`, `top_k`,
    `repetition_penalty`, `group_size` (absent fields: the sampler's defaults). `greedy` sets
    temperature 0 (top-p and top-k then do not apply); `group_size` and `max_new_tokens`
    override the section's."""
    get = settings.get
    return sampler_lib.SamplingConfig(
        max_new_tokens=int(max_new_tokens if max_new_tokens is not None else get("max_new_tokens")),
        temperature=0.0 if greedy else float(get("temperature", 1.0)),
        top_p=1.0 if greedy else float(get("top_p", 1.0)),
        top_k=0 if greedy else int(get("top_k", 0)),
        eos_ids=tuple(int(e) for e in eos_ids),
        pad_id=int(pad_id),
        group_size=int(group_size if group_size is not None else get("group_size", 1)),
        repetition_penalty=float(get("repetition_penalty", 1.0)),
    )


# ---- shared vision rows ------------------------------------------------------------------------
def can_share_vision(prompts: int, shards: int, microbatches: int = 1) -> bool:
    """THE rule for keeping the pixels once per prompt (`vision_group = G`).

    The vision rows (one per prompt) are sharded over the batch axes like the text rows, and
    `steps.accumulate` splits them into `microbatches`; each microbatch's vision rows must
    split evenly over the `shards` data-parallel shards, as the text rows must. When they do
    not (e.g. 3 prompts on 4 shards), the pixels are repeated per row instead (vision_group=1):
    same results, the vision tower then runs G times.
    """
    return prompts % microbatches == 0 and (prompts // microbatches) % max(shards, 1) == 0


def batch_shards(mesh: Mesh | None, local: bool = False) -> int:
    """Data-parallel shards of the mesh (1 without a mesh); `local`: this process's share,
    as `sharding.shard_batch` counts them for host-local rows."""
    if mesh is None:
        return 1
    n = math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.axis_names)
    return max(n // jax.process_count(), 1) if local else n


def vision_group(inputs: ModelInputs) -> int:
    """Text rows per vision row (static): 1 for repeated pixels, G for shared ones."""
    b, bv = inputs.batch_size, inputs.pixel_values.shape[0]
    if bv == 0 or b % bv:
        raise ValueError(f"{b} text rows are not a multiple of the {bv} vision rows")
    return b // bv


def expand_vision(inputs: ModelInputs) -> ModelInputs:
    """Shared-vision rows -> the same rows with the pixels repeated per row (vision_group 1).
    numpy stays numpy (host), jax arrays stay jax (under jit)."""
    g = vision_group(inputs)
    if g == 1:
        return inputs

    def rep(x):
        return np.repeat(x, g, axis=0) if isinstance(x, np.ndarray) else jnp.repeat(x, g, axis=0)

    return inputs.replace(**{f: rep(getattr(inputs, f)) for f in VISION_FIELDS})


def share_vision(inputs: ModelInputs, group_size: int) -> ModelInputs:
    """Rows with repeated pixels (host numpy, groups of `group_size` contiguous rows of one
    prompt) -> the shared form: the first row of each group's pixels. Shared rows pass."""
    g = vision_group(inputs)
    if g == group_size:
        return inputs
    if g != 1:
        raise ValueError(f"vision rows are shared by {g} rows, not by group_size {group_size}")
    return inputs.replace(
        **{f: np.asarray(getattr(inputs, f))[::group_size] for f in VISION_FIELDS}
    )


def trim_left(inputs: ModelInputs, pad_id: int, buckets: Sequence[int]) -> ModelInputs:
    """Drops left-padding columns shared by every row, then left-pads to the prompt bucket
    (`sampler.bucket_prompts`): the prefill sees the shortest bucket that fits the batch."""
    if not len(buckets):
        raise ValueError(
            "no prompt buckets: rl.prompt_buckets=[] is derived from the length budget by "
            "drivers.preflight.apply(config, num_devices), which must run first"
        )
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


def take_rows(tree, idx: np.ndarray, vision_idx: np.ndarray | None = None):
    """Rows `idx` of every leaf of a batch (numpy); `ModelInputs.positions` is [3, B, L].
    With `vision_idx`, the `VISION_FIELDS` take those rows instead (shared-vision rows)."""

    def take(path, x):
        last = path[-1] if path else None
        name = last.name if isinstance(last, jax.tree_util.GetAttrKey) else None
        if name == "positions":
            return np.asarray(x)[:, idx]
        if vision_idx is not None and name in VISION_FIELDS:
            return np.asarray(x)[vision_idx]
        return np.asarray(x)[idx]

    return jax.tree_util.tree_map_with_path(take, tree)


def group_minibatches(
    batch: dict[str, Any],
    group_size: int,
    minibatches: int,
    rng: np.random.Generator,
    *,
    shared: bool = True,
    shards: int = 1,
    microbatches: int = 1,
) -> list[dict[str, Any]]:
    """Splits training rows (B*G rows, the G rows of a prompt contiguous; pixels shared or
    repeated) into `minibatches` of whole groups: the prompts are shuffled with `rng` and
    minibatch m takes prompts perm[m::minibatches] (sorted) with all their rows.

    Each minibatch keeps the pixels once per prompt when `shared` and `can_share_vision`
    (its prompts, `shards`, `microbatches`) allow, and repeats them otherwise. When the
    prompts do not divide into `minibatches`, whole groups cannot be kept: rows are split
    one by one (rows perm[m::minibatches]), pixels repeated. Group advantages must have been
    computed on the whole batch before (they are per row in batch["advantages"]).
    """
    n_rows = batch["advantages"].shape[0]
    if n_rows % minibatches:
        raise ValueError(f"{n_rows} rollout rows are not divisible by minibatches={minibatches}")
    if n_rows % group_size:
        raise ValueError(f"{n_rows} rollout rows are not groups of group_size={group_size}")
    batch = {**batch, "inputs": share_vision(batch["inputs"], group_size)}
    n_prompts = n_rows // group_size
    if n_prompts % minibatches:
        batch = {**batch, "inputs": expand_vision(batch["inputs"])}
        perm = rng.permutation(n_rows)
        return [take_rows(batch, np.sort(perm[m::minibatches])) for m in range(minibatches)]

    perm = rng.permutation(n_prompts)
    keep = shared and can_share_vision(n_prompts // minibatches, shards, microbatches)
    out = []
    for m in range(minibatches):
        prompts = np.sort(perm[m::minibatches])
        rows = (prompts[:, None] * group_size + np.arange(group_size)).reshape(-1)
        mb = take_rows(batch, rows, vision_idx=prompts)
        if not keep:
            mb["inputs"] = expand_vision(mb["inputs"])
        out.append(mb)
    return out


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
    prompt: ModelInputs,
    out_host: sampler_lib.SampleOutput,
    group_size: int,
    length: int,
    pad_id,
    *,
    share: bool = False,
    mesh: Mesh | None = None,
) -> dict[str, Any]:
    """Numpy rows for the log-prob and GSPO steps: inputs, shifted targets and their mask.

    With `share`, the pixels are kept once per prompt when `can_share_vision` allows it on
    `mesh` (host-local rows: this process's shards), else repeated per row.
    """
    keep = share and can_share_vision(prompt.batch_size, batch_shards(mesh, local=True))
    inputs, mask = sampler_lib.completion_inputs(prompt, out_host, group_size, share_vision=keep)
    inputs = jax.tree.map(np.asarray, inputs)
    inputs, mask = left_pad_rows(inputs, np.asarray(mask), length, pad_id)
    ids = np.asarray(inputs.input_ids)
    targets = np.concatenate([ids[:, 1:], np.full((ids.shape[0], 1), pad_id, ids.dtype)], 1)
    # Position p's logits predict the token at p + 1: the target mask is the mask shifted.
    tmask = np.concatenate([mask[:, 1:], np.zeros((mask.shape[0], 1), mask.dtype)], 1)
    return {"inputs": inputs, "targets": targets.astype(np.int32), "mask": tmask}


def make_logprob_fn(model: nn.Module, mesh: Mesh, rules, *, chunk: int, temperature: float):
    """`logp(params, batch) -> float32[B, L]` log-probs of batch["targets"] (0 off the mask),
    at `temperature`, computed in chunks like the training loss. The pixels may be shared by
    each group (`training_rows(..., share=True)`): the vision tower then runs once per prompt.
    `logp.lower(params, batch)` lowers it ahead of time (abstract arguments)."""

    def fn(params, batch):
        variables = {"params": params}
        inputs = batch["inputs"]
        vg = vision_group(inputs)
        kw = {"vision_group": vg} if vg > 1 else {}  # models without the argument still work
        hidden = model.apply(variables, inputs, method="hidden_states", **kw)
        unembed = lambda h: model.apply(variables, h, method="unembed")
        logp, _ = losses.token_logprobs(
            hidden, batch["targets"], unembed, chunk=chunk, temperature=temperature
        )
        return jnp.where(batch["mask"] > 0, logp, 0.0)

    jitted = jax.jit(fn)

    def run(params, batch):
        with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
            return jitted(params, batch)

    def lower(params, batch):  # ahead-of-time compilation (train.aot)
        with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
            return jitted.lower(params, batch)

    run.lower = lower
    return run
