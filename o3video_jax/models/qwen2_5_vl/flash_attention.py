"""Key-chunked causal segment attention with a running (flash-style) softmax, in plain XLA.

For the decoder's self-attention over long rows (prefill / training, T == S, q_offset 0): the
keys are cut into chunks of C and a `lax.scan` carries, per query, the running max m, the
running sum l of exp(score - m) and the running weighted sum of values. Every step scores all
T queries against one key chunk, so the largest score tensor is float32[B, N, T, C], never
[B, N, T, S]. Nothing is skipped (fully masked chunks cost the same), which keeps the
program static and the result exact: it equals the dense masked softmax up to rounding.

The backward pass is a custom VJP that recomputes each chunk's probabilities from the saved
log-sum-exp (FlashAttention's backward), so gradients never hold T x S either; plain autodiff
through the scan would stack every step's probabilities, i.e. T x S again.

Masking rule and conventions are those of attention.py (segment 0 is padding and sees
nothing; empty rows return zeros; GQA by repeat-interleave).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Large but finite: a fully masked row stays NaN-free. The attention primitive and the blocked
# kernels share it; it lives here, the lowest of the attention modules.
_NEG = -0.7 * float(np.finfo(np.float32).max)


def chunked_causal_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_segment_ids: jax.Array,
    kv_segment_ids: jax.Array,
    *,
    scale: float,
    chunk: int = 512,
) -> jax.Array:
    """Causal self-attention within equal non-zero segment ids, keys in chunks of `chunk`.

    q: [B, T, N, H]; k, v: [B, T, K, H] with N % K == 0; q/kv_segment_ids: int32[B, T].
    Returns [B, T, N, H] in q's dtype.
    """
    b, t, n, h = q.shape
    if k.shape != v.shape or k.shape[:2] != (b, t) or k.shape[3] != h:
        raise ValueError(f"chunked attention: q {q.shape}, k {k.shape}, v {v.shape} do not match")
    if q_segment_ids.shape != (b, t) or kv_segment_ids.shape != (b, t):
        raise ValueError(
            f"chunked attention: segment ids {q_segment_ids.shape}, {kv_segment_ids.shape} "
            f"vs q {q.shape}"
        )
    if n % k.shape[2]:
        raise ValueError(f"chunked attention: {n} query heads vs {k.shape[2]} kv heads")
    if chunk <= 0:
        raise ValueError(f"chunked attention: chunk must be positive, got {chunk}")
    chunk = min(chunk, t)
    tc = -(-t // chunk) * chunk
    kh = k.shape[2]
    pad = lambda x: jnp.pad(x, [(0, 0), (0, tc - t)] + [(0, 0)] * (x.ndim - 2))
    qg = q.reshape(b, t, kh, n // kh, h)  # head n = kv head * g + j: repeat-interleave
    # Key chunks first (the scan axis); padded keys carry segment 0 and are never seen.
    kc = pad(k).reshape(b, tc // chunk, chunk, kh, h).swapaxes(0, 1)
    vc = pad(v).reshape(b, tc // chunk, chunk, kh, h).swapaxes(0, 1)
    sc = pad(kv_segment_ids).reshape(b, tc // chunk, chunk).swapaxes(0, 1)
    out = _flash(qg, kc, vc, q_segment_ids, sc, float(scale))
    return out.reshape(b, t, n, h).astype(q.dtype)


def _mask(q_seg, k_seg, step, chunk):
    """bool[B, 1, 1, T, C]: same non-zero segment and key slot <= query slot."""
    t = q_seg.shape[1]
    q_pos = jnp.arange(t, dtype=jnp.int32)
    k_pos = step * chunk + jnp.arange(chunk, dtype=jnp.int32)
    allowed = (q_seg[:, :, None] == k_seg[:, None, :]) & (q_seg != 0)[:, :, None]
    allowed &= k_pos[None, None, :] <= q_pos[None, :, None]
    return allowed[:, None, None]


def _scores(qg, k, scale):
    s = jnp.einsum("btkgh,bckh->bkgtc", qg, k, preferred_element_type=jnp.float32)
    return s * jnp.float32(scale)


def _forward(qg, kc, vc, q_seg, kc_seg, scale):
    b, t, kh, g, h = qg.shape
    chunk = kc.shape[2]

    def step(carry, xs):
        m, denom, acc = carry  # [B, K, g, T], [B, K, g, T], float32[B, K, g, T, H]
        i, k, v, k_seg = xs
        mask = _mask(q_seg, k_seg, i, chunk)
        s = jnp.where(mask, _scores(qg, k, scale), _NEG)
        m_new = jnp.maximum(m, s.max(axis=-1))
        p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
        alpha = jnp.exp(m - m_new)
        denom = denom * alpha + p.sum(axis=-1)
        pv = jnp.einsum(
            "bkgtc,bckh->bkgth", p.astype(v.dtype), v, preferred_element_type=jnp.float32
        )
        return (m_new, denom, acc * alpha[..., None] + pv), None

    init = (
        jnp.full((b, kh, g, t), _NEG, jnp.float32),
        jnp.zeros((b, kh, g, t), jnp.float32),
        jnp.zeros((b, kh, g, t, h), jnp.float32),
    )
    steps = jnp.arange(kc.shape[0], dtype=jnp.int32)
    (m, denom, acc), _ = jax.lax.scan(step, init, (steps, kc, vc, kc_seg))
    has_key = denom > 0  # empty rows (padding queries): zeros, and a harmless lse of 0
    out = jnp.where(has_key[..., None], acc / jnp.where(has_key, denom, 1.0)[..., None], 0.0)
    lse = jnp.where(has_key, m + jnp.log(jnp.where(has_key, denom, 1.0)), 0.0)
    return out.transpose(0, 3, 1, 2, 4).astype(qg.dtype), lse  # [B, T, K, g, H], [B, K, g, T]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(qg, kc, vc, q_seg, kc_seg, scale):
    return _forward(qg, kc, vc, q_seg, kc_seg, scale)[0]


def _flash_fwd(qg, kc, vc, q_seg, kc_seg, scale):
    out, lse = _forward(qg, kc, vc, q_seg, kc_seg, scale)
    return out, (qg, kc, vc, q_seg, kc_seg, out, lse)


def _flash_bwd(scale, res, d_out):
    qg, kc, vc, q_seg, kc_seg, out, lse = res
    chunk = kc.shape[2]
    d_out = d_out.astype(jnp.float32).transpose(0, 2, 3, 1, 4)  # [B, K, g, T, H]
    # D_t = sum_h dO * O = sum_s P_ts dP_ts, the softmax-Jacobian correction.
    delta = jnp.sum(d_out * out.astype(jnp.float32).transpose(0, 2, 3, 1, 4), axis=-1)

    def step(dq, xs):
        i, k, v, k_seg = xs
        mask = _mask(q_seg, k_seg, i, chunk)
        s = _scores(qg, k, scale)
        p = jnp.where(mask, jnp.exp(s - lse[..., None]), 0.0)  # [B, K, g, T, C]
        dv = jnp.einsum("bkgtc,bkgth->bckh", p, d_out)
        dp = jnp.einsum("bkgth,bckh->bkgtc", d_out, v.astype(jnp.float32))
        ds = p * (dp - delta[..., None]) * jnp.float32(scale)
        dq = dq + jnp.einsum("bkgtc,bckh->btkgh", ds, k.astype(jnp.float32))
        dk = jnp.einsum("bkgtc,btkgh->bckh", ds, qg.astype(jnp.float32))
        return dq, (dk.astype(k.dtype), dv.astype(v.dtype))

    steps = jnp.arange(kc.shape[0], dtype=jnp.int32)
    dq0 = jnp.zeros(qg.shape, jnp.float32)
    dq, (dk, dv) = jax.lax.scan(step, dq0, (steps, kc, vc, kc_seg))
    return dq.astype(qg.dtype), dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# ---- query x key tiles with skipping --------------------------------------------------------
# `blocked_attention` cuts BOTH queries and keys into blocks of `block` and, for each query
# block, visits only the key blocks that can hold an allowed key: the span of the segments of
# its queries (from each segment's first and last key position, O(T) under jit), cut at the
# block's last query when causal. The largest score tensor is one float32[B, K, g, C, C] tile,
# whatever T; compute is O(T x segment span) (a frame's patches, a packed row's tokens) instead
# of O(T^2), and the padding of a bucket costs nothing. The ranges are data, so the visits are
# `while` loops (a forward and a custom VJP whose backward visits the same tiles); the result
# equals the dense masked softmax up to rounding for any segment layout (a segment that is not
# one contiguous run only widens the span).


def blocked_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_segment_ids: jax.Array,
    kv_segment_ids: jax.Array,
    *,
    causal: bool,
    scale: float,
    block: int = 512,
) -> jax.Array:
    """Self-attention within equal non-zero segment ids (causal or not) in [block, block] tiles.

    q: [B, T, N, H]; k, v: [B, T, K, H] with N % K == 0; q/kv_segment_ids: int32[B, T].
    Returns [B, T, N, H] in q's dtype, equal to `attention(..., backend="xla")` up to rounding.
    """
    b, t, n, h = q.shape
    if k.shape != v.shape or k.shape[:2] != (b, t) or k.shape[3] != h:
        raise ValueError(f"blocked attention: q {q.shape}, k {k.shape}, v {v.shape} do not match")
    if q_segment_ids.shape != (b, t) or kv_segment_ids.shape != (b, t):
        raise ValueError(
            f"blocked attention: segment ids {q_segment_ids.shape}, {kv_segment_ids.shape} "
            f"vs q {q.shape}"
        )
    kh = k.shape[2]
    if n % kh:
        raise ValueError(f"blocked attention: {n} query heads vs {kh} kv heads")
    if block <= 0:
        raise ValueError(f"blocked attention: block must be positive, got {block}")
    c = min(block, -(-t // 8) * 8)
    m = -(-t // c)
    tp = m * c
    pad = lambda x: jnp.pad(x, [(0, 0), (0, tp - t)] + [(0, 0)] * (x.ndim - 2))
    q_seg, kv_seg = pad(q_segment_ids), pad(kv_segment_ids)  # padding: segment 0
    lo, hi = _key_block_ranges(q_seg, kv_seg, c, causal)
    # Block-major, heads-major tiles: q [M, B, K, g, C, H], k, v [M, B, K, C, H], ids [M, B, C].
    qb = pad(q).reshape(b, m, c, kh, n // kh, h).transpose(1, 0, 3, 4, 2, 5)
    kb = pad(k).reshape(b, m, c, kh, h).transpose(1, 0, 3, 2, 4)
    vb = pad(v).reshape(b, m, c, kh, h).transpose(1, 0, 3, 2, 4)
    qs = q_seg.reshape(b, m, c).transpose(1, 0, 2)
    ks = kv_seg.reshape(b, m, c).transpose(1, 0, 2)
    out = _tiled(qb, kb, vb, qs, ks, lo, hi, float(scale), bool(causal))  # [M, B, K, g, C, H]
    out = out.transpose(1, 0, 4, 2, 3, 5).reshape(b, tp, n, h)[:, :t]
    return out.astype(q.dtype)


def _key_block_ranges(q_seg, kv_seg, c, causal):
    """int32[M] first and one-past-last key block each query block visits (batch-wide)."""
    b, tp = q_seg.shape
    m = tp // c
    pos = jnp.arange(tp, dtype=jnp.int32)
    ids = jnp.clip(kv_seg, 0, tp)  # ids > T share a bucket: a wider span, never a missed key
    first = jax.vmap(lambda s: jax.ops.segment_min(pos, s, num_segments=tp + 1))(ids)
    last = jax.vmap(lambda s: jax.ops.segment_max(pos, s, num_segments=tp + 1))(ids)
    qi = jnp.clip(q_seg, 0, tp)
    real = q_seg != 0
    lo = jnp.where(real, jnp.take_along_axis(first, qi, axis=1), tp)  # [B, T]
    hi = jnp.where(real, jnp.take_along_axis(last, qi, axis=1), -1)
    if causal:
        hi = jnp.minimum(hi, pos[None])
    lo = lo.reshape(b, m, c).min(axis=(0, 2))  # [M]
    hi = hi.reshape(b, m, c).max(axis=(0, 2))
    empty = hi < lo  # no query of the block sees any key
    lo_blk = jnp.where(empty, 0, jnp.clip(lo, 0, tp - 1) // c)
    hi_blk = jnp.where(empty, 0, jnp.clip(hi, 0, tp - 1) // c + 1)
    return lo_blk.astype(jnp.int32), hi_blk.astype(jnp.int32)


def _tile_mask(qs, ks, i, j, c, causal):
    """bool[B, 1, 1, C, C] of query block i against key block j."""
    allowed = (qs[:, :, None] == ks[:, None, :]) & (qs != 0)[:, :, None]
    if causal:
        q_pos = i * c + jnp.arange(c, dtype=jnp.int32)
        k_pos = j * c + jnp.arange(c, dtype=jnp.int32)
        allowed &= k_pos[None, None, :] <= q_pos[None, :, None]
    return allowed[:, None, None]


def _tile_scores(qi, kj, scale):
    s = jnp.einsum("bkgch,bkdh->bkgcd", qi, kj, preferred_element_type=jnp.float32)
    return s * jnp.float32(scale)


def _tiled_forward(qb, kb, vb, qs, ks, lo, hi, scale, causal):
    """(out [M, B, K, g, C, H] float32, lse float32[M, B, K, g, C])."""
    _, b, kh, g, c, h = qb.shape

    def query_block(i):
        qi, qsi = qb[i], qs[i]

        def visit(j, carry):
            mx, den, acc = carry
            kj = jax.lax.dynamic_index_in_dim(kb, j, 0, keepdims=False)
            vj = jax.lax.dynamic_index_in_dim(vb, j, 0, keepdims=False)
            ksj = jax.lax.dynamic_index_in_dim(ks, j, 0, keepdims=False)
            mask = _tile_mask(qsi, ksj, i, j, c, causal)
            s = jnp.where(mask, _tile_scores(qi, kj, scale), _NEG)
            mx_new = jnp.maximum(mx, s.max(axis=-1))
            p = jnp.where(mask, jnp.exp(s - mx_new[..., None]), 0.0)
            alpha = jnp.exp(mx - mx_new)
            pv = jnp.einsum(
                "bkgcd,bkdh->bkgch", p.astype(vj.dtype), vj, preferred_element_type=jnp.float32
            )
            return mx_new, den * alpha + p.sum(axis=-1), acc * alpha[..., None] + pv

        init = (
            jnp.full((b, kh, g, c), _NEG, jnp.float32),
            jnp.zeros((b, kh, g, c), jnp.float32),
            jnp.zeros((b, kh, g, c, h), jnp.float32),
        )
        mx, den, acc = jax.lax.fori_loop(lo[i], hi[i], visit, init)
        has_key = den > 0  # empty rows (padding queries): zeros, and a harmless lse of 0
        out = jnp.where(has_key[..., None], acc / jnp.where(has_key, den, 1.0)[..., None], 0.0)
        lse = jnp.where(has_key, mx + jnp.log(jnp.where(has_key, den, 1.0)), 0.0)
        return out, lse

    return jax.lax.map(query_block, jnp.arange(qb.shape[0], dtype=jnp.int32))


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _tiled(qb, kb, vb, qs, ks, lo, hi, scale, causal):
    return _tiled_forward(qb, kb, vb, qs, ks, lo, hi, scale, causal)[0].astype(qb.dtype)


def _tiled_fwd(qb, kb, vb, qs, ks, lo, hi, scale, causal):
    out, lse = _tiled_forward(qb, kb, vb, qs, ks, lo, hi, scale, causal)
    out = out.astype(qb.dtype)
    return out, (qb, kb, vb, qs, ks, lo, hi, out, lse)


def _tiled_bwd(scale, causal, res, d_out):
    qb, kb, vb, qs, ks, lo, hi, out, lse = res
    c = qb.shape[4]
    d_out = d_out.astype(jnp.float32)
    # D = sum_h dO * O = sum_s P dP per query: the softmax-Jacobian correction.
    delta = jnp.sum(d_out * out.astype(jnp.float32), axis=-1)  # [M, B, K, g, C]

    def query_block(carry, i):
        dk, dv = carry  # float32[M, B, K, C, H]
        qi = qb[i].astype(jnp.float32)
        doi, li, di, qsi = d_out[i], lse[i], delta[i], qs[i]

        def visit(j, inner):
            dq, dk, dv = inner
            kj = jax.lax.dynamic_index_in_dim(kb, j, 0, keepdims=False).astype(jnp.float32)
            vj = jax.lax.dynamic_index_in_dim(vb, j, 0, keepdims=False).astype(jnp.float32)
            ksj = jax.lax.dynamic_index_in_dim(ks, j, 0, keepdims=False)
            mask = _tile_mask(qsi, ksj, i, j, c, causal)
            p = jnp.where(mask, jnp.exp(_tile_scores(qi, kj, scale) - li[..., None]), 0.0)
            dvj = jnp.einsum("bkgcd,bkgch->bkdh", p, doi)
            dp = jnp.einsum("bkgch,bkdh->bkgcd", doi, vj)
            ds = p * (dp - di[..., None]) * jnp.float32(scale)
            dq = dq + jnp.einsum("bkgcd,bkdh->bkgch", ds, kj)
            dkj = jnp.einsum("bkgcd,bkgch->bkdh", ds, qi)
            add = lambda a, x: jax.lax.dynamic_update_index_in_dim(
                a, jax.lax.dynamic_index_in_dim(a, j, 0, keepdims=False) + x, j, 0
            )
            return dq, add(dk, dkj), add(dv, dvj)

        dq, dk, dv = jax.lax.fori_loop(lo[i], hi[i], visit, (jnp.zeros_like(qi), dk, dv))
        return (dk, dv), dq

    zeros = jnp.zeros(kb.shape, jnp.float32)
    steps = jnp.arange(qb.shape[0], dtype=jnp.int32)
    (dk, dv), dq = jax.lax.scan(query_block, (zeros, zeros), steps)
    return (
        dq.astype(qb.dtype), dk.astype(kb.dtype), dv.astype(vb.dtype), None, None, None, None,
    )  # fmt: skip


_tiled.defvjp(_tiled_fwd, _tiled_bwd)
