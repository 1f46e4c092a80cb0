"""Group rollouts: prefill each prompt once, broadcast its KV cache to G samples, decode.

docs/design.md decision 6: for B prompts with G samples each, the vision tower runs on the B prompts
and each prompt is prefilled once; the cache and the last-position logits are then repeated
to the B*G sample rows (row b*G + g is sample g of prompt b). A `lax.while_loop` decodes one
token per step for every row (KV cache donated, carried in place) and stops as soon as every
row has produced an EOS id.

Sampling at step t of row r uses `fold_in(rng_keys[r], t)`, so a row's tokens depend only on
its own key: G samples of one prompt equal G separate runs with the same keys. The log-prob of
each sampled token is taken under `log_softmax(logits / temperature)` (raw `log_softmax` for
greedy, temperature 0), i.e. before top-k / top-p filtering, which is what the training
forward recomputes (`train.losses.token_logprobs(..., temperature=...)`).

Prompts are LEFT-padded so that every row ends at position L - 1. `pad_prompts` /
`bucket_prompts` add left padding up to a small set of bucket lengths, so the number of
compilations is bounded by the number of buckets. `completion_inputs` builds the B*G training
rows (prompt + completion) whose log-probs the GSPO update consumes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from o3video_jax.models.qwen2_5_vl.cache import KVCache
from o3video_jax.models.qwen2_5_vl.inputs import ModelInputs
from o3video_jax.train.sharding import (
    BATCH_AXES,
    DEFAULT_RULES,
    MeshAxes,
    batch_sharding,
    shard_batch,
)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """max_new_tokens T; temperature (0 = greedy: top_k / top_p ignored); top_p in (0, 1];
    top_k (0 = off); eos_ids: any of them ends a completion; pad_id fills the tokens after
    it; group_size G samples per prompt; repetition_penalty (1 = off) as HF / vLLM: see
    `apply_repetition_penalty`."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    eos_ids: tuple[int, ...] = ()
    pad_id: int = 0
    group_size: int = 1
    repetition_penalty: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "eos_ids", tuple(int(e) for e in self.eos_ids))
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SampleOutput:
    """Completions of B*G rows (row b*G + g: sample g of prompt b).

    tokens:   int32[B*G, T]    sampled ids; pad_id after the first EOS.
    lengths:  int32[B*G]       tokens up to and including the first EOS (T if none).
    logps:    float32[B*G, T]  log-prob of each sampled token (see the module docstring);
                               0 after the first EOS.
    next_pos: int32[B*G]       M-RoPE position of the first completion token (prompt's last
                               position + 1); completion token t sits at next_pos + t.
    """

    tokens: jax.Array
    lengths: jax.Array
    logps: jax.Array
    next_pos: jax.Array


# ---- prompt-length buckets (host side) ---------------------------------------------------------
def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= length; ValueError when the prompt is longer than every bucket."""
    fits = [int(b) for b in buckets if int(b) >= length]
    if not fits:
        raise ValueError(f"prompt length {length} exceeds the largest bucket {max(buckets)}")
    return min(fits)


def pad_prompts(inputs: ModelInputs, length: int, pad_id: int) -> ModelInputs:
    """Left-pads LEFT-padded prompts (numpy) to `length` text positions.

    The new positions are padding: input id pad_id, segment 0, position 0, no vision feature.
    Vision arrays are unchanged (the patch budget is a separate bucket).
    """
    seg = np.asarray(inputs.segment_ids)
    if not np.all(seg[:, -1] != 0):
        rows = np.flatnonzero(seg[:, -1] == 0).tolist()
        raise ValueError(f"prompts must be LEFT-padded (end at position L - 1); rows {rows} do not")
    extra = length - inputs.seq_len
    if extra < 0:
        raise ValueError(f"cannot pad prompts of length {inputs.seq_len} to {length}")
    if extra == 0:
        return inputs

    def left(x, value, axis=-1):
        x = np.asarray(x)
        widths = [(0, 0)] * x.ndim
        widths[axis] = (extra, 0)
        return np.pad(x, widths, constant_values=value)

    return inputs.replace(
        input_ids=left(inputs.input_ids, pad_id),
        segment_ids=left(inputs.segment_ids, 0),
        positions=left(inputs.positions, 0),
        feature_index=left(inputs.feature_index, -1),
    )


def bucket_prompts(inputs: ModelInputs, buckets: Sequence[int], pad_id: int) -> ModelInputs:
    """`pad_prompts` to `bucket_length(L, buckets)`."""
    return pad_prompts(inputs, bucket_length(inputs.seq_len, buckets), pad_id)


# ---- token selection -------------------------------------------------------------------------
def _keep_top_p(sorted_desc: jax.Array, top_p: float) -> jax.Array:
    """bool[..., K] over logits sorted descending: the smallest prefix whose probability mass
    reaches top_p (HF's TopPLogitsWarper; the top token is always kept)."""
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each token
    return before < top_p


# Candidates for the nucleus: the top-p threshold is read off a `lax.top_k` of this many
# logits instead of a sort of the whole vocabulary (see `_top_p_threshold`).
TOP_P_CANDIDATES = 64


def _top_p_threshold(scaled: jax.Array, top_p: float) -> jax.Array:
    """float32[N, 1]: the smallest logit HF's TopPLogitsWarper keeps in each row of [N, V].

    Exact without sorting the vocabulary: the k = TOP_P_CANDIDATES largest logits are the
    first k entries of the sorted row, so the kept prefix (tokens whose mass strictly above
    them is < top_p, probabilities over the whole vocabulary) is found among them whenever
    their total mass reaches top_p, which makes token k + 1 dropped. Rows where it does not
    (a flat distribution) take the full sort, for the whole batch at once (`lax.cond`).
    """
    v = scaled.shape[-1]
    k = min(TOP_P_CANDIDATES, v)

    def from_sorted(sorted_desc):  # [N, k'] descending prefix of the sorted row
        top1 = sorted_desc[:, :1]  # softmax over the whole row, as jax.nn.softmax computes it
        probs = jnp.exp(sorted_desc - top1) / jnp.sum(jnp.exp(scaled - top1), -1, keepdims=True)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each token
        n_keep = jnp.sum(before < top_p, axis=-1, keepdims=True)
        return jnp.take_along_axis(sorted_desc, n_keep - 1, axis=-1), probs

    top, _ = jax.lax.top_k(scaled, k)
    threshold, probs = from_sorted(top)
    if k == v:
        return threshold
    covered = jnp.all(jnp.sum(probs, axis=-1) >= top_p)
    full = lambda: from_sorted(-jnp.sort(-scaled, axis=-1))[0]
    return jax.lax.cond(covered, lambda: threshold, full)


def select_tokens(
    logits: jax.Array, keys: jax.Array, step: jax.Array | int, cfg: SamplingConfig
) -> tuple[jax.Array, jax.Array]:
    """Picks one token per row. logits float32[N, V]; keys: N per-row PRNG keys.

    Returns (int32[N] tokens, float32[N] their log-probs under log_softmax(logits / temperature),
    or under log_softmax(logits) for greedy).
    """
    logits = logits.astype(jnp.float32)
    if cfg.temperature == 0:
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return tokens, jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]

    scaled = logits / cfg.temperature
    v = scaled.shape[-1]
    neg = jnp.finfo(jnp.float32).min
    if 0 < cfg.top_k < v:
        # Filter within the k candidates only: no sort of the whole vocabulary.
        cand, cand_ids = jax.lax.top_k(scaled, cfg.top_k)  # [N, k], descending
        if cfg.top_p < 1.0:
            cand = jnp.where(_keep_top_p(cand, cfg.top_p), cand, neg)
    else:
        cand, cand_ids = scaled, None
        if cfg.top_p < 1.0:
            cand = jnp.where(scaled >= _top_p_threshold(scaled, cfg.top_p), scaled, neg)

    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
    choice = jax.vmap(jax.random.categorical)(step_keys, cand)
    tokens = (
        choice if cand_ids is None else jnp.take_along_axis(cand_ids, choice[:, None], -1)[:, 0]
    )
    tokens = tokens.astype(jnp.int32)
    logp = jax.nn.log_softmax(scaled, axis=-1)
    return tokens, jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]


def apply_repetition_penalty(logits: jax.Array, seen: jax.Array, penalty: float) -> jax.Array:
    """HF's RepetitionPenaltyLogitsProcessor / vLLM's repetition_penalty: for every token
    already present (prompt or generated; `seen` bool[N, V]), a positive logit is divided by
    `penalty` and a negative one multiplied by it. float32[N, V] -> float32[N, V]."""
    logits = logits.astype(jnp.float32)
    penalised = jnp.where(logits > 0, logits / penalty, logits * penalty)
    return jnp.where(seen, penalised, logits)


@functools.partial(jax.jit, static_argnames=("vocab", "group_size"))
def prompt_tokens_seen(input_ids, segment_ids, *, vocab: int, group_size: int) -> jax.Array:
    """bool[B*G, V]: the ids of each prompt's (non-padding) tokens, repeated to its G rows."""
    b = input_ids.shape[0]
    ids = jnp.clip(input_ids, 0, vocab - 1)
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], ids.shape)
    seen = jnp.zeros((b, vocab), bool).at[rows, ids].max(segment_ids != 0)
    return jnp.repeat(seen, group_size, axis=0)


# ---- the sampler -----------------------------------------------------------------------------
# Module-level jits keyed by static (hashable) model and settings: samplers that share a model,
# a group size and T share the prefill compile, and the decode loop is shared by every sampler
# with the same token-selection settings (the EOS ids are a traced argument).
# Decode steps per `while_loop` iteration (`make_sampler(decode_unroll=...)`). Each iteration
# pays a fixed cost (the loop condition, a host-side branch, the carried-tuple bookkeeping);
# `unroll` steps per iteration pay it once, and the last iteration may run up to unroll - 1
# steps past T (their tokens are dropped; the cache has room for them). Early exit happens
# between iterations. On CPU the per-iteration cost was below the noise of a 1 ms step
# (benchmarks: unroll 1/2/4/8 within 5%), so the default is 1.
DECODE_UNROLL = 1


def _padded_steps(max_new_tokens: int, unroll: int) -> int:
    """Token slots the decode loop fills: 1 + a multiple of `unroll` >= max_new_tokens."""
    return 1 + -(-(max_new_tokens - 1) // unroll) * unroll


@functools.partial(jax.jit, static_argnames=("model", "group_size", "cache_steps", "rules"))
def _prefill(params, prompt: ModelInputs, *, model, group_size, cache_steps, rules):
    """(KVCache of B*G rows with L + cache_steps slots, float32[B*G, V] logits at L - 1)."""
    del rules  # part of the cache key: the logical constraints are traced under them
    with jax.named_scope("rollout/prefill"):
        cache_len = prompt.seq_len + cache_steps
        cache, last = model.apply({"params": params}, prompt, cache_len, method="prefill")
    # docs/design.md decision 6: broadcast the prompt's cache, never its pixels.
    return cache.repeat(group_size), jnp.repeat(last, group_size, axis=0)


@functools.partial(
    jax.jit, static_argnames=("model", "cfg", "rules", "unroll"), donate_argnames="cache"
)
def _decode(params, cache: KVCache, logits, keys, eos, seen=None, *, model, cfg, rules, unroll):
    """Samples T tokens for every row; returns (SampleOutput, the final cache).

    The cache is donated and returned, so the loop carries it in place (no copy; its
    heads-major layout lets the attention read it as stored). Each loop iteration runs
    `unroll` decode steps; the loop stops before an iteration once every row has finished.
    `seen` (bool[N, V], the prompt's tokens) is needed iff cfg.repetition_penalty != 1.
    """
    del rules
    n, t_max = logits.shape[0], cfg.max_new_tokens
    t_pad = _padded_steps(t_max, unroll)
    next_pos = cache.next_pos  # of the first completion token
    is_eos = lambda tok: jnp.any(tok[:, None] == eos[None, :], axis=-1)
    penalty = cfg.repetition_penalty
    if penalty != 1.0:
        logits = apply_repetition_penalty(logits, seen, penalty)
    tok, logp = select_tokens(logits, keys, 0, cfg)
    tokens = jnp.full((n, t_pad), cfg.pad_id, jnp.int32).at[:, 0].set(tok)
    logps = jnp.zeros((n, t_pad), jnp.float32).at[:, 0].set(logp)
    lengths = jnp.ones((n,), jnp.int32)

    def cond(state):
        t, done = state[0], state[-1]
        return (t < t_max) & ~jnp.all(done)

    def step(state):
        t, tok, cache, tokens, logps, lengths, seen, done = state
        with jax.named_scope("rollout/decode"):
            logits, cache = model.apply({"params": params}, tok, cache, method="decode_step")
        if penalty != 1.0:
            seen = seen.at[jnp.arange(n), tok].set(True)
            logits = apply_repetition_penalty(logits, seen, penalty)
        new, logp = select_tokens(logits, keys, t, cfg)
        done = done | (t >= t_max)  # padding steps of the last iteration
        new = jnp.where(done, cfg.pad_id, new)
        logp = jnp.where(done, 0.0, logp)
        tokens = jax.lax.dynamic_update_slice(tokens, new[:, None], (0, t))
        logps = jax.lax.dynamic_update_slice(logps, logp[:, None], (0, t))
        lengths = lengths + (~done).astype(jnp.int32)
        return t + 1, new, cache, tokens, logps, lengths, seen, done | is_eos(new)

    def body(state):
        for _ in range(unroll):
            state = step(state)
        return state

    seen = jnp.zeros((0,), bool) if seen is None else seen  # a placeholder when unused
    state = (jnp.asarray(1, jnp.int32), tok, cache, tokens, logps, lengths, seen, is_eos(tok))
    _, _, cache, tokens, logps, lengths, _, _ = jax.lax.while_loop(cond, body, state)
    out = SampleOutput(tokens[:, :t_max], lengths, logps[:, :t_max], next_pos)
    return out, cache


def compile_count() -> int:
    """Number of prefill + decode executables compiled so far (for recompilation checks)."""
    return _prefill._cache_size() + _decode._cache_size()


def _to_rows_of(mesh: Mesh, tree):
    """`tree` (global arrays, batch axis first) with its rows split over `mesh`'s batch axes:
    one jitted copy, valid between meshes over the same devices in the same order."""
    shardings = batch_sharding(tree, mesh)
    return jax.jit(lambda t: t, out_shardings=shardings)(tree)


def make_sampler(
    model: nn.Module,
    cfg: SamplingConfig,
    *,
    mesh: Mesh | None = None,
    shardings=None,
    rules: Sequence[tuple[str, MeshAxes]] = DEFAULT_RULES,
    decode_unroll: int = DECODE_UNROLL,
    feed_mesh: Mesh | None = None,
) -> Callable[[dict, ModelInputs, jax.Array], SampleOutput]:
    """Returns `sample(params, prompt_inputs, rng_keys) -> SampleOutput`.

    prompt_inputs: B LEFT-padded prompts (L text positions, every row ends at L - 1);
    rng_keys: B*G PRNG keys (raw uint32[B*G, 2] or typed key[B*G]), row b*G + g.
    With a mesh, rows are split over ("data", "fsdp") and the model's logical constraints use
    `rules`; `shardings` (the params' NamedShardings) places params that are not yet placed.

    The two jitted phases are also exposed, for timing: `sample.prefill(params, prompts) ->
    (cache, logits)` and `sample.decode(params, cache, logits, keys) -> (SampleOutput, cache)`
    (the cache is donated). One compile each per prompt bucket and batch size.
    `decode_unroll`: decode steps per loop iteration (tokens do not depend on it).

    Serving layout (docs/design.md decision 15, `rl.serving`): `mesh` and `rules` of a
    `ServingLayout` and params from its `reshard`. `feed_mesh` (its `train_mesh`): the mesh
    whose batch layout the callers' host-local rows follow; with several processes, prompts and
    keys are assembled on it, moved to `mesh` inside one program, and the outputs moved back,
    so each process still reads its own rows (`rollouts.host_local`).
    """
    if decode_unroll < 1:
        raise ValueError(f"decode_unroll must be >= 1, got {decode_unroll}")
    g = cfg.group_size
    cache_steps = _padded_steps(cfg.max_new_tokens, decode_unroll)
    rules = tuple(tuple(r) for r in rules)
    # Padded with -1 (never sampled) to a multiple of 4: EOS sets of similar size share the
    # compiled loop, and an empty set needs no special case.
    n_eos = -(-max(len(cfg.eos_ids), 1) // 4) * 4
    eos = np.full((n_eos,), -1, np.int32)
    eos[: len(cfg.eos_ids)] = cfg.eos_ids
    decode_cfg = dataclasses.replace(cfg, group_size=1, eos_ids=())

    def run(fn, *args, **kwargs):
        if mesh is None:
            return fn(*args, **kwargs)
        with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
            return fn(*args, **kwargs)

    def prefill(params, prompt_inputs: ModelInputs):
        kw = dict(model=model, group_size=g, cache_steps=cache_steps, rules=rules)
        return run(_prefill, params, prompt_inputs, **kw)

    def decode(params, cache: KVCache, logits: jax.Array, keys: jax.Array, seen=None):
        if cfg.repetition_penalty != 1.0 and seen is None:
            raise ValueError("repetition_penalty != 1 needs `seen` (prompt_tokens_seen)")
        kw = dict(model=model, cfg=decode_cfg, rules=rules, unroll=decode_unroll)
        return run(_decode, params, cache, logits, keys, eos, seen, **kw)

    def sample(params, prompt_inputs: ModelInputs, rng_keys: jax.Array) -> SampleOutput:
        b = prompt_inputs.batch_size
        n_keys = rng_keys.shape[0]
        if n_keys != b * g:
            raise ValueError(
                f"rng_keys has {n_keys} keys, expected B*G = {b}*{g} = {b * g} (one per sample)"
            )
        seg = prompt_inputs.segment_ids
        if isinstance(seg, np.ndarray) and not np.all(seg[:, -1] != 0):
            rows = np.flatnonzero(seg[:, -1] == 0).tolist()
            raise ValueError(f"prompts must be LEFT-padded (end at L - 1); rows {rows} do not")
        feed = mesh if feed_mesh is None else feed_mesh
        if mesh is not None and jax.process_count() > 1:
            # Multi-host: each process holds its own prompts and keys -> global arrays.
            prompt_inputs = shard_batch(jax.device_get(prompt_inputs), feed)
            rng_keys = shard_batch(np.asarray(jax.device_get(rng_keys)), feed)
            if feed is not mesh:
                prompt_inputs, rng_keys = _to_rows_of(mesh, (prompt_inputs, rng_keys))
            if shardings is not None:
                params = jax.device_put(params, shardings)
        elif mesh is not None:
            prompt_inputs = jax.device_put(prompt_inputs, batch_sharding(prompt_inputs, mesh))
            axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names) or None
            rng_keys = jax.device_put(rng_keys, NamedSharding(mesh, PartitionSpec(axes)))
            if shardings is not None:
                params = jax.device_put(params, shardings)
        cache, logits = prefill(params, prompt_inputs)
        seen = None
        if cfg.repetition_penalty != 1.0:
            seen = run(
                prompt_tokens_seen, prompt_inputs.input_ids, prompt_inputs.segment_ids,
                vocab=logits.shape[-1], group_size=g,
            )  # fmt: skip
        out, _ = decode(params, cache, logits, rng_keys, seen)
        if mesh is not None and feed is not mesh and jax.process_count() > 1:
            out = _to_rows_of(feed, out)
        return out

    sample.prefill = prefill
    sample.decode = decode
    return sample


# ---- training rows -----------------------------------------------------------------------------
# The fields with one row per prompt's pixels: with a shared vision group they keep B rows while
# the text fields have B*G (see `Qwen25VL`'s `vision_group`).
VISION_FIELDS = (
    "pixel_values",
    "vision_pos",
    "window_index",
    "window_segment_ids",
    "frame_segment_ids",
)


@functools.partial(jax.jit, static_argnums=1, static_argnames="vision")
def repeat_rows(inputs: ModelInputs, g: int, vision: bool = True) -> ModelInputs:
    """Each row repeated g times (row b*g + j copies row b), jnp arrays. With vision=False the
    `VISION_FIELDS` keep their B rows (the model's `vision_group=g` form)."""
    rep = lambda x, axis=0: jnp.repeat(jnp.asarray(x), g, axis=axis)
    fields = {
        f.name: jnp.asarray(getattr(inputs, f.name))
        if f.name in VISION_FIELDS and not vision
        else rep(getattr(inputs, f.name))
        for f in dataclasses.fields(inputs)
    }
    return ModelInputs(**{**fields, "positions": rep(inputs.positions, 1)})


@functools.partial(jax.jit, static_argnames=("group_size", "share_vision"))
def completion_inputs(
    prompt_inputs: ModelInputs, out: SampleOutput, group_size: int, share_vision: bool = False
) -> tuple[ModelInputs, jax.Array]:
    """The B*G rows prompt + completion (length L + T) and their completion mask.

    Prompt rows are repeated G times; completion token t sits at text position L + t with
    M-RoPE position next_pos + t on all three axes, in the prompt's last segment up to its
    length, padding (segment 0) after. The pixels (`VISION_FIELDS`) are repeated too, unless
    share_vision: then they keep one row per prompt, for the model's `vision_group=G` (the
    tower runs once per prompt in the training forward, docs/design.md decision 6).
    Returns (ModelInputs, float32[B*G, L + T] mask: 1 at the completion tokens, the first EOS
    included). The log-prob of the token at position p comes from the logits at p - 1.
    """
    b, length = prompt_inputs.input_ids.shape
    n, t_max = out.tokens.shape
    if n != b * group_size:
        raise ValueError(f"{n} completions for {b} prompts x group_size {group_size}")
    rows = repeat_rows(prompt_inputs, group_size, vision=not share_vision)
    real = jnp.arange(t_max)[None, :] < out.lengths[:, None]  # [N, T]
    comp_seg = jnp.where(real, rows.segment_ids[:, -1:], 0)
    comp_pos = jnp.where(real, out.next_pos[:, None] + jnp.arange(t_max)[None, :], 0)
    cat = lambda a, c: jnp.concatenate([a, c.astype(a.dtype)], axis=-1)
    inputs = rows.replace(
        input_ids=cat(rows.input_ids, out.tokens),
        segment_ids=cat(rows.segment_ids, comp_seg),
        positions=cat(rows.positions, jnp.broadcast_to(comp_pos, (3, n, t_max))),
        feature_index=cat(rows.feature_index, jnp.full((n, t_max), -1, jnp.int32)),
    )
    mask = jnp.concatenate([jnp.zeros((n, length), jnp.float32), real.astype(jnp.float32)], 1)
    return inputs, mask


@jax.jit
def shift_targets(
    inputs: ModelInputs, completion_mask: jax.Array, logps: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Aligns `completion_inputs` rows with next-token training targets (position p predicts
    the token at p + 1), as `gspo.make_gspo_update` consumes them.

    inputs, completion_mask float32[N, L + T]: from `completion_inputs`; logps float32[N, T]:
    `SampleOutput.logps`. Returns (targets int32[N, L + T], target mask float32[N, L + T],
    rollout log-probs float32[N, L + T] aligned with the targets, usable as `old_logp`).
    """
    n, total = completion_mask.shape
    prompt_len = total - logps.shape[1]
    targets = jnp.roll(inputs.input_ids, -1, axis=1)
    mask = jnp.roll(completion_mask, -1, axis=1).at[:, -1].set(0.0)
    old = jnp.zeros((n, total), jnp.float32)
    old = jax.lax.dynamic_update_slice(old, logps.astype(jnp.float32), (0, prompt_len - 1))
    return targets, mask, old * mask
