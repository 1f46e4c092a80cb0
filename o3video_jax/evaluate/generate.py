"""Batched generation of chat requests with the project's sampler (fixed shapes per call).

A request is one tokenized chat (a `Segment` with its vision items) and a PRNG key; each
sampler call takes `batch_size` requests, left-padded to the smallest prompt bucket that
fits and with its vision patches padded to the smallest patch bucket that fits, with G samples
each (the prompt prefilled once, its cache broadcast to the G rows).
Requests are taken longest first (less padding per batch); a short last call is filled with
copies of its first request (results dropped), so every call has the same batch shape: one
compile per (prompt bucket, patch bucket) pair that occurs.

Patch buckets: by default powers of two from 64 up to `max_patches` (and `max_patches`
itself), so a batch of small frames does not run the vision tower over the whole per-row
budget (V-STaR's is 172,224 patches, 16 frames of 1080p; a row of 16 frames at 448x252 needs
9,216). Pass `patch_buckets=[max_patches]` for a single vision shape (one compile per prompt bucket).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from o3video_jax.checkpoints import layout
from o3video_jax.data.model_inputs import Segment, build_model_inputs
from o3video_jax.data.tokenizer import Tokenizer
from o3video_jax.models.qwen2_5_vl import Qwen25VL, Qwen25VLConfig
from o3video_jax.rl import rollouts
from o3video_jax.rl import sampler as sampler_lib

__all__ = [
    "Generator",
    "bounded_model_config",
    "eval_model_config",
    "frame_patches",
    "OverBudget",
    "Request",
    "check_budget",
    "default_patch_buckets",
    "request_key",
]


class OverBudget(Exception):
    reason = "over_budget"


@dataclasses.dataclass(frozen=True)
class Request:
    segment: Segment
    key: np.ndarray  # uint32[2]: the request's base key; sample g uses split(key, G)[g]


def request_key(seed: int, item_key: str, call_index: int) -> np.ndarray:
    """A key that depends only on (seed, item, call): the same samples on resume."""
    k = jax.random.fold_in(jax.random.PRNGKey(seed), int(item_key))
    return np.asarray(jax.random.fold_in(k, call_index))


def default_patch_buckets(max_patches: int, unit: int = 4, smallest: int = 64) -> list[int]:
    """Powers of two from `smallest` below `max_patches`, then `max_patches` (each a multiple
    of the merge unit)."""
    out, b = [], smallest
    while b < max_patches:
        if b % unit == 0:
            out.append(b)
        b *= 2
    return out + [int(max_patches)]


def eval_model_config(model_config: Qwen25VLConfig, ev) -> Qwen25VLConfig:
    """The model config an evaluation (`ev`: `config.eval`) runs with: `bounded_model_config`
    for its pixel budgets and `eval.prefill_block`."""
    pixels = max(ev.image_max_pixels, ev.video_max_pixels)
    return bounded_model_config(
        model_config, max_pixels=pixels, prefill_block=int(ev.get("prefill_block", 0))
    )


def bounded_model_config(
    model_config: Qwen25VLConfig, *, max_pixels: int, prefill_block: int
) -> Qwen25VLConfig:
    """Memory linear in patches and tokens (docs/design.md decision 16):
    `vision.max_frame_patches` is the bound `max_pixels` (the largest frame or image budget)
    implies for one frame (every request is checked against it), and `text.attention_chunk`
    is `prefill_block`: prompts longer than it are prefilled in [block, block] tiles instead of
    one [T, T] score matrix (0 = dense)."""
    v = model_config.vision
    vision = dataclasses.replace(v, max_frame_patches=v.frame_patches_for(max_pixels))
    text = dataclasses.replace(model_config.text, attention_chunk=int(prefill_block))
    return dataclasses.replace(model_config, vision=vision, text=text)


def frame_patches(segment: Segment) -> int:
    """The most patches of one frame (one temporal grid step) or image of a request."""
    return max((h * w for v in segment.vision for _, h, w in [v.grid_thw]), default=0)


def check_budget(
    segment: Segment, buckets: Sequence[int], max_patches: int, max_frame_patches: int = 0
) -> None:
    """Raises OverBudget when a request exceeds the largest prompt bucket, the patch budget or
    (when > 0) the model's bound on one frame's patches."""
    n = len(segment.input_ids)
    if n > max(buckets):
        raise OverBudget(f"{n} prompt tokens exceed the largest bucket {max(buckets)}")
    p = sum(v.num_patches for v in segment.vision)
    if p > max_patches:
        raise OverBudget(f"{p} vision patches exceed eval.max_patches {max_patches}")
    f = frame_patches(segment)
    if max_frame_patches and f > max_frame_patches:
        raise OverBudget(
            f"a frame of {f} patches exceeds the model's vision.max_frame_patches "
            f"{max_frame_patches} (the eval pixel budgets' bound)"
        )


class Generator:
    """`gen(requests) -> [[G texts] per request]` with fixed-size sampler calls."""

    def __init__(
        self,
        model_config: Qwen25VLConfig,
        params,
        tokenizer: Tokenizer,
        sampling: sampler_lib.SamplingConfig,
        *,
        batch_size: int,
        buckets: Sequence[int],
        max_patches: int,
        patch_buckets: Sequence[int] | None = None,
        mesh=None,
        rules=None,
    ):
        shards = rollouts.batch_shards(mesh)
        if batch_size % shards or (batch_size * sampling.group_size) % shards:
            raise ValueError(
                f"eval.batch_size {batch_size} must be a multiple of the mesh's {shards} "
                "data-parallel shards"
            )
        kw = {} if rules is None else {"rules": rules}
        self.sample = sampler_lib.make_sampler(Qwen25VL(model_config), sampling, mesh=mesh, **kw)
        # Either parameter layout (checkpoints.layout); a no-op when it already matches.
        params = layout.to_layout(params, model_config.scan_layers)
        self.config, self.params, self.tokenizer = model_config, params, tokenizer
        self.sampling, self.mesh = sampling, mesh
        self.batch_size, self.buckets = batch_size, sorted(int(b) for b in buckets)
        self.max_patches = int(max_patches)
        unit = model_config.vision.merge_unit
        if patch_buckets:
            self.patch_buckets = sorted(int(b) for b in patch_buckets)
            bad = [b for b in self.patch_buckets if b % unit or b > self.max_patches]
            if bad:
                raise ValueError(
                    f"eval.patch_buckets {bad}: each must be a multiple of {unit} and at most "
                    f"eval.max_patches {self.max_patches}"
                )
            if self.patch_buckets[-1] != self.max_patches:
                self.patch_buckets.append(self.max_patches)
        else:
            self.patch_buckets = default_patch_buckets(self.max_patches, unit)
        self.calls = 0

    def check(self, segment: Segment) -> None:
        """Raises OverBudget when a request cannot fit the largest bucket / patch budget."""
        check_budget(segment, self.buckets, self.max_patches, self.config.vision.max_frame_patches)

    def __call__(self, requests: Sequence[Request]) -> list[list[str]]:
        # Longest first, so each batch pads to a bucket close to its own lengths; the order is
        # a function of the requests alone (resume sees the same batches).
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i].segment.input_ids))
        g, out = self.sampling.group_size, []
        for start in range(0, len(order), self.batch_size):
            chunk = [requests[i] for i in order[start : start + self.batch_size]]
            n = len(chunk)
            chunk += [chunk[0]] * (self.batch_size - n)
            length = sampler_lib.bucket_length(
                max(len(r.segment.input_ids) for r in chunk), self.buckets
            )
            patches = sampler_lib.bucket_length(
                max(sum(v.num_patches for v in r.segment.vision) for r in chunk),
                self.patch_buckets,
            )
            inputs = build_model_inputs(
                [[r.segment] for r in chunk],
                self.config,
                max_seq_len=length,
                max_patches=patches,
                pad_side="left",
            )
            keys = np.concatenate([np.asarray(jax.random.split(r.key, g)) for r in chunk])
            res = self.sample(self.params, inputs, keys)
            tokens = rollouts.host_local(res.tokens, self.mesh)
            lengths = rollouts.host_local(res.lengths, self.mesh)
            texts = rollouts.decode_completions(
                self.tokenizer, tokens, lengths, self.sampling.eos_ids
            )
            out += [texts[i * g : (i + 1) * g] for i in range(n)]
            self.calls += 1
        result: list[list[str]] = [[] for _ in requests]
        for i, texts in zip(order, out, strict=True):
            result[i] = texts
        return result
