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
