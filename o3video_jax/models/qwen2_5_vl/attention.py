"""The one attention primitive: segment ids + optional causal mask, GQA, three backends.

Masking rule (docs/design.md decision 3): query t of row b may attend key s iff
  q_segment_ids[b, t] != 0  and  q_segment_ids[b, t] == kv_segment_ids[b, s]
  and (not causal or kv_position(s) <= q_position(t)),
with q_position(t) = q_offset + t and kv_position(s) = s (cache slots). Segment 0 is padding:
it never attends and is never attended. Rows without any allowed key return zeros, never NaN.
This one rule covers the ViT's window and full-frame blocks (bidirectional), the decoder with
left/right padding and packed rows (causal), and decoding against a KV cache (q_offset).

GQA follows repeat-interleave semantics: query head n uses kv head n // (N // K).

Backends:
  "xla"    portable reference (fp32 softmax), runs everywhere.
  "pallas" TPU splash attention (jax.experimental.pallas.ops.tpu.splash_attention) with
           segment ids; `interpret=True` runs the same kernel on CPU for tests.
  "cudnn"  `jax.nn.dot_product_attention(implementation="cudnn")` on GPU; it takes bf16/fp16
           only, so float32 activations (or an odd head dim) fall back to "xla" with a
           one-time warning.
The pallas path supports causal only for self-attention (T == S, q_offset == 0); decoding
steps use "xla", where T == 1 makes the matmuls memory-bound anyway.

Without a chunk, "xla" causal self-attention of T >= 256 runs in up to 4 query blocks, each
scoring only the keys up to its last query (`_causal_blocks`): the same softmax terms, about
3/8 fewer score entries. On CPU the "xla" path works heads-major (`_SPECS`: q, k, v transposed
once; the score tensors never copied); accelerators keep the token-major einsums.
`chunk` > 0 makes self-attention (T == S > chunk, q_offset 0, causal or not) on the "xla" and
"cudnn" backends run in [chunk, chunk] tiles with a running softmax, visiting only the key
blocks its segments can reach (flash_attention.py `blocked_attention`): exact, the largest
score tensor is one tile instead of [B, N, T, S], and memory is linear in T (docs/design.md
decision 16). On "cudnn" this also avoids the kernel's [B, 1, T, S] mask. Other calls ignore
it ("pallas" is blockwise already). The vision tower also has a banded path for short bounded
segments (local_attention.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from .flash_attention import _NEG, blocked_attention

BACKENDS = ("xla", "pallas", "cudnn")


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_segment_ids: jax.Array,
    kv_segment_ids: jax.Array,
    *,
    causal: bool,
    scale: float,
    q_offset: int | jax.Array = 0,
    backend: str = "xla",
    interpret: bool = False,
    chunk: int = 0,
) -> jax.Array:
    """Masked multi-head attention.

    q: [B, T, N, H]; k, v: [B, S, K, H] with N % K == 0; q_segment_ids: int32[B, T];
    kv_segment_ids: int32[B, S]; q_offset: scalar slot of query 0 for the causal mask;
    chunk: static tile of the blocked self-attention path (0 = dense; module docstring).
    Returns [B, T, N, H] in q's dtype.
    """
    b, t, n, h = q.shape
    _, s, kh, _ = k.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != h:
        raise ValueError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} do not match")
    if n % kh:
        raise ValueError(f"attention: {n} query heads are not a multiple of {kh} kv heads")
    if q_segment_ids.shape != (b, t) or kv_segment_ids.shape != (b, s):
        raise ValueError(
            f"attention: segment ids {q_segment_ids.shape}, {kv_segment_ids.shape} do not "
            f"match q {q.shape} / k {k.shape}"
        )
    if chunk < 0:
        raise ValueError(f"attention chunk must be >= 0, got {chunk}")
    self_attention = t == s and isinstance(q_offset, int) and q_offset == 0
    if backend in ("xla", "cudnn") and chunk and t > chunk and self_attention:
        return blocked_attention(
            q, k, v, q_segment_ids, kv_segment_ids, causal=causal, scale=scale, block=chunk
        )
    if backend == "xla" and causal and self_attention and t >= 2 * CAUSAL_BLOCK_MIN:
        return _causal_blocks(q, k, v, q_segment_ids, kv_segment_ids, scale)
    if backend == "xla":
        return _xla(q, k, v, q_segment_ids, kv_segment_ids, causal, scale, q_offset)
    if backend == "pallas":
        return _splash(q, k, v, q_segment_ids, kv_segment_ids, causal, scale, q_offset, interpret)
    if backend == "cudnn":
        return _cudnn(q, k, v, q_segment_ids, kv_segment_ids, causal, scale, q_offset)
    raise ValueError(f"attention backend {backend!r} is not one of {BACKENDS}")


def allowed_mask(
    q_segment_ids: jax.Array,
    kv_segment_ids: jax.Array,
    causal: bool,
    q_offset: int | jax.Array = 0,
) -> jax.Array:
    """bool[B, T, S]: the masking rule of the module docstring."""
    qs, ks = q_segment_ids[:, :, None], kv_segment_ids[:, None, :]
    allowed = (qs == ks) & (qs != 0)
    if causal:
        t, s = q_segment_ids.shape[1], kv_segment_ids.shape[1]
        q_pos = q_offset + jnp.arange(t, dtype=jnp.int32)
        allowed &= jnp.arange(s, dtype=jnp.int32)[None, :] <= q_pos[:, None]
    return allowed


def _xla(q, k, v, q_seg, kv_seg, causal, scale, q_offset):
    allowed = allowed_mask(q_seg, kv_seg, causal, q_offset)
    return by_lowering_platform(functools.partial(_attend_rows, scale=scale), q, k, v, allowed)


def _attend_rows(q, k, v, allowed, *, scale, layout):
    q5, k, v = _to_layout(q, k, v, layout)
    return _out_of_layout(_attend(q5, k, v, allowed, scale, layout), layout, q.dtype)


# Einsum specs of `_attend` per layout: (q5, k) -> scores [B, K, g, T, S]; (probs, v) -> out.
# "heads" (CPU): q5 [B, K, g, T, H], k, v [B, K, S, H]: q, k and v are transposed once, both
#   dots are plain batched matmuls and XLA:CPU never copies the score or probability tensors
#   (with the token-major einsums it transposed them: a text layer's attention of the
#   benchmarks/forward.py model took 9.7 ms that way, 6.2 ms heads-major).
# "tokens" (accelerators): q5 [B, T, K, g, H], k, v [B, S, K, H]: no transposes in the graph;
#   on TPU (v5p AOT, T = 8192, bf16) the heads-major form took 2.8x the temporaries and 1.7x
#   the HBM bytes of this one.
# "cache": q5 token-major, k, v a heads-major KV cache [B, K, S, H] (accelerator prefill).
_SPECS = {
    "heads": ("bkgth,bksh->bkgts", "bkgts,bksh->bkgth"),
    "tokens": ("btkgh,bskh->bkgts", "bkgts,bskh->btkgh"),
    "cache": ("btkgh,bksh->bkgts", "bkgts,bksh->btkgh"),
}


def by_lowering_platform(fn, *args):
    """fn(*args, layout="heads") where the computation is lowered for CPU, else fn(*args,
    layout="tokens"). `lax.platform_dependent` picks the branch when lowering, so one form is
    compiled, and an AOT compile for a TPU topology on a CPU host gets the TPU form (the
    default backend would say "cpu" there)."""
    return jax.lax.platform_dependent(
        *args,
        cpu=functools.partial(fn, layout="heads"),
        default=functools.partial(fn, layout="tokens"),
    )


def _to_layout(q, k, v, layout):
    """(q5, k, v) of q [B, T, N, H], k, v [B, S, K, H] in `layout` for `_attend`; head n =
    kv head * g + j (repeat-interleave)."""
    b, t, n, h = q.shape
    kh = k.shape[2]
    q5 = q.reshape(b, t, kh, n // kh, h)
    if layout == "tokens":
        return q5, k, v
    return q5.transpose(0, 2, 3, 1, 4), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)


def _out_of_layout(out, layout, dtype):
    """`_attend`'s output in `layout` -> [B, T, N, H]."""
    if layout == "heads":
        out = out.transpose(0, 3, 1, 2, 4)  # [B, K, g, T, H] -> [B, T, K, g, H]
    b, t, kh, g, h = out.shape
    return out.reshape(b, t, kh * g, h).astype(dtype)


def _attend(q5, k, v, allowed, scale, layout):
    """Masked softmax attention of q5 against k, v in `layout` (`_SPECS`); allowed bool[B, T, S].
    Returns the output in the layout of q5."""
    to_scores, to_out = _SPECS[layout]
    scores = jnp.einsum(to_scores, q5, k, preferred_element_type=jnp.float32)
    scores = scores * jnp.float32(scale)  # [B, K, g, T, S]
    allowed = allowed[:, None, None]  # [B, 1, 1, T, S]
    probs = jax.nn.softmax(jnp.where(allowed, scores, _NEG), axis=-1)
    probs = jnp.where(allowed, probs, 0.0).astype(v.dtype)  # empty rows -> exact zeros
    return jnp.einsum(to_out, probs, v)


def cached_attention(
    q: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    q_segment_ids: jax.Array,
    kv_segment_ids: jax.Array,
    *,
    scale: float,
    q_offset: int | jax.Array,
) -> jax.Array:
    """Causal attention of new queries to a KV cache stored heads-major (portable, fp32 softmax).

    q: [B, T, N, H]; k_cache, v_cache: [B, K, S, H] (the `KVCache` layout); segment ids as in
    `attention`; query t sits at slot q_offset + t. Same rule and result as
    `attention(q, k, v, ..., causal=True, q_offset=q_offset)` with k = k_cache.transpose(0, 2,
    1, 3), up to float rounding: with (B, K) leading, the cache is read as stored, so no step
    copies or transposes it. On CPU q goes heads-major too (every dot a plain batched matmul);
    accelerators keep q token-major.
    """
    allowed = allowed_mask(q_segment_ids, kv_segment_ids, True, q_offset)  # [B, T, S]
    run = functools.partial(_attend_cache, scale=scale)
    return by_lowering_platform(run, q, k_cache, v_cache, allowed)


def _attend_cache(q, k_cache, v_cache, allowed, *, scale, layout):
    b, t, n, h = q.shape
    kh = k_cache.shape[1]
    q5 = q.reshape(b, t, kh, n // kh, h)  # head n = kv head * g + j: repeat-interleave
    if layout == "tokens":  # accelerators: q token-major against the heads-major cache
        return _out_of_layout(
            _attend(q5, k_cache, v_cache, allowed, scale, "cache"), "cache", q.dtype
        )
    out = _attend(q5.transpose(0, 2, 3, 1, 4), k_cache, v_cache, allowed, scale, "heads")
    return _out_of_layout(out, "heads", q.dtype)


# Causal self-attention of T >= 2 * CAUSAL_BLOCK_MIN queries on the "xla" path runs as
# query blocks of >= CAUSAL_BLOCK_MIN rows (at most CAUSAL_BLOCKS), each against the keys up
# to its last query only: on the benchmarks/forward.py model (T = 578) 4 blocks cut the
# XLA-counted GFLOP 55.2 -> 53.1 and the CPU time per forward by 9-12% (interleaved A/B).
CAUSAL_BLOCK_MIN = 128
CAUSAL_BLOCKS = 4


def _causal_blocks(q, k, v, q_seg, kv_seg, scale):
    """Dense causal attention without the upper triangle's key blocks: query block
    [lo, hi) scores keys [0, hi) only. The skipped keys are causally masked for every query
    of the block, so each query's softmax has the same terms as `_xla`'s; with 4 blocks the
    score tensors (and their softmax passes) hold 5/8 of the T x S entries."""
    return by_lowering_platform(functools.partial(_blocks_in, scale=scale), q, k, v, q_seg, kv_seg)


def _blocks_in(q, k, v, q_seg, kv_seg, *, scale, layout):
    t = q.shape[1]
    blocks = max(1, min(CAUSAL_BLOCKS, t // CAUSAL_BLOCK_MIN))
    bounds = [-(-t * i // blocks // 8) * 8 if i < blocks else t for i in range(blocks + 1)]
    outs = [
        _attend_rows(
            q[:, lo:hi],
            k[:, :hi],
            v[:, :hi],
            allowed_mask(q_seg[:, lo:hi], kv_seg[:, :hi], True, lo),
            scale=scale,
            layout=layout,
        )
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return jnp.concatenate(outs, axis=1)


def _platform() -> str:
    # Under jit the arrays carry no device; the default backend decides the kernels.
    return jax.default_backend()


def _zero_empty_rows(out, q_seg, kv_seg, causal, q_offset):
    has_key = jnp.any(allowed_mask(q_seg, kv_seg, causal, q_offset), axis=-1)  # [B, T]
    return jnp.where(has_key[:, :, None, None], out, jnp.zeros((), out.dtype))


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


@functools.lru_cache(maxsize=64)
def _splash_kernel(t: int, s: int, groups: int, causal: bool, block: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as sk,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as sm,
    )

    one = sm.CausalMask((t, s)) if causal else sm.FullMask((t, s))
    mask = sm.MultiHeadMask([one] * groups)
    sizes = sk.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        use_fused_bwd_kernel=True,
    )
    # One kv head shared by `groups` query heads (MQA); vmapped over batch and kv heads.
    return sk.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)


def _splash(q, k, v, q_seg, kv_seg, causal, scale, q_offset, interpret):
    if not interpret and _platform() != "tpu":
        raise ValueError(
            f"attention backend 'pallas' needs a TPU, but the platform is {_platform()!r}; "
            "use attention='xla' (or interpret=True in tests)"
        )
    b, t, n, h = q.shape
    s, kh = k.shape[1], k.shape[2]
    if causal and (t != s or not (isinstance(q_offset, int) and q_offset == 0)):
        raise ValueError(
            "attention backend 'pallas' supports causal masks only for self-attention "
            f"(T == S, q_offset == 0); got T={t}, S={s}; use 'xla' for cached decoding"
        )
    # The TPU kernel tiles 128 lanes: pad lengths (as padding segment 0) and the head dim
    # (zeros change no score and are sliced off the output).
    block = 128
    tp, sp, hp = _round_up(t, block), _round_up(s, block), _round_up(h, 128)
    if causal:
        tp = sp = max(tp, sp)
    qx = jnp.pad(q * jnp.asarray(scale, q.dtype), ((0, 0), (0, tp - t), (0, 0), (0, hp - h)))
    kx = jnp.pad(k, ((0, 0), (0, sp - s), (0, 0), (0, hp - h)))
    vx = jnp.pad(v, ((0, 0), (0, sp - s), (0, 0), (0, hp - h)))
    qs = jnp.pad(q_seg, ((0, 0), (0, tp - t)))
    ks = jnp.pad(kv_seg, ((0, 0), (0, sp - s)))
    g = n // kh
    qx = qx.reshape(b, tp, kh, g, hp).transpose(0, 2, 3, 1, 4)  # [B, K, g, T, H]
    kx, vx = kx.transpose(0, 2, 1, 3), vx.transpose(0, 2, 1, 3)  # [B, K, S, H]

    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as sk,
    )

    kernel = _splash_kernel(tp, sp, g, causal, block, interpret)
    per_row = jax.vmap(kernel, in_axes=(0, 0, 0, None))  # over kv heads
    # Padding queries (segment 0) see only padding keys here, so no row of the kernel is
    # empty (it would divide by zero); they are zeroed below.
    out = jax.vmap(per_row)(qx, kx, vx, sk.SegmentIds(qs, ks))  # [B, K, g, T, H]
    out = out.transpose(0, 3, 1, 2, 4).reshape(b, tp, n, hp)[:, :t, :, :h].astype(q.dtype)
    return _zero_empty_rows(out, q_seg, kv_seg, causal, q_offset)


_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def cudnn_unsupported(dtype, head_dim: int) -> str | None:
    """Why cuDNN's fused attention cannot take these inputs (None when it can)."""
    if jnp.dtype(dtype) not in [jnp.dtype(d) for d in _CUDNN_DTYPES]:
        return (
            f"it needs bfloat16 or float16 activations, got {jnp.dtype(dtype).name} "
            "(config field model.dtype)"
        )
    if head_dim % 8 or head_dim > 256:
        return f"it needs a head dim that is a multiple of 8 and <= 256, got {head_dim}"
    return None


@functools.cache
def _warn_cudnn_fallback(reason: str) -> None:  # once per reason and process
    import warnings

    warnings.warn(f"attention='cudnn' falls back to the XLA attention: {reason}", stacklevel=2)


def _cudnn(q, k, v, q_seg, kv_seg, causal, scale, q_offset):
    if _platform() != "gpu":
        raise ValueError(
            f"attention backend 'cudnn' needs an NVIDIA GPU, but the platform is "
            f"{_platform()!r}; use attention='xla'"
        )
    reason = cudnn_unsupported(q.dtype, q.shape[-1])
    if reason is not None:
        _warn_cudnn_fallback(reason)
        return _xla(q, k, v, q_seg, kv_seg, causal, scale, q_offset)
    mask = allowed_mask(q_seg, kv_seg, causal, q_offset)
    # cuDNN cannot take an all-False row; let empty rows see every key and zero them after.
    has_key = jnp.any(mask, axis=-1, keepdims=True)
    mask = mask | ~has_key
    out = jax.nn.dot_product_attention(
        q, k, v, mask=mask[:, None], scale=scale, implementation="cudnn"
    )
    return _zero_empty_rows(out, q_seg, kv_seg, causal, q_offset)
